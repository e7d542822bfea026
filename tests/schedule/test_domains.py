"""Defined domains and compile-time read checks, against the reference interpreter.

At concrete bounds, a point is defined exactly when the interpreter can evaluate it.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax._ir.program import Edge, Program
from tempo_jax._reference.interpreter import (
    _Interpreter,
    resolve_bounds,
    resolve_inputs,
)
from tempo_jax._schedule import domains as domains_module
from tempo_jax._schedule.domains import check_reads, defined_domains
from tempo_jax._schedule.isl_convert import fix_params, isl_context, set_points
from tests.corpus import CASES


def _evaluable(program: Program, bounds: dict, inputs: dict) -> dict[int, set[tuple]]:
    env = resolve_bounds(program, bounds)
    interp = _Interpreter(program, env, resolve_inputs(program, env, inputs))
    found: dict[int, set[tuple]] = {}
    for op in program.ops:
        found[op.id] = set()
        for point in itertools.product(*(range(env[d.bound]) for d in op.domain)):
            probe = Edge(op.id, 0, tuple(op.domain))
            try:
                interp._demand((op.id, point), probe, dict(zip(op.domain, point, strict=True)))
            except tj.TempoError:
                continue
            found[op.id].add(point)
    return found


def _isl_points(program: Program, sets: dict, bounds: dict) -> dict[int, set[tuple]]:
    named = {getattr(k, "name", k): v for k, v in bounds.items()}
    out = {}
    for op in program.ops:
        pts = set_points(fix_params(sets[op.id], named))
        out[op.id] = {tuple(p[d.name] for d in op.domain) for p in pts}
    return out


def _undefined_second() -> tuple[tj.Program, dict, dict]:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[0] = 1.0
        x[t + 2] = x[t] * 2.0  # x[1] has no branch, so neither have x[3], x[5], ...
        p.output("x", x[0 : t.bound])
    return p, {t.bound: 6}, {}


def _read_past_end() -> tuple[tj.Program, dict, dict]:
    with tj.Program() as p:
        (t,) = p.dims("t")
        r = tj.input("r", (), jnp.float32, domain=(t,))
        nxt = r[t + 1] * 2.0
        p.output("y", nxt)
    return p, {t.bound: 4}, {"r": np.zeros(4, np.float32)}


PROGRAMS = [(c.name, c.build) for c in CASES] + [
    ("undefined_second", _undefined_second),
    ("read_past_end", _read_past_end),
]


@pytest.mark.parametrize(("name", "build"), PROGRAMS, ids=[n for n, _ in PROGRAMS])
def test_defined_points_are_the_evaluable_points(name: str, build) -> None:
    program, bounds, inputs = build()
    ir = program.to_ir()
    domains = defined_domains(ir, isl_context())
    assert _isl_points(ir, domains.sets, bounds) == _evaluable(ir, bounds, inputs)


def test_shifted_branch_body_is_undefined_at_the_last_step() -> None:
    program, _, _ = CASES[0].build()  # running sum: s[t+1] = s[t] + x[t+1]
    ir = program.to_ir()
    domains = defined_domains(ir, isl_context())
    assert domains.exact
    body = next(op for op in ir.ops if op.name == "add")
    for steps in (1, 2, 7):
        points = _isl_points(ir, domains.sets, {"T": steps})[body.id]
        assert points == {(k,) for k in range(steps - 1)}  # not at t = T-1: it reads x[T]


def test_a_chain_past_the_rounds_is_closed_by_isl() -> None:
    """Every odd ``t`` undefined, one more a round: past the cap of rounds, isl's transitive
    closure of the reads finds them all, for every ``T`` (no bounds given)."""
    program, bounds, inputs = _undefined_second()
    ir = program.to_ir()
    domains = defined_domains(ir, isl_context(), max_rounds=3)
    assert domains.exact
    for steps in (1, 6, 9):
        assert _isl_points(ir, domains.sets, {"T": steps}) == _evaluable(
            ir, {**bounds, "T": steps}, inputs
        )


def _no_first(steps: int) -> tj.Program:
    """``y[t] = y[t - 1] / 2 + x[t]`` for ``t >= 1`` and no ``y[0]``: ``y[T - 1]`` reads, through
    ``T - 1`` steps, the point no branch defines."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        y = tj.placeholder((), jnp.float32, domain=(t,), name="y")
        y[t >= 1] = y[t - 1] * 0.5 + x[t]
        p.output("last", y[t.bound - 1])
    return p


@pytest.mark.parametrize("steps", [5, 3000])
def test_a_chain_longer_than_the_rounds_is_an_error_at_compile_time(steps: int) -> None:
    """The interpreter's error, not a run on zeros (the cap of rounds stopped the iteration
    short of ``y[0]``: ``T = 5`` compiled and returned 1.875), and named at ``t = 0`` by a
    walk that does not recurse once per point."""
    program = _no_first(steps)
    inputs = {"x": np.ones(steps, np.float32)}
    if steps == 5:
        with pytest.raises(tj.UndefinedPointError):
            tj.reference.run(program, bounds={"T": steps}, inputs=inputs)
    message = r"`y` is read as `y\[t - 1\]` at .*, but no branch defines it at t=0 \(with T="
    with pytest.raises(tj.UndefinedPointError, match=message + str(steps)):
        program.compile({"T": steps})


