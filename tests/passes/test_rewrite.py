"""The rule-table rewrite pass: identities, movement folds and recurrence lifts.

Every rewritten program is checked against the reference interpreter on the original (the
oracle), compiled too; each rule has a program it fires on (and fails without it) and
near misses it must leave alone.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tempo_jax as tj
from tempo_jax._ir.expr import Slice
from tempo_jax._ir.program import Program, TensorSpec
from tempo_jax._ir.verify import verify
from tempo_jax._lower.compiled import compile_program
from tempo_jax._passes.copies import remove_copies
from tempo_jax._passes.picks import pick_payload
from tempo_jax._passes.pipeline import dead_ops
from tempo_jax._passes.rewrite import ALGEBRAIC, LIFTS, MOVEMENT, RULES, rewrite
from tempo_jax._schedule.tree import Exec, Loop, Node
from tests.corpus import (
    CASES,
    GAE_LAMBDA,
    GAMMA,
    Case,
    fibonacci,
    gae,
    returns_backward,
    running_sum,
)

WITH_REWRITE = tj.Pipeline(passes=(*tj.Pipeline().passes, rewrite))
# Lifts first and no vectorisation: the structure below does not depend on later passes.
LIFT_ONLY = tj.Pipeline(passes=(dead_ops, remove_copies, rewrite))
LIFTED = {"running_sum", "returns_backward", "random_walk", "gae"}


def _close(got: Any, want: Any, tol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=tol, atol=tol)


def _on_cycles(program: Program) -> set[str]:
    """Names of the ops that read themselves, directly or through other ops."""
    found = set()
    for op in program.ops:
        stack, seen = [edge.src for edge in op.inputs], set()
        while stack:
            op_id = stack.pop()
            if op_id == op.id:
                found.add(op.name)
                break
            if op_id not in seen:
                seen.add(op_id)
                stack.extend(edge.src for edge in program.op(op_id).inputs)
    return found


def _same_values(p: tj.Program, bounds: dict, inputs: dict) -> Program:
    """``rewrite(p)``, checked: verifier, a fixed point, values of the reference and compiled."""
    ir = p.to_ir()
    out = verify(rewrite(ir))
    assert rewrite(out) is out
    want = tj.reference.run(ir, bounds, inputs)
    got = tj.reference.run(out, bounds, inputs)
    compiled = p.compile(bounds, pipeline=LIFT_ONLY)(**inputs)
    for name in want:
        _close(got[name], want[name])
        _close(compiled[name], want[name])
    return out


def _reverse_discounted(r: np.ndarray, gamma: float) -> np.ndarray:
    g, acc = np.zeros_like(r), np.zeros_like(r[..., 0])
    for k in reversed(range(r.shape[-1])):
        acc = r[..., k] + gamma * acc
        g[..., k] = acc
    return g


# -- the corpus ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_corpus_values_are_unchanged(case: Case) -> None:
    program, bounds, inputs = case.build()
    ir = program.to_ir()
    before = str(ir)
    out = verify(rewrite(ir))
    assert str(ir) == before  # the input program is unchanged
    assert rewrite(out) is out  # a fixed point: idempotent
    want = tj.reference.run(ir, bounds, inputs)
    got = tj.reference.run(out, bounds, inputs)
    compiled = program.compile(bounds, pipeline=WITH_REWRITE)(**inputs)
    for name in want:
        _close(got[name], want[name])
        _close(compiled[name], want[name])
    if case.name in LIFTED:  # the lifted recurrences are gone, the others are kept
        assert _on_cycles(ir) and not _on_cycles(out)
    else:
        assert _on_cycles(out) == _on_cycles(ir)


def test_nothing_to_rewrite_returns_the_same_program() -> None:
    ir = fibonacci()[0].to_ir()  # a two-step recurrence, no identity
    assert rewrite(ir) is ir


def test_the_rule_table_is_composed_of_named_rules() -> None:
    assert RULES == ALGEBRAIC + MOVEMENT + LIFTS
    names = [rule.name for rule in RULES]
    assert len(set(names)) == len(names)


# -- algebraic identities and movement -----------------------------------------------------------

IDENTITIES: dict[str, Callable[[Any, Any], Any]] = {
    "x*1": lambda x, t: x * 1.0,
    "1*x": lambda x, t: 1.0 * x,
    "x*ones": lambda x, t: x * jnp.ones((2, 3), jnp.float32),
    "x+0": lambda x, t: x + 0.0,
    "0+x": lambda x, t: 0.0 + x,
    "x-0": lambda x, t: x - 0.0,
    "x/1": lambda x, t: x / 1.0,
    "(x*1)*1": lambda x, t: (x * 1.0) * 1.0,
    "neg(neg(x)) over two ops": lambda x, t: operator.neg(operator.neg(x)),
    "neg(neg(x)) in one payload": lambda x, t: tj.lift(lambda a: jnp.negative(-a))(x),
    "x.astype(x.dtype)": lambda x, t: tj.lift(lambda a: a.astype(jnp.float32))(x),
    "x.T.T": lambda x, t: x.T.T,
    "reshape back": lambda x, t: x.reshape(6).reshape(2, 3),
}

NOT_IDENTITIES: dict[str, Callable[[Any, Any], Any]] = {
    "x*2": lambda x, t: x * 2.0,
    "x+1": lambda x, t: x + 1.0,
    "0-x": lambda x, t: 0.0 - x,
    "1/x": lambda x, t: 1.0 / x,
    "x*x": lambda x, t: x * x,
    "-x": lambda x, t: -x,
    "x.T": lambda x, t: x.T,
    "x*1 read at another point": lambda x, t: x[tj.min(t + 1, t.bound - 1)] * 1.0,
    "x*1 broadcast": lambda x, t: x[..., None] * jnp.ones((2, 3, 2), jnp.float32),
}


def _elementwise(fn: Callable[[Any, Any], Any]) -> tuple[tj.Program, dict, dict]:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (2, 3), jnp.float32, domain=(t,))
        y = fn(x, t)
        p.output("y", y)
        p.output("e", tj.exp(y))
    xs = np.random.default_rng(0).normal(size=(4, 2, 3)).astype(np.float32)
    return p, {t.bound: 4}, {"x": xs}


@pytest.mark.parametrize("name", IDENTITIES)
def test_an_op_returning_its_input_is_removed(name: str) -> None:
    p, bounds, inputs = _elementwise(IDENTITIES[name])
    out = _same_values(p, bounds, inputs)
    assert sorted(op.name for op in out.ops) == ["exp", "x"]
    assert out.outputs[0].edge.src == out.inputs["x"].id  # `y` reads the input directly


@pytest.mark.parametrize("name", NOT_IDENTITIES)
def test_an_op_that_computes_is_kept(name: str) -> None:
    p, bounds, inputs = _elementwise(NOT_IDENTITIES[name])
    ir = p.to_ir()
    assert rewrite(ir) is ir
    _same_values(p, bounds, inputs)


def test_a_cast_to_the_same_dtype_is_removed() -> None:
    """A weakly typed value cast to its own dtype: a ``convert_element_type`` that changes
    nothing (the input's spec is made weak by hand; the frontend makes constants weak)."""
    p, bounds, inputs = _elementwise(lambda x, t: tj.lift(lambda a: a.astype(jnp.float32))(x))
    ir = p.to_ir()
    x_op = ir.inputs["x"]
    weak = x_op.replace(outputs=(TensorSpec((2, 3), jnp.float32, weak_type=True),))
    ir = ir.replace(ops=tuple(weak if op.id == x_op.id else op for op in ir.ops))
    out = rewrite(ir)
    assert sorted(op.name for op in out.ops) == ["exp", "x"]
    want = tj.reference.run(ir, bounds, inputs)
    _close(tj.reference.run(out, bounds, inputs)["e"], want["e"])


def test_two_transposes_fold_into_one() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (2, 3, 4), jnp.float32, domain=(t,))
        p.output("y", tj.transpose(tj.transpose(x, (1, 0, 2)), (0, 2, 1)))
    xs = np.random.default_rng(1).normal(size=(3, 2, 3, 4)).astype(np.float32)
    out = _same_values(p, {t.bound: 3}, {"x": xs})
    assert [op.name for op in out.ops if op.kind == "apply"] == ["transpose"]
    _close(tj.reference.run(out, {t.bound: 3}, {"x": xs})["y"], xs.transpose(0, 2, 3, 1))


