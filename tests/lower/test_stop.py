"""``p.stop_when``: a data-dependent end to the loop over a dim, compiled and interpreted.

The oracle is a NumPy loop that runs until the condition holds; the compiled program and the
reference interpreter must both give its values, zeros past the stop, and its length. Points
past the stop are never computed: payloads and sinks are counted, and reads of those points
see zeros.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tempo_jax as tj
from tempo_jax._lower.stopping import stop_loop
from tempo_jax._schedule.tree import Exec, Loop, Sequence, execs


def _growth(threshold: float) -> tj.Program:
    """``x[t+1] = 1.5 x[t] + a[t]``, stopping once ``x`` passes ``threshold``."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        a = tj.input("a", (), jnp.float32, domain=(t,))
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[0] = tj.const(1.0)
        x[t + 1] = x[t] * 1.5 + a[t]
        p.output("x", x)
        p.output("twice", x * 2.0)  # an op over t: computed in the loop, up to the stop only
        p.stop_when(x > threshold)
    return p


def _numpy_growth(a: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    x, out = 1.0, np.zeros(len(a), np.float32)
    for i in range(len(a)):
        out[i] = x
        if x > threshold:
            return out, i + 1
        x = np.float32(x * 1.5 + a[i])
    return out, len(a)


@pytest.mark.parametrize("threshold", [0.5, 10.0, 1e9])  # at once, midway, never
def test_stop_matches_numpy_compiled_and_interpreted(threshold: float) -> None:
    a = np.random.default_rng(0).uniform(0, 1, 12).astype(np.float32)
    want, length = _numpy_growth(a, threshold)
    p = _growth(threshold)
    for out in (p.compile({"T": 12})(a=a), tj.reference.run(p, {"T": 12}, {"a": a})):
        np.testing.assert_allclose(out["x"], want, rtol=1e-6)
        np.testing.assert_allclose(out["twice"], 2 * want, rtol=1e-6)
        assert int(out["lengths"]["T"]) == length
        assert "@stop" not in out


def test_stop_runs_a_while_loop_that_exits_early() -> None:
    p = _growth(10.0)
    compiled = p.compile({"T": 1000})
    text = str(compiled.jaxpr(a=np.zeros(1000, np.float32)))
    assert "while" in text
    calls: list[int] = []
    with tj.Program() as q:
        (t,) = q.dims("t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[0] = tj.const(1.0)
        x[t + 1] = x[t] * 1.5
        tj.sink(x, lambda v, at: calls.append(at["t"]))
        q.output("x", x)
        q.stop_when(x > 10.0)
    out = q.compile({"T": 1000})()
    jax.effects_barrier()
    assert int(out["lengths"]["T"]) == 7 and calls == list(range(7))


def test_stop_with_a_nested_loop_and_a_batch() -> None:
    """Rows stop independently; the loop over t ends when every row is done."""
    with tj.Program() as p:
        t, l = p.dims("t l")
        step = tj.input("step", (3,), jnp.float32, domain=(l,))
        h = tj.placeholder((3,), jnp.float32, domain=(t, l))
        y = h + step
        h[0, 0] = tj.zeros((3,), jnp.float32)
        h[t, l + 1] = y[t, l]
        h[t + 1, 0] = y[t, -1]
        total = y[t, -1]
        p.output("total", total)
        p.stop_when(tj.all(total > 5.0))
    step = np.array([[0.5, 1.0, 0.25], [0.5, 1.0, 0.25]], np.float32)  # L = 2: + (1, 2, 0.5)
    out = p.compile({"T": 20, "L": 2})(step=step)
    rows = np.arange(1, 21)[:, None] * np.array([1.0, 2.0, 0.5], np.float32)
    length = int(np.argmax((rows > 5).all(axis=1))) + 1  # row 3 passes 5 at t = 10
    assert int(out["lengths"]["T"]) == length == 11
    np.testing.assert_allclose(out["total"][:length], rows[:length])
    np.testing.assert_array_equal(out["total"][length:], 0.0)
    ref = tj.reference.run(p, {"T": 20, "L": 2}, {"step": step})
    np.testing.assert_allclose(ref["total"], out["total"])


def test_stop_needs_a_boolean_scalar_over_one_dim() -> None:
    with tj.Program() as p:
        b, t = p.dims("b t")
        x = tj.input("x", (2,), jnp.float32, domain=(b, t))
        with pytest.raises(tj.TempoError, match="boolean scalar over one dim"):
            p.stop_when(x > 0)
        with pytest.raises(tj.TempoError, match="boolean scalar over one dim"):
            p.stop_when(tj.all(x > 0))  # over (b, t)
        p.stop_when(tj.all(x[0] > 0))
        with pytest.raises(tj.TempoError, match="stops once only"):
            p.stop_when(tj.all(x[0] > 0))
        with pytest.raises(tj.TempoError, match="reserved"):
            p.output("@stop", x)


def test_stop_from_an_input_alone() -> None:
    """A condition no recurrence carries still gets the loop over t, which ends at the stop,
    with every op over t inside it."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        a = tj.input("a", (), jnp.float32, domain=(t,))
        p.output("a2", a * 2.0)
        p.stop_when(a > 3.0)
    a = np.array([1, 2, 5, 1, 7], np.float32)
    out = p.compile({"T": 5})(a=a)
    assert int(out["lengths"]["T"]) == 3
    np.testing.assert_allclose(out["a2"], [2, 4, 10, 0, 0])
    np.testing.assert_allclose(tj.reference.run(p, {"T": 5}, {"a": a})["a2"], out["a2"])


# -- passes keep what the stop loop needs in it ------------------------------------------------


def _running_sum() -> tuple[tj.Program, dict[str, Any]]:
    """A condition on ``acc[t+1] = acc[t] + x[t]``, which `rewrite` lifts to a cumsum elsewhere."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        acc = tj.placeholder((), jnp.float32, domain=(t,))
        acc[0] = tj.const(0.0)
        acc[t + 1] = acc[t] + x[t]
        p.output("acc", acc)
        p.output("x3", x * 3.0)
        p.stop_when(acc > 3.0)
    return p, {"x": np.arange(8, dtype=np.float32)}


def _copied_total() -> tuple[tj.Program, dict[str, Any]]:
    """Through a copy, with only ``acc[T-1]`` read otherwise (`rewrite`'s plain sum)."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        acc = tj.placeholder((), jnp.float32, domain=(t,))
        acc[0] = x[0]
        acc[t] = acc[t - 1] + x[t]
        done = tj.placeholder((), jnp.bool_, domain=(t,))
        done[True] = acc > 3.0
        p.output("total", acc[t.bound - 1])
        p.stop_when(done)
    return p, {"x": np.arange(8, dtype=np.float32)}


def _invariant_limit() -> tuple[tj.Program, dict[str, Any]]:
    """A limit the same at every point (`hoist_invariants` drops such a dim)."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        w = tj.input("w", (), jnp.float32)
        limit = tj.placeholder((), jnp.float32, domain=(t,))
        limit[True] = w * 2.0
        p.output("limit", limit)
        p.stop_when(x > limit)
    return p, {"x": np.arange(8, dtype=np.float32), "w": np.float32(2.0)}


def _input_flag() -> tuple[tj.Program, dict[str, Any]]:
    """The condition is an input itself."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        flag = tj.input("flag", (), jnp.bool_, domain=(t,))
        x = tj.input("x", (), jnp.float32, domain=(t,))
        p.output("x3", x * 3.0)
        p.stop_when(flag)
    return p, {"x": np.arange(8, dtype=np.float32), "flag": np.arange(8) == 3}


@pytest.mark.parametrize("build", [_running_sum, _copied_total, _invariant_limit, _input_flag])
def test_passes_never_turn_an_accepted_stop_into_a_rejected_one(
    build: Callable[[], tuple[tj.Program, dict[str, Any]]],
) -> None:
    """The default pipeline, no passes at all and the interpreter agree, and no op over t is
    lifted out of the loop the stop ends (no cumsum, no vectorised axis over t)."""
    p, inputs = build()
    want = tj.reference.run(p, {"T": 8}, inputs)
    assert 1 < int(want["lengths"]["T"]) < 8
    bare = p.compile({"T": 8}, pipeline=tj.Pipeline(passes=()))
    compiled = p.compile({"T": 8})
    for out in (bare(**inputs), compiled(**inputs)):
        assert out.keys() == want.keys()
        assert int(out["lengths"]["T"]) == int(want["lengths"]["T"])
        for name in want.keys() - {"lengths"}:
            np.testing.assert_allclose(out[name], want[name], err_msg=name)
    (t,) = [d for d in compiled.program.dims if d.name == "t"]
    over = [op for op in compiled.program.ops if op.kind != "input" and t in op.domain]
    loop = _stop_loop(compiled)
    assert {op.id for op in over} == {ex.op for ex in execs(loop)}
    assert not any("cumsum" in op.name or op.name.endswith(".sum") for op in compiled.program.ops)


def _stop_loop(compiled: Any) -> Loop:
    loop = stop_loop(compiled.program, compiled.tree)
    assert loop is not None
    return loop


# -- one loop: nothing past the stop runs --------------------------------------------------------


def _two_recurrences(calls: list[int], logged: list[int]) -> tj.Program:
    """``x`` stops the loop; ``y`` is a recurrence of its own the stop does not read (isl alone
    would give it its own loop over all T), through a payload counting its calls and a sink."""

    def counted(v: jax.Array) -> jax.Array:
        jax.debug.callback(lambda: calls.append(1))
        return v + 1.0

    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        y = tj.placeholder((), jnp.float32, domain=(t,))
        x[0] = tj.const(1.0)
        x[t + 1] = x[t] * 1.5
        y[0] = tj.const(0.0)
        y[t + 1] = tj.lift(counted)(y[t])
        tj.sink(y, lambda v, at: logged.append(at["t"]))
        p.output("y", y)
        p.output("x2", x[0 : t.bound] * 2.0)  # read after the loop, through all of t
        p.stop_when(x > 10.0)
    return p


def test_every_op_over_the_stopped_dim_runs_in_the_one_while_loop() -> None:
    calls: list[int] = []
    logged: list[int] = []
    p = _two_recurrences(calls, logged)
    compiled = p.compile({"T": 50})
    jaxpr = str(compiled.jaxpr())
    assert jaxpr.count("while[") == 1 and "scan[" not in jaxpr
    out = compiled()
    jax.effects_barrier()
    length = int(out["lengths"]["T"])
    assert length == 7  # 1.5**6 > 10
    assert len(calls) == length and logged == list(range(length))  # never past the stop
    np.testing.assert_allclose(out["y"], np.where(np.arange(50) < length, np.arange(50), 0))
    want_x = np.where(np.arange(50) < length, 1.5 ** np.arange(50), 0)
    np.testing.assert_allclose(out["x2"], 2 * want_x, rtol=1e-6)
    calls.clear()
    logged.clear()
    ref = tj.reference.run(p, {"T": 50})
    assert len(calls) <= length and logged == list(range(length))  # demanded points only
    for name in ("y", "x2"):
        np.testing.assert_allclose(ref[name], out[name], rtol=1e-6)


def test_a_stop_that_cannot_end_its_loop_fails_at_compile() -> None:
    """An op over t reading a later point, or an op not over t between two ops over t, cannot
    run inside the loop the stop ends: an error at `compile`, not at the first call."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        r = tj.placeholder((), jnp.float32, domain=(t,))
        r[t.bound - 1] = x[t.bound - 1]
        r[t] = x[t] + r[t + 1]  # a return: reads the future
        p.output("r", r)
        p.stop_when(x > 3.0)
    with pytest.raises(tj.UnsupportedError, match=r"reads .* a later point of `t`"):
        p.compile({"T": 8})
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        y = x * 2.0
        mean = tj.lift(lambda v: jnp.mean(v, axis=0))(y[0 : t.bound])
        p.output("z", y - mean)
        p.stop_when(y > 3.0)
    with pytest.raises(tj.UnsupportedError, match="not over `t`, yet it reads values over `t`"):
        p.compile({"T": 8})


def test_a_sink_outside_the_stop_loop_fails_at_compile_time() -> None:
    """The check runs on the schedule when compiling (here on a tree that splits the loop)."""
    p = _two_recurrences([], [])
    compiled = p.compile({"T": 5})
    loop = _stop_loop(compiled)
    program = compiled.program
    sinks = {op.id for op in program.ops if op.kind == "sink"}
    body = [ex for ex in execs(loop) if ex.op not in sinks]
    split = Sequence(
        (
            Loop("t", loop.start, loop.stop, Sequence(tuple(body))),
            Loop("t", loop.start, loop.stop, Exec(min(sinks), (loop.var,))),
        )
    )
    with pytest.raises(tj.UnsupportedError, match=r"sink .* runs outside the loop"):
        stop_loop(program, split)


# -- reads past the stop -------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [3.0, 1e9])  # stops at t = 3; never stops
def test_reads_past_the_stop_see_zeros(threshold: float) -> None:
    """``s[T-1]``, ``s[0:T]`` and ops reading them after the loop see zeros at points past the
    stop, compiled and interpreted alike (a NumPy loop is the oracle)."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        s = tj.placeholder((), jnp.float32, domain=(t,))
        s[0] = x[0]
        s[t] = s[t - 1] + x[t]
        T = t.bound
        p.output("last", s[T - 1])
        p.output("all", s[0:T])
        p.output("shifted", s[0:T] + 1.0)  # computed after the loop from the zeroed rows
        p.output("next", s[tj.min(t + 1, T - 1)])  # over t: reads one point ahead
        p.stop_when(s > threshold)
    x = np.arange(1, 9, dtype=np.float32)
    sums = np.cumsum(x)
    length = int(np.argmax(sums > threshold)) + 1 if (sums > threshold).any() else 8
    ran = np.where(np.arange(8) < length, sums, 0)
    nxt = np.where(np.arange(8) < length, ran[np.minimum(np.arange(8) + 1, 7)], 0)
    want = {"last": ran[-1], "all": ran, "shifted": ran + 1, "next": nxt}
    for out in (p.compile({"T": 8})(x=x), tj.reference.run(p, {"T": 8}, {"x": x})):
        assert int(out["lengths"]["T"]) == length
        for name, value in want.items():
            np.testing.assert_allclose(out[name], value, err_msg=name)


@functools.cache
def _mixed(steps: int) -> tuple[tj.Program, Any]:
    """A stop on a running sum against an input threshold, a recurrence the stop does not
    read, and reads of both before, at and past the stop; compiled once for ``steps``."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        T = t.bound
        x = tj.input("x", (), jnp.float32, domain=(t,))
        limit = tj.input("limit", (), jnp.float32)
        s = tj.placeholder((), jnp.float32, domain=(t,))
        s[0] = x[0]
        s[t] = s[t - 1] + x[t]
        y = tj.placeholder((), jnp.float32, domain=(t,))
        y[0] = tj.const(1.0)
        y[t + 1] = y[t] * 0.5 + x[t]
        p.output("s", s)
        p.output("y_all", y[0:T])
        p.output("y_total", tj.lift(lambda v: jnp.sum(v, axis=0))(y[0:T]))
        p.output("s_last", s[T - 1])
        p.output("y_first", y[0])
        p.stop_when(s > limit)
    return p, p.compile({"T": steps})


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    steps=st.sampled_from([1, 5]),
    values=st.lists(st.integers(-3, 5), min_size=5, max_size=5),
    limit=st.integers(-2, 12),
)
def test_stop_compiled_equals_interpreted_for_random_inputs(
    steps: int, values: list[int], limit: int
) -> None:
    p, compiled = _mixed(steps)
    inputs = {"x": np.asarray(values[:steps], np.float32), "limit": np.float32(limit)}
    want = tj.reference.run(p, {"T": steps}, inputs)
    out = compiled(**inputs)
    sums = np.cumsum(inputs["x"])
    above = np.flatnonzero(sums > limit)
    assert int(out["lengths"]["T"]) == int(want["lengths"]["T"])
    assert int(want["lengths"]["T"]) == (int(above[0]) + 1 if above.size else steps)
    for name in want.keys() - {"lengths"}:
        np.testing.assert_allclose(out[name], want[name], rtol=1e-6, err_msg=name)


def _cache(threshold: float) -> tj.Program:
    """A cache over every position ``u``: its first ``S`` rows from an input (a prompt), the
    rest written one per step ``t`` of a stopped loop that reads all rows so far."""
    with tj.Program() as p:
        s, t, u = p.dims("s t u")
        prompt = tj.input("prompt", (), jnp.float32, domain=(s,))
        h = tj.placeholder((), jnp.float32, domain=(t,))
        cache = tj.placeholder((), jnp.float32, domain=(u,))
        cache[u < s.bound] = prompt[u] * 2.0
        cache[True] = h[u - s.bound]
        h[0] = tj.lift(jnp.sum)(prompt[0 : s.bound])
        h[t + 1] = tj.lift(jnp.mean)(cache[0 : s.bound + t + 1]) + 1.0
        p.output("h", h)
        p.stop_when(h > threshold)
    return p


def _numpy_cache(prompt: np.ndarray, steps: int, threshold: float) -> tuple[np.ndarray, int]:
    cache, out, h = list(prompt * 2.0), np.zeros(steps, np.float32), prompt.sum()
    for i in range(steps):
        out[i] = h
        if h > threshold:
            return out, i + 1
        cache.append(h)
        h = np.float32(np.mean(cache) + 1.0)
    return out, steps


@pytest.mark.parametrize("threshold", [0.0, 5.0, 1e9])
def test_an_op_over_all_positions_runs_its_later_points_in_the_stopped_loop(
    threshold: float,
) -> None:
    """``cache`` is not over ``t``, yet it reads ``h`` and ``h`` reads it: its points past the
    prompt run in the loop, each at the step it reads (``u = S + t``); the prompt's before."""
    prompt = np.asarray([0.5, 1.0, 0.25], np.float32)
    p = _cache(threshold)
    bounds = {"S": 3, "T": 9, "U": 12}
    want, length = _numpy_cache(prompt, 9, threshold)
    compiled = p.compile(bounds)
    assert str(compiled.jaxpr()).count("while[") == 1
    for out in (compiled(prompt=prompt), tj.reference.run(p, bounds, {"prompt": prompt})):
        np.testing.assert_allclose(out["h"], want, rtol=1e-6)
        assert int(out["lengths"]["T"]) == length


@pytest.mark.parametrize("read", ["output", "op after the loop", "whole"])
def test_a_value_stepped_over_nested_dims_reads_zeros_past_the_stop(read: str) -> None:
    """A value stepped over ``(i, m)`` (a parameter over iterations and minibatches) is kept as
    its latest point inside the loop over ``i``; read at ``new[I - 1, M - 1]`` after a stop at
    ``i = 1`` of 6, that point was never computed and reads as zeros, not as the value before
    the stop."""
    with tj.Program() as p:
        i, m = p.dims("i m")
        x = tj.input("x", (4,), jnp.float32, domain=(m,))
        w = tj.placeholder((4,), jnp.float32, domain=(i, m), name="w")
        new = w + 0.5 + 0.01 * tj.tanh(w * x[m].sum())
        w[0, 0] = tj.ones(4)
        w[i, m + 1] = new[i, m]
        w[i + 1, 0] = new[i, m.bound - 1]
        p.stop_when(new[i, m.bound - 1].sum() > 12.0)
        if read == "output":
            p.output("w", new[i.bound - 1, m.bound - 1])
        elif read == "op after the loop":
            p.output("w", new[i.bound - 1, m.bound - 1] * 2.0)
        else:
            p.output("w", new[0 : i.bound, m.bound - 1])
    bounds = {"I": 6, "M": 2}
    xs = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    want = tj.reference.run(p, bounds, {"x": xs})
    got = p.compile(bounds)(x=xs)
    assert want["lengths"] == {"I": 2}
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6)
    if read != "whole":
        assert not np.asarray(got["w"]).any()  # past the stop: zeros
