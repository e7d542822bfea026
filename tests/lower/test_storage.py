"""Storage planning: point, window and full storage chosen from how the schedule reads.

Values are checked against the reference interpreter in test_compile.py; here the plan
itself is pinned, so a change that silently falls back to full buffers fails.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tempo_jax as tj
from tempo_jax._lower.storage import plan_storage
from tempo_jax._passes.rewrite import rewrite
from tempo_jax._passes.vectorize import vectorize
from tempo_jax._schedule import scheduler
from tempo_jax._schedule.clusters import cluster
from tempo_jax._schedule.scheduler import schedule
from tests.corpus import CASES


def _plan(program: tj.Program):
    ir = program.to_ir()
    return ir, plan_storage(ir, schedule(ir))


def _ids(ir, name: str) -> set[int]:
    return {op.id for op in ir.ops if op.name == name}


def test_a_recurrence_lives_in_loop_carries() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (8,), jnp.float32, domain=(t,))
        m = tj.placeholder((8,), jnp.float32, domain=(t,))
        m[0] = x[0]
        m[t + 1] = 0.9 * m[t] + 0.1 * x[t + 1]
        p.output("last", m[t.bound - 1])
    ir, plan = _plan(p)
    assert plan.buffered == set()  # nothing stored in full:
    assert plan.captured == {"last"}  # the output keeps the one value it reads
    assert list(plan.window.values()) == [0]  # m[t] reads add[t-1]: one step back
    (depths,) = plan.rings.values()
    assert depths == {(op, 0): 1 for op in _ids(ir, "add")}
    assert len(plan.local) >= 2  # the multiplies read m[t] and add reads them at t


def test_two_step_recurrence_keeps_two_values() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        f = tj.placeholder((), jnp.int32, domain=(t,))
        f[t < 2] = t
        f[True] = f[t - 1] + f[t - 2]
        p.output("f", f[t.bound - 1])
    ir, plan = _plan(p)
    (depths,) = plan.rings.values()
    assert depths == {(op, 0): 2 for op in _ids(ir, "f")}
    assert int(p.compile(bounds={"T": 20})()["f"]) == 4181


def test_backward_recurrence_uses_a_window_of_a_reversed_loop() -> None:
    program = next(c for c in CASES if c.name == "returns_backward").build()[0]
    ir, plan = _plan(program)
    ((loop, depths),) = plan.rings.items()
    assert loop.reverse and depths == {(op, 0): 1 for op in _ids(ir, "g")}


def test_values_read_across_loops_are_stored_in_full() -> None:
    program = next(c for c in CASES if c.name == "linear_regression").build()[0]
    ir, plan = _plan(program)
    (err,) = (op for op in _ids(ir, "subtract") if len(ir.op(op).domain) == 2)
    assert (err, 0) in plan.buffered  # err[i, t], read as the range err[i, 0:T]
    (update,) = (op for op in _ids(ir, "subtract") if op != err)  # w[i + 1] = w[i] - ...
    assert (update, 0) not in plan.buffered  # read at the next i: a ring of the i loop


def test_guarded_producers_keep_window_storage() -> None:
    """fibonacci's schedule guards both statements; the loop is split instead, rings kept."""
    program, bounds, inputs = next(c for c in CASES if c.name == "fibonacci").build()
    ir, plan = _plan(program)
    ((_, depths),) = plan.rings.items()
    (add,) = _ids(ir, "add")
    (f,) = _ids(ir, "f")  # an output, hence also stored in full
    assert depths == {(add, 0): 1, (f, 0): 2} and (add, 0) not in plan.buffered
    compiled = program.compile(bounds=bounds)
    assert "if " in compiled.schedule
    jaxpr = str(compiled.jaxpr(**inputs))
    assert " cond[" not in jaxpr  # guards on the loop variable became separate loops


def test_window_storage_gives_the_reference_values() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        y = tj.placeholder((), jnp.float32, domain=(t,))
        y[t < 3] = x
        y[True] = y[t - 1] - 0.5 * y[t - 3] + x[t]  # distances 1 and 3 from one producer
        p.output("y", y[0 : t.bound])
    xs = np.random.default_rng(0).normal(size=20).astype(np.float32)
    got = p.compile(bounds={"T": 20})(x=xs)["y"]
    want = tj.reference.run(p, bounds={"T": 20}, inputs={"x": xs})["y"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)