def test_two_reshapes_fold_into_one() -> None:
    p, bounds, inputs = _elementwise(lambda x, t: x.reshape(6).reshape(3, 2))
    out = _same_values(p, bounds, inputs)
    assert sorted(op.name for op in out.ops) == ["exp", "reshape", "x"]
    _close(tj.reference.run(out, bounds, inputs)["y"], inputs["x"].reshape(4, 3, 2))


# -- lifts: running sums -------------------------------------------------------------------------

Step = Callable[[Any, Any, Any], Any]  # (s[t], x[t+1], x[t]) -> s[t+1], on RTs and on arrays


def _running_sum(step: Step, batched: bool = False, last_only: bool = False) -> tuple:
    """``s[0] = x[0]; s[t+1] = step(s[t], x[t+1], x[t])`` over ``(t,)`` or ``(b, t)``, values
    of shape ``(3,)``; with the NumPy loop's result."""
    with tj.Program() as p:
        dims = p.dims("b t") if batched else p.dims("t")
        lead, t = dims[:-1], dims[-1]
        x = tj.input("x", (3,), jnp.float32, domain=dims)
        s = tj.placeholder((3,), jnp.float32, domain=dims)
        s[(*lead, 0)] = x[(*lead, 0)]
        s[(*lead, t + 1)] = step(s[(*lead, t)], x[(*lead, t + 1)], x[(*lead, t)])
        if last_only:
            p.output("last", s[(*lead, t.bound - 1)])
            p.output("twice", s[(*lead, t.bound - 1)] * 2.0)
        else:
            p.output("s", s)
    shape = (2, 7, 3) if batched else (7, 3)
    xs = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    want = np.zeros_like(xs)
    want[..., 0, :] = xs[..., 0, :]
    for k in range(1, shape[-2]):
        want[..., k, :] = step(want[..., k - 1, :], xs[..., k, :], xs[..., k - 1, :])
    bounds = {d.bound: n for d, n in zip(dims, shape, strict=False)}
    return p, bounds, {"x": xs}, want