def test_without_an_exact_closure_the_iteration_goes_on_to_the_fixpoint(monkeypatch) -> None:
    """With the compiled bounds' values the sets are finite: past the cap of rounds, and no
    closure, the iteration still reaches the fixpoint."""
    monkeypatch.setattr(domains_module, "_by_closure", lambda *_: None)
    ir = _no_first(8).to_ir()
    domains = defined_domains(ir, isl_context(), max_rounds=2, ranges={"T": (8, 8)})
    assert domains.exact
    inputs = {"x": np.ones(8, np.float32)}
    assert _isl_points(ir, domains.sets, {"T": 8}) == _evaluable(ir, {"T": 8}, inputs)
    assert not defined_domains(ir, isl_context(), max_rounds=2).exact  # every T: no fixpoint


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_well_formed_programs_pass_the_compile_time_check(case) -> None:
    ir = case.build()[0].to_ir()
    ctx = isl_context()
    check_reads(ir, ctx, defined_domains(ir, ctx))


def test_compile_time_undefined_point() -> None:
    ir = _undefined_second()[0].to_ir()
    ctx = isl_context()
    with pytest.raises(
        tj.UndefinedPointError,
        match=r"`x` is read as `x\[0:T\]` at test_domains\.py:\d+: `p\.output\(\"x\", x\[0 : "
        r"t\.bound\]\)`, but no branch defines it at t=1 \(for example with T=\d+\) \(its "
        r"branches cover t == 0 \| t >= 2\)",
    ):
        check_reads(ir, ctx, defined_domains(ir, ctx))


def test_compile_time_read_past_the_end() -> None:
    ir = _read_past_end()[0].to_ir()
    ctx = isl_context()
    with pytest.raises(
        tj.OutOfBoundsError,
        match=r"`r\[t \+ 1\]` at test_domains\.py:\d+: `nxt = r\[t \+ 1\] \* 2\.0`, read by "
        r"`multiply`, reads outside the domain of `r` at t=\d+ \(for example with T=\d+\)",
    ):
        check_reads(ir, ctx, defined_domains(ir, ctx))


def _two_dims() -> tj.Program:
    with tj.Program() as p:
        b, t = p.dims("b t")
        y = tj.placeholder((), jnp.float32, domain=(b, t), name="y")
        y[b, t >= 1] = y[b, t - 1] * 0.5 + 1.0
        p.output("last", y[b, t.bound - 1])
    return p


def _backward() -> tj.Program:
    with tj.Program() as p:
        (t,) = p.dims("t")
        y = tj.placeholder((), jnp.float32, domain=(t,), name="y")
        y[t < t.bound - 1] = y[t + 1] * 0.5 + 1.0
        p.output("first", y[0])
    return p


def _nested() -> tj.Program:
    """``y[i, 0]`` steps from ``y[i - 1, 0]``, ``y[i, t]`` from ``y[i, t - 1]``; ``z[0]`` has no
    branch, and ``z[i]`` adds each iteration's last ``y``."""
    with tj.Program() as p:
        i, t = p.dims("i t")
        y = tj.placeholder((), jnp.float32, domain=(i, t), name="y")
        y[0, 0] = 1.0
        y[i, t >= 1] = y[i, t - 1] + 1.0
        y[i >= 1, 0] = y[i - 1, 0] * 2.0
        z = tj.placeholder((), jnp.float32, domain=(i,), name="z")
        z[i >= 1] = z[i - 1] + y[i, t.bound - 1]
        p.output("z", z[i.bound - 1])
    return p


@pytest.mark.parametrize(
    ("build", "bounds", "first"),
    [
        (_two_dims, {"B": 2, "T": 30}, "b=0, t=0"),
        (_backward, {"T": 30}, "t=29"),
        (_backward, {"T": tj.dynamic(max=40, min=20)}, "t=19"),
        (_nested, {"I": 30, "T": 3}, "i=0"),
    ],
    ids=["two_dims", "backward", "backward_dynamic", "nested"],
)
def test_long_chains_to_a_missing_branch_fail_to_compile(build, bounds, first: str) -> None:
    """Each compiled and ran on zeros before the chain was closed past the cap of rounds; the
    interpreter raises for each (at the static bounds)."""
    static = {k: v for k, v in bounds.items() if isinstance(v, int)}
    if len(static) == len(bounds):
        with pytest.raises(tj.UndefinedPointError):
            tj.reference.run(build(), bounds=static, inputs={})
    with pytest.raises(tj.UndefinedPointError, match=f"no branch defines it at {first}"):
        build().compile(bounds)