def test_a_range_of_a_value_computed_in_the_same_loop_is_stored_in_full() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), jnp.float32, domain=(t,))
        k = tj.tanh(x * 2.0)  # computed in the loop over t, read as the prefix k[0:t+1]
        p.output("s", k[0 : t + 1].sum(axis=0))
    ir, plan = _plan(p)
    (tanh,) = _ids(ir, "tanh")
    assert (tanh, 0) in plan.buffered and not plan.window
    data = np.linspace(-1.0, 1.0, 18, dtype=np.float32).reshape(6, 3)
    got = p.compile(bounds={"T": 6})(x=data)["s"]
    np.testing.assert_allclose(got, np.cumsum(np.tanh(data * 2.0), axis=0), rtol=1e-6)


def test_full_buffers_live_from_first_to_last_use() -> None:
    """random_walk's steps are stored in full by a first loop nest and read by a second."""
    program, bounds, inputs = next(c for c in CASES if c.name == "random_walk").build()
    loops_over_b = tj.Pipeline(
        passes=tuple(p for p in tj.Pipeline().passes if p not in (vectorize, rewrite))
    )
    compiled = program.compile(bounds=bounds, pipeline=loops_over_b)
    lines = [line.split("#")[0].strip() for line in compiled.schedule.splitlines()]
    ir = program.to_ir()
    (normal,) = _ids(ir, "normal")
    (pos,) = _ids(ir, "pos")
    loops = [k for k, line in enumerate(lines) if line.startswith("for b")]
    assert lines.index(f"alloc S{normal}.0") < loops[0]
    assert loops[0] < lines.index(f"alloc S{pos}.0") < loops[1]  # not carried by the first
    assert lines[-1] == f"free S{normal}.0"  # an output's buffer is never freed
    want = tj.reference.run(program, bounds=bounds, inputs=inputs)
    np.testing.assert_allclose(compiled(**inputs)["pos"], want["pos"], rtol=1e-6)


def _iterations() -> tj.Program:
    """An inner loop over t per iteration i, whose values the same iteration sums."""
    with tj.Program() as p:
        i, t = p.dims("i t")
        x = tj.input("x", (4,), jnp.float32, domain=(t,))
        w = tj.placeholder((4,), jnp.float32, domain=(i,))
        h = tj.placeholder((4,), jnp.float32, domain=(i, t))
        h[i, 0] = tj.tanh(w + x[0])
        h[i, t + 1] = tj.tanh(h[i, t] * w + x[t + 1])  # a loop over t inside each i
        w[0] = tj.ones(4) * 0.5
        w[i + 1] = w + 0.01 * h[i, 0 : t.bound].sum(axis=0)  # read in the same iteration only
        p.output("w", w[i.bound - 1])
    return p


def test_a_buffer_read_only_in_its_own_iteration_leaves_out_the_iteration() -> None:
    p = _iterations()
    xs = np.random.default_rng(3).normal(size=(12, 4)).astype(np.float32)
    temps = []
    for iterations in (5, 40):
        compiled = p.compile({"I": iterations, "T": 12})
        plan = plan_storage(compiled.program, compiled.tree)
        (h,) = [op.id for op in compiled.program.ops if op.name == "h"]
        assert plan.scoped.get((h, 0)) == frozenset({0})  # no i axis: one iteration's rows
        want = tj.reference.run(p, {"I": iterations, "T": 12}, {"x": xs})["w"]
        np.testing.assert_allclose(compiled(x=xs)["w"], want, rtol=1e-5)
        temps.append(compiled.lower(x=xs).compile().memory_analysis().temp_size_in_bytes)
    # an (I, T, 4) buffer of h would grow by 35 * 12 * 16 bytes; only (I, 4) values may grow
    assert temps[1] - temps[0] < (40 - 5) * 12 * 16 // 4