def test_the_corpus_running_sum_becomes_a_cumulative_sum() -> None:
    p, bounds, inputs = running_sum()
    out = _same_values(p, bounds, inputs)
    assert not _on_cycles(out) and [op.kind for op in out.ops].count("merge") == 0
    assert "s.cumsum" in [op.name for op in out.ops]
    _close(tj.reference.run(out, bounds, inputs)["s"], np.cumsum(inputs["x"]))


SUMS: dict[str, Step] = {
    "s+x": lambda s, nxt, here: s + nxt,
    "x+s": lambda s, nxt, here: nxt + s,
    "s+x[t]": lambda s, nxt, here: s + here,  # x one step behind: the range is x[0:T-1]
}


@pytest.mark.parametrize("name", SUMS)
def test_a_batched_running_sum_is_lifted(name: str) -> None:
    p, bounds, inputs, want = _running_sum(SUMS[name], batched=True)
    out = _same_values(p, bounds, inputs)
    assert not _on_cycles(out)
    lifted = next(op for op in out.ops if op.name == "s.cumsum")
    assert [d.name for d in lifted.domain] == ["b"]  # t is an axis of its value
    assert lifted.source == next(op for op in out.ops if op.name == "s").source  # user's line
    _close(tj.reference.run(out, bounds, inputs)["s"], want)


@pytest.mark.parametrize("batched", [False, True], ids=["t", "b_t"])
def test_a_running_sum_read_only_at_its_end_becomes_a_sum(batched: bool) -> None:
    p, bounds, inputs, want = _running_sum(SUMS["s+x"], batched=batched, last_only=True)
    out = _same_values(p, bounds, inputs)
    assert not _on_cycles(out) and "s" not in [op.name for op in out.ops]
    total = next(op for op in out.ops if op.name == "s.sum")
    assert "t" not in [d.name for d in total.domain]
    assert {out.outputs[0].edge.src} == {total.id}  # read directly, no pick
    got = tj.reference.run(out, bounds, inputs)
    _close(got["last"], inputs["x"].sum(axis=-2))
    _close(got["twice"], 2 * want[..., -1, :])


