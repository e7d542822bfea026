"""Compiled programs against the reference interpreter, and the structure of their jaxprs."""

from __future__ import annotations

import gc
import re

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax._passes.rewrite import rewrite
from tempo_jax._passes.vectorize import vectorize
from tests.corpus import CASES, Case
from tests.lower.helpers import equations


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_compiled_matches_the_reference(case: Case) -> None:
    program, bounds, inputs = case.build()
    got = program.compile(bounds=bounds)(**inputs)
    want = tj.reference.run(program, bounds=bounds, inputs=inputs)
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=1e-5)


def _loops(jaxpr: jex.Jaxpr, depth: int = 0) -> list[tuple[int, str]]:
    """(nesting depth, primitive) of every loop in a jaxpr and its sub-jaxprs, pre-order."""
    found = []
    for eqn in jaxpr.eqns:
        is_loop = eqn.primitive.name in ("scan", "while")
        if is_loop:
            found.append((depth, eqn.primitive.name))
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if isinstance(sub, jex.ClosedJaxpr):
                    sub = sub.jaxpr
                if isinstance(sub, jex.Jaxpr):
                    found += _loops(sub, depth + is_loop)
    return found


def _recurrence(steps_name: str = "t") -> tj.Program:
    with tj.Program() as p:
        (t,) = p.dims(steps_name)
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[0] = 1.0
        x[t + 1] = x[t] * 0.5 + 1.0
        p.output("x", x[0 : t.bound])
    return p


def test_a_recurrence_is_one_loop() -> None:
    compiled = _recurrence().compile(bounds={"T": 50})
    loops = _loops(compiled.jaxpr().jaxpr)
    assert len(loops) == 1 and loops[0][0] == 0
    assert "for t in" in compiled.schedule


def test_two_dims_are_two_nested_loops() -> None:
    program, bounds, inputs = CASES[[c.name for c in CASES].index("linear_regression")].build()
    unvectorised = tj.Pipeline(passes=tuple(p for p in tj.Pipeline().passes if p is not vectorize))
    compiled = program.compile(bounds=bounds, pipeline=unvectorised)
    # a t loop inside the i loop; its points are independent, so the lowering computes the
    # inner nest at once (blocks.py): one loop in the jaxpr
    assert "for i in" in compiled.schedule and "    for t in" in compiled.schedule
    assert [depth for depth, _ in _loops(compiled.jaxpr(**inputs).jaxpr)] == [0]
    np.testing.assert_allclose(
        compiled(**inputs)["w"], program.compile(bounds=bounds)(**inputs)["w"], rtol=1e-5
    )
    vectorised = program.compile(bounds=bounds)  # t carries no dependence: an array axis
    assert [depth for depth, _ in _loops(vectorised.jaxpr(**inputs).jaxpr)] == [0]
    assert "for t in" not in vectorised.schedule


def test_a_loop_around_a_loop_is_not_split_at_its_first_iteration() -> None:
    """``w[0] = w0; w[i + 1] = w[i] + h[i, T - 1]``, ``h`` a recurrence over ``t`` started
    from ``w[i]``: the merge of ``w`` changes branch after ``i = 0``, but the loop over ``i``
    holds the loop over ``t``, so it is not split there (a split copies the body: two ``t``
    loops); a loop without one inside still is. Values: the interpreter's."""
    with tj.Program() as p:
        i, t = p.dims("i t")
        x = tj.input("x", (3,), jnp.float32, domain=(i, t))
        w0 = tj.input("w0", (3,), jnp.float32)
        w = tj.placeholder((3,), jnp.float32, domain=(i,), name="w")
        h = tj.placeholder((3,), jnp.float32, domain=(i, t), name="h")
        h[i, 0] = tj.tanh(w[i] + x[i, 0])
        h[True] = tj.tanh(0.5 * h[i, t - 1] + x)
        w[0] = w0
        w[True] = w[i - 1] + 0.1 * h[i - 1, t.bound - 1]
        p.output("w", w)
    rng = np.random.default_rng(4)
    inputs = {"x": rng.normal(size=(5, 6, 3)).astype(np.float32), "w0": np.ones(3, np.float32)}
    compiled = p.compile({"I": 5, "T": 6})
    assert "for i in" in compiled.schedule and "    for t in" in compiled.schedule
    assert [depth for depth, _ in _loops(compiled.jaxpr(**inputs).jaxpr)] == [0, 1]
    want = tj.reference.run(p, {"I": 5, "T": 6}, inputs)["w"]
    np.testing.assert_allclose(compiled(**inputs)["w"], want, rtol=1e-5, atol=1e-6)
    # the same merge in a loop with nothing looping inside: split, the first point apart
    with tj.Program() as q:
        (i,) = q.dims("i")
        x = tj.input("x", (3,), jnp.float32, domain=(i,))
        w = tj.placeholder((3,), jnp.float32, domain=(i,), name="w")
        w[0] = x[0]
        w[True] = tj.tanh(w[i - 1] + x)
        q.output("w", w)
    split = q.compile({"I": 5}).jaxpr(x=inputs["x"][:, 0])
    assert [_lengths(split.jaxpr)] == [[4]]  # i = 0 apart, then a loop over 1..4
    # every i in one loop; inside it, the loop over t (no loop inside) split at t = 0
    assert _lengths(compiled.jaxpr(**inputs).jaxpr) == [5, 5]