def _nested_steps() -> tj.Program:
    """A parameter stepped over nested ``(i, e, m)`` (epochs of minibatches per iteration),
    also read at ``(i, 0, 0)`` by a loop over ``t`` (an actor using each iteration's start)."""
    with tj.Program() as p:
        i, e, m, t = p.dims("i e m t")
        x = tj.input("x", (4,), jnp.float32, domain=(m,))
        w = tj.placeholder((64,), jnp.float32, domain=(i, e, m))
        act = tj.placeholder((64,), jnp.float32, domain=(i, t))
        act[i, 0] = w[i, 0, 0] * 0.5
        act[i, t + 1] = tj.tanh(act[i, t] + w[i, 0, 0])
        new = w - 0.01 * tj.tanh(w * x[m].sum()) + 0.001 * act[i, t.bound - 1]
        w[0, 0, 0] = tj.ones(64)
        w[i, e, m + 1] = new[i, e, m]
        w[i, e + 1, 0] = new[i, e, m.bound - 1]
        w[i + 1, 0, 0] = new[i, e.bound - 1, m.bound - 1]
        p.output("w", new[i.bound - 1, e.bound - 1, m.bound - 1])
    return p


def test_a_value_read_only_where_last_produced_keeps_one_value() -> None:
    """Every read of ``w`` and ``new`` is of the point produced last (the next minibatch, the
    next epoch's first, the next iteration's first, the actor at ``(i, 0, 0)``): neither
    keeps an ``(I, E, M)`` buffer, so memory does not grow with the iterations, nor a ring
    of the minibatch loop beside it; the output at the last point is that value, not a
    capture selected at every step."""
    p = _nested_steps()
    xs = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
    temps = []
    for iterations in (4, 40):
        bounds = {"I": iterations, "E": 2, "M": 3, "T": 5}
        compiled = p.compile(bounds)
        plan = plan_storage(compiled.program, compiled.tree)
        nested = [op for op in compiled.program.ops if len(op.domain) == 3]
        stored = [op for op in nested if (op.id, 0) in plan.buffered]
        assert "w" in {op.name for op in stored}
        for op in stored:
            assert plan.scoped.get((op.id, 0)) == frozenset({0, 1, 2}), op.name
        kept = {(op.id, 0) for op in stored}
        for rings in plan.rings.values():  # no ring beside the one value (a second copy)
            assert not kept & set(rings)
        assert "w" not in plan.captured  # the last point: read from that value at the end
        want = tj.reference.run(p, bounds, {"x": xs})["w"]
        np.testing.assert_allclose(compiled(x=xs)["w"], want, rtol=1e-5)
        temps.append(compiled.lower(x=xs).compile().memory_analysis().temp_size_in_bytes)
    # an (I, E, M, 64) float32 buffer would grow by 36 * 6 * 256 bytes
    assert temps[1] - temps[0] < 36 * 6 * 256 // 4


def _rollout_steps(
    rows_read: bool = True, last_read: bool = True, every_step_out: bool = False
) -> tj.Program:
    """A parameter ``w`` stepped over ``(i, e, m)`` and a rollout ``h`` over ``t`` run with
    each iteration's ``w[i, 0, 0]``: the learner reads the rollout's rows whole (``rows_read``)
    and its last state (``last_read``); outputs ``w`` and ``h`` at their last points, and
    every step's parameter (``every_step_out``)."""
    with tj.Program() as p:
        i, e, m, t = p.dims("i e m t")
        x = tj.input("x", (4,), jnp.float32, domain=(m,))
        w = tj.placeholder((4,), jnp.float32, domain=(i, e, m), name="w")
        h = tj.placeholder((4,), jnp.float32, domain=(i, t), name="h")
        state = tj.tanh(h * w[i, 0, 0] + 0.1)
        h[0, 0] = tj.ones(4)
        h[i, t + 1] = state[i, t]
        h[i + 1, 0] = state[i, t.bound - 1]
        new = w - 0.01 * tj.tanh(w * x[m].sum())
        if rows_read:
            new = new + 0.001 * h[i, 0 : t.bound].sum(0)
        if last_read:
            new = new + 0.001 * state[i, t.bound - 1] * 2.0
        w[0, 0, 0] = tj.ones(4)
        w[i, e, m + 1] = new[i, e, m]
        w[i, e + 1, 0] = new[i, e, m.bound - 1]
        w[i + 1, 0, 0] = new[i, e.bound - 1, m.bound - 1]
        p.output("w", new[i.bound - 1, e.bound - 1, m.bound - 1])
        p.output("h", state[i.bound - 1, t.bound - 1])
        if every_step_out:
            p.output("steps", new[0 : i.bound, 0 : e.bound, 0 : m.bound])
    return p