def test_a_running_sum_also_read_elsewhere_keeps_every_point() -> None:
    """Read at two points, and its step op read too: a cumulative sum read through a pick, the
    step op kept (it now reads the pick)."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        s = tj.placeholder((), jnp.float32, domain=(t,))
        s[0] = x[0]
        step = s[t] + x[t + 1]
        s[t + 1] = step
        p.output("last", s[t.bound - 1])
        p.output("first", s[0] * 3.0)
        p.output("steps", step[0 : t.bound - 1])
    xs = np.arange(1, 6, dtype=np.float32)
    out = _same_values(p, {t.bound: 5}, {"x": xs})
    names = [op.name for op in out.ops]
    assert "s.cumsum" in names and "add" in names and not _on_cycles(out)
    _close(tj.reference.run(out, {t.bound: 5}, {"x": xs})["steps"], np.cumsum(xs)[1:])


NEAR_SUMS: dict[str, Step] = {
    "s*x": lambda s, nxt, here: s * nxt,
    "s+x+s": lambda s, nxt, here: s + nxt + s,
    "s-x": lambda s, nxt, here: s - nxt,
    "0.5*s+x": lambda s, nxt, here: 0.5 * s + nxt,
}


@pytest.mark.parametrize("name", NEAR_SUMS)
def test_a_recurrence_that_is_not_a_running_sum_is_kept(name: str) -> None:
    p, bounds, inputs, want = _running_sum(NEAR_SUMS[name])
    ir = p.to_ir()
    assert rewrite(ir) is ir
    _same_values(p, bounds, inputs)
    _close(tj.reference.run(ir, bounds, inputs)["s"], want)


# -- lifts: discounted suffix sums ---------------------------------------------------------------


def _returns(step: Callable[[Any, Any, Any], Any], gamma_input: bool = False) -> tuple:
    """``g[T-1] = r[T-1]; g[t] = step(r, g[t+1], gamma)`` over ``(t,)``."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        T = t.bound
        r = tj.input("r", (), jnp.float32, domain=(t,))
        gamma = tj.input("gamma", (), jnp.float32) if gamma_input else GAMMA
        g = tj.placeholder((), jnp.float32, domain=(t,))
        g[T - 1] = r[T - 1]
        g[True] = step(r, g[t + 1], gamma)
        p.output("g", g[0:T])
    rs = np.random.default_rng(3).normal(size=8).astype(np.float32)
    inputs = {"r": rs} | ({"gamma": np.float32(GAMMA)} if gamma_input else {})
    return p, {T: 8}, inputs


def test_the_corpus_backward_returns_become_a_reverse_scan() -> None:
    p, bounds, inputs = returns_backward()
    out = _same_values(p, bounds, inputs)
    assert [op.kind for op in out.ops].count("merge") == 0 and not _on_cycles(out)
    assert "g.discounted" in [op.name for op in out.ops]
    got = tj.reference.run(out, bounds, inputs)["g"]
    _close(got, _reverse_discounted(inputs["r"], GAMMA))


DISCOUNTED: dict[str, Callable[[Any, Any, Any], Any]] = {
    "r+c*g": lambda r, g, c: r + c * g,
    "c*g+r": lambda r, g, c: c * g + r,
    "r+g*c": lambda r, g, c: r + g * c,
}


@pytest.mark.parametrize("name", DISCOUNTED)
def test_discounted_sums_in_any_operand_order_are_lifted(name: str) -> None:
    p, bounds, inputs = _returns(DISCOUNTED[name])
    out = _same_values(p, bounds, inputs)
    assert [op.kind for op in out.ops].count("merge") == 0 and not _on_cycles(out)
    got = tj.reference.run(out, bounds, inputs)["g"]
    _close(got, _reverse_discounted(inputs["r"], GAMMA))


def test_gae_advantages_are_lifted_per_environment() -> None:
    p, bounds, inputs = gae()
    out = _same_values(p, bounds, inputs)
    lifted = next(op for op in out.ops if op.name == "adv.discounted")
    assert [d.name for d in lifted.domain] == ["b"] and not _on_cycles(out)
    assert any(op.name == "delta" and op.kind == "merge" for op in out.ops)  # not a recurrence
    r, v = inputs["reward"], inputs["value"]
    delta = r + GAMMA * np.concatenate([v[:, 1:], np.zeros_like(v[:, :1])], axis=1) - v
    got = tj.reference.run(out, bounds, inputs)["adv"]
    _close(got, _reverse_discounted(delta, GAMMA * GAE_LAMBDA), 1e-4)


NEAR_DISCOUNTED: dict[str, tuple[Callable[[Any, Any, Any], Any], bool]] = {
    "gamma from a tensor": (lambda r, g, c: r + c * g, True),
    "r-c*g": (lambda r, g, c: r - c * g, False),
    "r*c*g": (lambda r, g, c: r * (c * g), False),
    "r+c*g*g": (lambda r, g, c: r + c * g * g, False),
}