def _lengths(jaxpr: jex.Jaxpr) -> list[int]:
    """The trip counts of the scans of a jaxpr and its sub-jaxprs, pre-order."""
    return [eqn.params["length"] for eqn in equations(jaxpr) if eqn.primitive.name == "scan"]


def test_a_backward_recurrence_runs_in_reverse() -> None:
    program, bounds, inputs = CASES[[c.name for c in CASES].index("returns_backward")].build()
    kept = tj.Pipeline(passes=tuple(p for p in tj.Pipeline().passes if p is not rewrite))
    compiled = program.compile(bounds=bounds, pipeline=kept)  # not lifted to a reverse scan
    assert "reversed(" in compiled.schedule
    assert len(_loops(compiled.jaxpr(**inputs).jaxpr)) == 1


def test_compiled_is_pure_jittable_and_vmappable() -> None:
    program, bounds, inputs = CASES[[c.name for c in CASES].index("running_sum")].build()
    compiled = program.compile(bounds=bounds)
    batch = np.stack([inputs["x"], 2 * inputs["x"]])
    batched = jax.vmap(lambda x: compiled(x=x)["s"])(batch)
    np.testing.assert_allclose(batched[1], 2 * batched[0], rtol=1e-5)
    jitted = jax.jit(lambda x: compiled(x=x)["s"].sum())(inputs["x"])
    np.testing.assert_allclose(jitted, inputs["x"].cumsum().sum(), rtol=1e-5)


def test_lowering_exposes_xla_memory_analysis() -> None:
    compiled = _recurrence().compile(bounds={"T": 16})
    assert compiled.lower().compile().memory_analysis() is not None
    assert set(compiled.stage_seconds) == {"passes", "check", "schedule"}


def test_a_long_recurrence_compiles() -> None:
    compiled = _recurrence().compile(bounds={"T": 100_000})
    x = compiled()["x"]
    assert x.shape == (100_000,) and float(x[-1]) == pytest.approx(2.0)


def test_compile_errors() -> None:
    with pytest.raises(tj.MissingBoundError, match=r"no value for the bound\(s\) T"):
        _recurrence().compile(bounds={})
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[0] = 1.0
        x[t + 2] = x[t] * 2.0
        p.output("x", x[0 : t.bound])
    with pytest.raises(tj.UndefinedPointError, match=r"no branch defines it at t=1"):
        p.compile(bounds={"T": 5})
    with pytest.raises(tj.InputError, match=r"input 'x' .* was not given"):
        CASES[0].build()[0].compile(bounds={"T": 4})()


def _carried_buffer_copies(compiled: object, rows: int) -> list[str]:
    """HLO copies of a buffer-sized loop-carried value (the per-iteration copy trap)."""
    text = compiled.lower().compile().as_text()
    return [
        line.strip()
        for line in text.splitlines()
        if re.search(rf"= f32\[{rows},[0-9,]*\]\{{[^}}]*\}} copy\(%get-tuple-element", line)
    ]


def test_no_per_iteration_copy_of_carried_buffers() -> None:
    """Reading a carried buffer that the loop also updates must not copy it every step."""
    steps = 64
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (16,), jnp.float32, domain=(t,))
        m = tj.placeholder((16,), jnp.float32, domain=(t,))
        m[0] = x[0]
        m[t + 1] = 0.9 * m[t] + 0.1 * x[t + 1]
        p.output("last", m[t.bound - 1])
    assert _carried_buffer_copies(p.compile(bounds={"T": steps}), steps) == []


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_compiled_with_dynamic_bounds_matches_the_reference(case: Case) -> None:
    """Each bound made dynamic (max = twice its value) in turn gives the same outputs."""
    program, bounds, inputs = case.build()
    want = tj.reference.run(program, bounds=bounds, inputs=inputs)
    ir = program.to_ir()
    actual = {b: v for b in ir.bounds for k, v in bounds.items() if getattr(k, "name", k) == b.name}
    for bound in ir.bounds:
        value = next(v for k, v in bounds.items() if getattr(k, "name", k) == bound.name)
        given = {getattr(k, "name", k): v for k, v in bounds.items()}
        given[bound.name] = tj.dynamic(max=2 * value)
        try:
            compiled = program.compile(bounds=given)
        except tj.UnsupportedError as err:  # a range whose size is this bound (e.g. x[0:T])
            assert "dynamic bound" in str(err)
            continue
        got = compiled(**{bound.name: value}, **inputs)
        assert int(got["lengths"][bound.name]) == value
        for name, expected in want.items():
            out = next(o for o in ir.outputs if o.name == name)
            sizes = [value if d.bound == bound else None for d in out.domain]
            sizes += [  # spatial sizes such as T in x[0:T], at the actual bound
                None if isinstance(d, int) else d.evaluate({**actual, bound: value})
                for d in out.spec.shape
            ]
            index = tuple(slice(None) if n is None else slice(0, n) for n in sizes)
            np.testing.assert_allclose(np.asarray(got[name])[index], expected, rtol=1e-5)