def test_a_rollout_run_at_the_first_minibatch_keeps_its_state_as_one_value() -> None:
    """A rollout over ``t`` that the schedule runs inside the epochs and minibatches of each
    iteration, at ``(e, m) == (0, 0)`` (where the iteration's parameters are merged), as PPO's
    is: its state ``h``, read only at the previous step, at the next iteration's start and at
    the last step, is one value carried through every loop (not a row per step written and
    read back); the observations the learner reads whole stay a buffer of the iteration."""
    p = _rollout_steps()
    bounds = {"I": 3, "E": 2, "M": 3, "T": 5}
    compiled = p.compile(bounds)
    plan = plan_storage(compiled.program, compiled.tree)
    (kept,) = [op for op in compiled.program.ops if op.name == "tanh" and len(op.domain) == 2]
    assert plan.scoped.get((kept.id, 0)) == frozenset({0, 1})
    assert "h" not in plan.captured
    (rows,) = [op for op in compiled.program.ops if op.name == "h"]
    assert plan.scoped.get((rows.id, 0)) == frozenset({0})  # one iteration's rows
    xs = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    want = tj.reference.run(p, bounds, {"x": xs})
    got = compiled(x=xs)
    for name in ("w", "h"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


def _sliced_in_loops(jaxpr, shape: tuple[int, ...], inside: bool = False) -> int:
    """How many slices of an array of ``shape`` run inside a loop body of ``jaxpr``."""
    found = 0
    for eqn in jaxpr.eqns:
        if inside and eqn.primitive.name in ("slice", "dynamic_slice", "gather", "squeeze"):
            found += any(getattr(v.aval, "shape", None) == shape for v in eqn.invars)
        looped = inside or eqn.primitive.name in ("while", "scan")
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _sliced_in_loops(inner, shape, looped)
    return found


def test_unrolled_layer_weights_are_sliced_once_outside_the_time_loop() -> None:
    """Stacked weights ``w[l]`` read in a loop over ``t`` with ``l`` unrolled: each layer's
    slice is taken once before the loop (a loop-invariant copy per iteration otherwise)."""
    steps, layers, d = 6, 3, 4
    with tj.Program() as p:
        t, l = p.dims("t l")
        x = tj.input("x", (d,), jnp.float32, domain=(t,))
        w = tj.input("w", (d, d), jnp.float32, domain=(l,))
        h = tj.placeholder((d,), jnp.float32, domain=(t, l))
        h[0, 0] = x[0]
        y = tj.tanh(h @ w)
        h[t + 1, 0] = x[t + 1] + y[t, l.bound - 1]  # a recurrence over t: a loop
        h[t, l + 1] = y[t, l]
        p.output("y", y[t, l.bound - 1])
    compiled = p.compile({t.bound: steps, l.bound: layers}, unroll=("l",))
    xs = np.random.default_rng(0).normal(size=(steps, d)).astype(np.float32)
    ws = np.random.default_rng(1).normal(size=(layers, d, d)).astype(np.float32)
    out = np.asarray(compiled(x=xs, w=ws)["y"])
    expected, last = [], np.zeros(d, np.float32)
    for step in range(steps):
        last = xs[step] + last
        for k in range(layers):
            last = np.tanh(last @ ws[k])
        expected.append(last)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    jaxpr = compiled.jaxpr(x=xs, w=ws).jaxpr
    assert "scan[" in str(jaxpr) or "while[" in str(jaxpr)  # the loop over t
    assert _sliced_in_loops(jaxpr, (layers, d, d)) == 0


def _run_once_per_outer_loop(value: str) -> tuple[tj.Program, dict]:
    """A value of ``m`` alone (run by the schedule at ``i == 0`` only, inside the ``i`` loop)
    read at every ``(i, e, m)`` by a recurrence over the nest, with a term over ``i``."""
    with tj.Program() as p:
        i, e, m = p.dims("i e m")
        key = tj.input("key", (2,), jnp.uint32)
        if value == "index":
            row = tj.lift(lambda i: jnp.arange(8.0) * (i + 1.0))(i)
        else:  # a key per iteration, as a minibatch shuffle draws it
            perm = tj.lift(lambda k: jax.random.permutation(k, 8).astype(jnp.float32))
            row = perm(tj.random.key_at(key, (i,)))
        x = tj.placeholder((), jnp.float32, domain=(i, e, m), name="x")
        x[0, 0, 0] = 0.0
        nxt = x * 0.5 + tj.lift(lambda r, m: r[m])(row, m)
        x[i, e, m + 1] = nxt[i, e, m]
        x[i, e + 1, 0] = nxt[i, e, m.bound - 1]
        x[i + 1, 0, 0] = nxt[i, e.bound - 1, m.bound - 1]
        p.output("x", nxt[i.bound - 1, e.bound - 1, m.bound - 1])
    return p, {i.bound: 3, e.bound: 2, m.bound: 2}


@pytest.mark.parametrize("value", ["index", "key"])
def test_a_value_run_at_one_iteration_of_an_outer_loop_is_kept_for_the_others(
    value, monkeypatch
) -> None:
    """The schedule runs the op over ``m`` once, under ``if i == 0``; at ``i > 0`` its readers
    take the values of ``i = 0``, so neither a ring of the ``m`` loop nor a buffer rewritten
    per ``m`` may hold them (a ring read zeros, a one-value buffer the last ``m``'s).

    isl gives that schedule when it backtracks for deep bands and groups are not sunk into
    their consumers' (the scheduler's options now keep the op in a loop of its own per
    ``i``): the test schedules so, the storage planner must still get such trees right."""
    deep = tuple(
        (name, 1 if name == "schedule_maximize_band_depth" else value)
        for name, value in scheduler._OPTIONS
    )
    monkeypatch.setattr(scheduler, "_OPTIONS", deep)
    monkeypatch.setattr(scheduler, "cluster", functools.partial(cluster, sink=False))
    monkeypatch.setenv("TEMPO_JAX_SCHEDULE_CACHE", "0")
    p, bounds = _run_once_per_outer_loop(value)
    inputs = {"key": jax.random.PRNGKey(1)}
    want = tj.reference.run(p, bounds=bounds, inputs=inputs)["x"]
    np.testing.assert_allclose(p.compile(bounds)(**inputs)["x"], want, rtol=1e-6)
    ir, plan = _plan(p)
    (index,) = _ids(ir, "`m`")
    assert "i" in {s.name for s in plan.intermittent[index]} and (index, 0) in plan.buffered
    assert (index, 0) not in plan.scoped


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(1, 3), st.integers(1, 4)),
    st.integers(0, 2**16),
)
def test_nested_steps_with_a_rollout_equal_the_interpreter(
    rows_read: bool, last_read: bool, every_step_out: bool, sizes: tuple, seed: int
) -> None:
    """Variants of a parameter stepped over ``(i, e, m)`` with a rollout over ``t`` read at
    its last step (kept as its latest value or not, by what else reads it): the learner
    reading the rollout's rows, its last state or both, every step's parameter an output or
    only the last; at sizes down to one point per dim."""
    p = _rollout_steps(rows_read, not rows_read or last_read, every_step_out)
    bounds = dict(zip(("I", "E", "M", "T"), sizes, strict=True))
    xs = np.random.default_rng(seed).normal(size=(sizes[2], 4)).astype(np.float32)
    want = tj.reference.run(p, bounds, {"x": xs})
    got = p.compile(bounds)(x=xs)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