@pytest.mark.parametrize("name", NEAR_DISCOUNTED)
def test_a_recurrence_that_is_not_a_discounted_sum_is_kept(name: str) -> None:
    step, gamma_input = NEAR_DISCOUNTED[name]
    p, bounds, inputs = _returns(step, gamma_input)
    ir = p.to_ir()
    assert _on_cycles(rewrite(ir))
    _same_values(p, bounds, inputs)
    if name == "gamma from a tensor":
        got = tj.reference.run(ir, bounds, inputs)["g"]
        _close(got, _reverse_discounted(inputs["r"], GAMMA))


# -- lifts under other bounds ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2])
def test_lifts_are_exact_on_the_shortest_ranges(n: int) -> None:
    """``T = 1`` reads the empty range ``x[1:1]``."""
    for build in (running_sum, returns_backward):
        p, bounds, inputs = build()
        (T,) = bounds
        name = next(iter(inputs))
        _same_values(p, {T: n}, {name: inputs[name][:n]})


def test_lifts_compile_under_a_dynamic_bound() -> None:
    """Values padded to the bound's max: the lifted ops mask (or never read) the padding."""
    builds = [running_sum, returns_backward, lambda: _running_sum(SUMS["s+x"], last_only=True)]
    for build in builds:
        p, bounds, inputs = build()[:3]
        (T,) = bounds
        name, n = next(iter(inputs)), 5
        short = {name: inputs[name][:n]}
        want = tj.reference.run(p, {T: n}, short)
        compiled = p.compile({T: tj.dynamic(max=9)}, pipeline=LIFT_ONLY)
        assert not _on_cycles(compiled.program)
        got = compiled(**short, **{T.name: n})
        for key in want:
            value = np.asarray(got[key])
            _close(value[:n] if value.shape != want[key].shape else value, want[key])


# -- structure after lowering ----------------------------------------------------------------------


def _execs_in_loops(node: Node, inside: bool = False) -> list[tuple[int, bool]]:
    """(op id, whether inside a loop) for every op execution of a schedule tree."""
    if isinstance(node, Exec):
        return [(node.op, inside)]
    children = getattr(node, "children", None) or [getattr(node, "body", None)]
    found = []
    for child in children:
        if child is not None:
            found += _execs_in_loops(child, inside or isinstance(node, Loop))
    return found


def test_the_lifted_running_sum_runs_no_recurrence_loop() -> None:
    p, bounds, inputs = running_sum()
    before = p.compile(bounds, pipeline=tj.Pipeline(passes=(dead_ops, remove_copies)))
    after = p.compile(bounds, pipeline=LIFT_ONLY)
    names = {op.id: op.name for op in after.program.ops}
    execs = _execs_in_loops(after.tree)
    # The cumulative sum runs once, outside any loop; what is left in a loop over t is the
    # pick of row t (op `s`, no longer a merge), which reads nothing computed in the loop: its
    # points are independent, so the lowering computes them at once and the loop goes.
    assert {names[op] for op, looped in execs if not looped} == {"s.cumsum"}
    assert {names[op] for op, looped in execs if looped} == {"s"}
    assert after.program.op(next(k for k, n in names.items() if n == "s")).kind == "apply"
    jaxpr = str(after.jaxpr(**inputs))
    assert "cumsum" in jaxpr
    assert jaxpr.count("while[") + jaxpr.count("scan[") == 0  # no loop, not even the pick's
    looped_before = {op for op, looped in _execs_in_loops(before.tree) if looped}
    assert {before.program.op(op).kind for op in looped_before} == {"merge", "apply"}
    _close(after(**inputs)["s"], np.cumsum(inputs["x"]))


# -- picks of a padded axis ----------------------------------------------------------------------


def test_a_plain_pick_of_a_dynamic_axis_compiles() -> None:
    p, bounds, inputs = running_sum()
    (T,) = bounds
    out = rewrite(p.to_ir())
    pick = next(op for op in out.ops if op.name == "s")
    (t,) = pick.domain
    plain = pick.replace(payload=pick_payload(t, 0))
    out = out.replace(ops=tuple(plain if op.id == pick.id else op for op in out.ops))
    compiled = compile_program(out, {T: tj.dynamic(max=16)}, pipeline=tj.Pipeline(passes=()))
    got = compiled(x=inputs["x"][:5], T=5)["s"]
    _close(np.asarray(got)[:5], np.cumsum(inputs["x"][:5]))