def test_donated_inputs_are_reused_by_the_compiled_function() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (4,), jnp.float32, domain=(t,))
        s = tj.placeholder((4,), jnp.float32, domain=(t,))
        s[0] = x[0]
        s[t + 1] = s[t] + x[t + 1]
        p.output("s", s[0 : t.bound])
    donating = p.compile(bounds={"T": 16}, donate_inputs=True)
    assert "tf.aliasing_output" in donating.lower().as_text()  # x's memory may hold s
    xs = jnp.ones((16, 4))
    np.testing.assert_allclose(donating(x=xs)["s"][-1], 16.0)
    assert xs.is_deleted()
    keeping = p.compile(bounds={"T": 16})
    ys = jnp.ones((16, 4))
    keeping(x=ys)
    assert not ys.is_deleted() and "tf.aliasing_output" not in keeping.lower().as_text()


def test_ahead_of_time_runs_the_executable_compiled_up_front() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        s = tj.placeholder((), jnp.float32, domain=(t,))
        s[0] = x[0]
        s[t + 1] = s[t] * 0.5 + x[t + 1]
        p.output("s", s)
    compiled = p.compile({"T": 6})
    run = compiled.ahead_of_time()
    xs = np.arange(6, dtype=np.float32)
    np.testing.assert_allclose(run(x=xs)["s"], compiled(x=xs)["s"])
    np.testing.assert_allclose(run(x=xs)["s"], tj.reference.run(p, {"T": 6}, {"x": xs})["s"])
    with pytest.raises(tj.InputError, match="has shape"):
        run(x=np.zeros(5, np.float32))
    # compiled for shapes alone (a value of another dtype is cast, as an array would be)
    shaped = compiled.ahead_of_time(x=jax.ShapeDtypeStruct((6,), jnp.float64))
    np.testing.assert_allclose(shaped(x=xs)["s"], compiled(x=xs)["s"])
    with pytest.raises(tj.InputError, match="has shape"):
        compiled.ahead_of_time(x=jax.ShapeDtypeStruct((5,), jnp.float32))


def test_each_op_is_named_in_the_compiled_metadata() -> None:
    """Every op's computation runs under the name scope ``S<id>:<name>`` the schedule prints,
    in a loop and in a nest computed at once, so profiles attribute kernels to ops."""
    with tj.Program() as p:
        b, t = p.dims("b t")
        a = tj.input("a", (3,), jnp.float32, domain=(b, t))
        x = tj.placeholder((3,), jnp.float32, domain=(b, t))
        x[b, 0] = tj.zeros((3,), jnp.float32)
        x[b, t + 1] = tj.tanh(x[b, t]) + a[b, t]
        p.output("total", tj.lift(lambda v: v.sum(0), name="total")(a[b, 0 : t + 1]))
        p.output("x", x)
    compiled = p.compile({"B": 2, "T": 5})
    ops = re.findall(r"(S\d+)\[[^\]]*\]\s+# (\w+)", compiled.schedule)
    assert len(ops) == 5  # a const, the merge, tanh, add; the nest's op
    text = compiled.lower().as_text(debug_info=True)
    for op, name in ops:
        if name != "const":  # a constant is a literal of the program: no computation
            assert f"{op}:{name}" in text


@pytest.mark.parametrize("enabled", [True, False])
def test_the_garbage_collector_is_off_during_the_build_and_restored_after(enabled: bool) -> None:
    seen = []

    def spy(program: tj.Program) -> tj.Program:
        seen.append(gc.isenabled())
        return program

    (gc.enable if enabled else gc.disable)()
    try:
        _recurrence().compile(bounds={"T": 4}, pipeline=tj.Pipeline(passes=(spy,)))
        assert seen == [False]
        assert gc.isenabled() is enabled
    finally:
        gc.enable()


@pytest.mark.parametrize("enabled", [True, False])
def test_the_garbage_collector_is_off_while_the_program_traces_and_lowers(enabled: bool) -> None:
    seen = []

    def spy(v: jax.Array) -> jax.Array:
        seen.append(gc.isenabled())
        return v * 2.0

    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        p.output("y", tj.lift(spy, name="spy")(x))
    compiled = p.compile({"T": 3})
    xs = jnp.arange(3.0)
    (gc.enable if enabled else gc.disable)()
    try:
        seen.clear()
        compiled.lower(x=xs)
        np.testing.assert_allclose(compiled(x=xs)["y"], 2.0 * xs)
        np.testing.assert_allclose(compiled.ahead_of_time(x=xs)(x=xs)["y"], 2.0 * xs)
        assert seen and not any(seen)
        assert gc.isenabled() is enabled
    finally:
        gc.enable()