def test_gradient_sums_over_batch_and_steps_become_one_sum_per_iteration() -> None:
    """A weight over ``(i,)`` read at every ``(i, b, t)``: autodiff sums its cotangents by suffix
    sums over ``t`` then ``b``. Iteration ``i + 1`` reads the result through the optimiser,
    but not at the same ``i``, so both lift to one sum of the whole range; with vectorisation
    nothing loops over ``b`` or ``t``."""
    rng = np.random.default_rng(5)
    xs = rng.normal(size=(4, 6, 3)).astype(np.float32)
    w0 = np.array([0.5, -0.3, 0.2], np.float32)
    with tj.Program() as p:
        i, b, t = p.dims("i b t")
        x = tj.input("x", (3,), jnp.float32, domain=(b, t))
        w = tj.param(jnp.asarray(w0), domain=(i,))
        loss = tj.tanh(x @ w) ** 2
        (g,) = tj.grad(loss, [w])
        new = tj.optim.step(optax.sgd(0.1), w, g, over=i)
        p.output("w", new[i.bound - 1])
    lifted = rewrite(p.to_ir())
    assert not [op for op in lifted.ops if op.kind == "merge" and op.name.startswith("sum_over")]
    compiled = p.compile({"I": 3, "B": 4, "T": 6})
    assert "for b" not in compiled.schedule and "for t" not in compiled.schedule

    want = jnp.asarray(w0)
    for _ in range(3):
        want = want - 0.1 * jax.grad(lambda v: (jnp.tanh(xs @ v) ** 2).sum())(want)
    _close(compiled(x=xs)["w"], want)


# -- reads of ranges a payload does not use --------------------------------------------------------


def _mean_of_losses() -> tuple[tj.Program, dict, dict]:
    """``w`` learned from the mean over a rollout of per-step losses: the mean's vjp needs
    the losses only for their shape."""
    with tj.Program("mean_grad") as p:
        i, t = p.dims("i t")
        xs = tj.input("xs", (3,), domain=(t,))
        w = tj.placeholder((3,), domain=(i,), name="w")
        w[0] = tj.ones((3,))
        h = tj.placeholder((3,), domain=(i, t), name="h")
        h[i, 0] = xs[0]
        h[True] = tj.tanh(h[i, t - 1] * w) + xs[t]
        loss = (h.detach() * w).sum() ** 2
        total = loss[i, 0 : t.bound].mean()
        w[i + 1] = w - 0.1 * tj.grad(total, w)
        p.output("w", w[i.bound - 1])
    xs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    return p, {i.bound: 3, t.bound: 5}, {"xs": xs}


def test_a_mean_gradient_does_not_read_the_losses() -> None:
    p, bounds, inputs = _mean_of_losses()
    ir = p.to_ir()
    (vjp,) = [op for op in ir.ops if op.name == "vjp[mean]"]
    # recorded: the vjp reads the losses of the whole range, and the output's cotangent
    assert [any(isinstance(x, Slice) for x in e.index) for e in vjp.inputs] == [True, False]
    f = p.compile(bounds, pipeline=LIFT_ONLY)
    (vjp,) = [op for op in f.program.ops if op.name == "vjp[mean]"]
    assert [any(isinstance(x, Slice) for x in e.index) for e in vjp.inputs] == [False]
    assert "power" not in {op.name for op in f.program.ops}  # the losses are not computed
    want = tj.reference.run(ir, bounds, inputs)
    _close(f(**inputs)["w"], want["w"])
    _close(p.compile(bounds)(**inputs)["w"], want["w"])


def test_a_range_the_payload_uses_is_kept() -> None:
    with tj.Program("sum_sq") as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), domain=(t,))
        w = tj.input("w", ())
        y = (x * w) ** 2
        p.output("g", tj.grad(y[0 : t.bound].mean(), w))
    bounds, inputs = {t.bound: 4}, {"x": np.arange(4.0, dtype=np.float32), "w": np.float32(2.0)}
    f = p.compile(bounds, pipeline=LIFT_ONLY)
    (vjp,) = [op for op in f.program.ops if op.name.startswith("vjp[power")]
    assert len(vjp.inputs) == 2  # the square's vjp reads its input
    _close(f(**inputs)["g"], np.mean(2 * (np.arange(4.0) * 2.0) * np.arange(4.0)))
