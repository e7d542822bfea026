"""Cyclic storage: a buffer read only through windows (``k[max(0, t-w+1):t+1]``) by
map-then-reduce payloads keeps its last rows only, row ``p`` at slot ``p mod rows``, and each
read takes the whole cycle in tiles with the rows outside the window masked. Checked against
the reference interpreter: windows shorter and longer than a tile, a tile size that does not
divide the window, a window that leaves out the newest row, two windows of one buffer, layers
unrolled and looped; and the buffers that must stay whole (an output, a payload that is not a
map-then-reduce)."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax._lower import buffer_plan
from tempo_jax._lower.buffer_plan import Cycle
from tests.lower.helpers import layer_inputs, recording

D, STEPS, LAYERS = 4, 11, 2


def _attend(q: jax.Array, ks: jax.Array, vs: jax.Array) -> jax.Array:
    return jax.nn.softmax(ks @ q, axis=0) @ vs


def _program(
    window: int,
    *,
    newest: bool = True,
    keys_out: bool = False,
    second: int | None = None,
    bad: bool = False,
) -> tj.Program:
    """Layers over ``(t, l)`` attending over a window of computed keys and values: the last
    ``window`` rows up to ``t`` (before ``t`` unless ``newest``); with ``second``, a second op
    attends over another window of the same buffers; with ``bad``, an input ``bad[t]`` is
    added to the values, and positions before ``window`` do not use the attention."""
    with tj.Program() as p:
        t, l = p.dims("t l")
        x = tj.input("x", (D,), jnp.float32, domain=(t,))
        wk = tj.input("wk", (D, D), jnp.float32, domain=(l,))
        wv = tj.input("wv", (D, D), jnp.float32, domain=(l,))
        h = tj.placeholder((D,), jnp.float32, domain=(t, l))
        h[0, 0] = x[0]
        k = tj.tanh(h @ wk)
        v = tj.sin(h @ wv)
        if bad:
            v = v + tj.input("bad", (D,), jnp.float32, domain=(t,))[t]
        stop = t + 1 if newest else t
        rows = slice(tj.max(0, stop - window), stop)
        a = tj.lift(_attend, name="attend")(h, k[rows, l], v[rows, l])
        if not newest:  # at t = 0 the window is empty
            a = tj.where(t > 0, a, tj.cos(h))
        if bad:
            a = tj.where(t >= window, a, 0.0)
        if second is not None:
            wide = slice(tj.max(0, t + 1 - second), t + 1)
            a = a + tj.lift(_attend, name="attend2")(h, k[wide, l], v[wide, l])
        y = h + a
        h[t, l + 1] = y[t, l]
        h[t + 1, 0] = x[t + 1] + 0.5 * y[t, l.bound - 1]
        p.output("y", y[t, l.bound - 1])
        if keys_out:
            p.output("keys", k[t, l])
    return p


def _inputs() -> dict[str, np.ndarray]:
    return layer_inputs(STEPS, LAYERS, D)


def _run(
    program: tj.Program, block: int, unroll: tuple[str, ...] = ("l",), **extra: np.ndarray
) -> list[Cycle]:
    """The cycles of the lowering, once the compiled outputs equal the reference's (finite)."""
    inputs = {**_inputs(), **extra}
    bounds = {"T": STEPS, "L": LAYERS}
    tiling = functools.partial(tj.tile_dynamic_ranges, block=block)
    pipeline = tj.Pipeline().replacing("tile_dynamic_ranges", tiling)
    compiled = program.compile(bounds, pipeline=pipeline, unroll=unroll)
    with recording(buffer_plan.BufferPlan, "_cycles") as made:
        got = compiled(**inputs)
    want = tj.reference.run(program.to_ir(), bounds, inputs)
    for name in want:
        assert np.isfinite(want[name]).all()
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    (cycles,) = made
    return list(cycles.values())


@pytest.mark.parametrize("unroll", [("l",), ()], ids=["unrolled", "looped"])
@pytest.mark.parametrize(
    ("window", "block", "rows", "tile"),
    [
        (3, 3, 3, 3),  # a window of one tile
        (3, 8, 3, 3),  # a tile longer than the window: one tile of the window's rows
        (3, 0, 3, 3),  # the size left to the compiler: one tile
        (4, 2, 4, 2),  # two tiles
        (5, 2, 6, 2),  # a tile size that does not divide the window: rows rounded up
    ],
)
def test_window_buffers_keep_their_last_rows(
    window: int, block: int, rows: int, tile: int, unroll: tuple[str, ...]
) -> None:
    cycles = _run(_program(window), block, unroll)
    assert len(cycles) == 2  # keys and values
    for cycle in cycles:
        assert (cycle.axis, cycle.rows, cycle.block) == (0, rows, tile)


def test_a_window_before_the_newest_row_keeps_room_for_it() -> None:
    """``k[t-3:t]`` at ``t`` reads 3 rows, but row ``t`` is written before the read: the cycle
    holds 4 rows, or row ``t`` would overwrite row ``t - 3`` first."""
    cycles = _run(_program(3, newest=False), 0)
    assert {(c.rows, c.block) for c in cycles} == {(4, 4)}


def test_two_windows_of_one_buffer_share_the_longest_cycle() -> None:
    """Windows of 3 and 5 rows: the cycle holds 5 rows, in tiles of the smaller size."""
    cycles = _run(_program(3, second=5), 8)
    assert {(c.rows, c.block) for c in cycles} == {(6, 3)}
    cycles = _run(_program(3, second=5), 2)
    assert {(c.rows, c.block) for c in cycles} == {(6, 2)}


def test_buffers_read_whole_or_in_order_stay_whole() -> None:
    """An output reads every row of the keys: both buffers stay whole, since the op reading
    them takes all its ranges the same way. A cumulative sum over the window depends on the
    rows' order, which a cycle does not keep."""
    assert _run(_program(3, keys_out=True), 3) == []
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (D,), jnp.float32, domain=(t,))
        k = tj.tanh(x * 2.0)
        cum = tj.lift(lambda ks: jnp.cumsum(ks, axis=0)[:, 0].sum(0), name="cum")
        p.output("c", cum(k[tj.max(0, t - 2) : t + 1]))
    tiling = functools.partial(tj.tile_dynamic_ranges, block=3)
    pipeline = tj.Pipeline().replacing("tile_dynamic_ranges", tiling)
    inputs = {"x": _inputs()["x"]}
    with recording(buffer_plan.BufferPlan, "_cycles") as made:
        got = p.compile({"T": STEPS}, pipeline=pipeline)(**inputs)
    xs = np.tanh(inputs["x"] * 2.0)
    want = [np.cumsum(xs[max(0, i - 2) : i + 1], axis=0)[:, 0].sum() for i in range(STEPS)]
    np.testing.assert_allclose(got["c"], want, rtol=1e-5)
    assert made == [{}]


def test_a_window_as_long_as_the_dim_stays_whole() -> None:
    assert _run(_program(STEPS), 4) == []


@pytest.mark.parametrize("block", [2, 0])
def test_window_means_and_maxes_fed_back_into_a_recurrence(block: int) -> None:
    """``s[t + 1] = s[t] / 2 + x[t + 1] + m[t] / 10``, ``m`` the mean plus the max of the last 4
    values of ``s``: the mean divides by the window's length (fewer rows at the start), not by
    the cycle's; ``s[t]`` itself is read from the loop's carry, not from the cycle."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (D,), jnp.float32, domain=(t,))
        s = tj.placeholder((D,), jnp.float32, domain=(t,))
        stats = tj.lift(lambda r: jnp.mean(r, axis=0) + jnp.max(r, axis=0), name="stats")
        m = stats(s[tj.max(0, t - 3) : t + 1])
        s[0] = x[0]
        s[t + 1] = 0.5 * s[t] + x[t + 1] + 0.1 * m[t]
        p.output("m", m)
    tiling = functools.partial(tj.tile_dynamic_ranges, block=block)
    pipeline = tj.Pipeline().replacing("tile_dynamic_ranges", tiling)
    xs = _inputs()["x"]
    with recording(buffer_plan.BufferPlan, "_cycles") as made:
        got = p.compile({"T": STEPS}, pipeline=pipeline)(x=xs)
    s_np, want = np.zeros((STEPS, D), np.float32), np.zeros((STEPS, D), np.float32)
    for i in range(STEPS):
        s_np[i] = xs[i] + (0.5 * s_np[i - 1] + 0.1 * want[i - 1] if i else 0)
        rows = s_np[max(0, i - 3) : i + 1]
        want[i] = rows.mean(0) + rows.max(0)
    np.testing.assert_allclose(got["m"], want, rtol=1e-5, atol=1e-6)
    ((cycle,),) = (list(c.values()) for c in made)
    assert (cycle.rows, cycle.block) == ((4, 2) if block else (4, 4))


@pytest.mark.parametrize("keys_out", [False, True], ids=["cyclic", "whole"])
def test_an_infinite_row_outside_the_window_does_not_reach_the_product(keys_out: bool) -> None:
    """Rows outside the window are masked out of ``weights @ values``. Zeroing only the
    weights' rows would give ``0 * inf = nan`` for an infinite value row masked out (row 0,
    outside the window from ``t = 3`` on, in a tile still read): the product is then taken
    with both operands masked, and equals the reference."""
    bad = np.zeros((STEPS, D), np.float32)
    bad[0, 1] = np.inf  # positions 0..2 read it, and do not use their attention
    cycles = _run(_program(3, keys_out=keys_out, bad=True), 2, bad=bad)
    assert bool(cycles) != keys_out


def test_a_cache_with_its_first_rows_written_before_the_loop_is_still_a_cycle() -> None:
    """The keys over every position ``u``: the first ``S`` from a prefix (before the loop),
    then one per step ``t`` (row ``S + t``) read through a window, in a loop ``p.stop_when``
    ends: a cycle of the window's rows, the prefix written into it first. Values and the
    number of steps run equal the interpreter's."""
    prefix, steps, window = 5, 6, 3
    with tj.Program() as p:
        s, t, u = p.dims("s t u")
        xs = tj.input("xs", (D,), jnp.float32, domain=(s,))
        x = tj.input("x", (D,), jnp.float32, domain=(t,))
        h = tj.placeholder((D,), jnp.float32, domain=(t,))
        keys = tj.placeholder((D,), jnp.float32, domain=(u,))
        prefix_keys = tj.lift(_attend, name="prefix")(xs, xs[0 : s + 1], xs[0 : s + 1])
        keys[u < s.bound] = tj.tanh(prefix_keys)[u]
        keys[True] = tj.tanh(h)[u - s.bound]
        rows = slice(tj.max(0, s.bound + t - window + 1), s.bound + t + 1)
        a = tj.lift(_attend, name="attend")(h, keys[rows], keys[rows])
        h[0] = x[0]
        h[t + 1] = x[t + 1] + 0.5 * a[t]
        p.output("a", a)
        p.stop_when(tj.all(a > 0.3))
    rng = np.random.default_rng(4)
    inputs = {
        "xs": rng.normal(size=(prefix, D)).astype(np.float32),
        "x": rng.normal(size=(steps, D)).astype(np.float32),
    }
    bounds = {"S": prefix, "T": steps, "U": prefix + steps}
    pipeline = tj.Pipeline().replacing(
        "tile_dynamic_ranges", functools.partial(tj.tile_dynamic_ranges, block=3)
    )
    compiled = p.compile(bounds, pipeline=pipeline)
    with recording(buffer_plan.BufferPlan, "_cycles") as made:
        got = compiled(**inputs)
    want = tj.reference.run(p.to_ir(), bounds, inputs)
    np.testing.assert_allclose(got["a"], want["a"], rtol=1e-5, atol=1e-5)
    assert int(got["lengths"]["T"]) == int(want["lengths"]["T"])
    ((cycle,),) = [list(c.values()) for c in made]
    assert (cycle.rows, cycle.block) == (3, 3)


def _loop_bodies(hlo: str) -> list[str]:
    """The computations of ``hlo`` (compiled HLO text) that are while-loop bodies."""
    names = set(re.findall(r"body=%([\w.\-]+)", hlo))
    blocks = re.split(r"\n(?=\S)", hlo)
    return [b for b in blocks if (m := re.match(r"%([\w.\-]+) ", b)) and m.group(1) in names]


def test_a_value_read_at_the_previous_iteration_is_carried_as_it_is() -> None:
    """Adam's moments are read at ``i - 1`` only (rings of depth 1): the loop carries each as
    the value itself, not a stack of one, so XLA updates it in place. A stack of one was
    copied on every iteration (its old value has two readers: the update and the new
    moment). The values equal an optax loop's (``tests/passes/test_autodiff.py``)."""
    optax = pytest.importorskip("optax")
    n, d = 16, 64
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.normal(size=n).astype(np.float32)
    tx = optax.adam(0.01)
    with tj.Program() as p:
        (i,) = p.dims("i")
        xs, ys = tj.input("x", (n, d)), tj.input("y", (n,))
        params = tj.param({"w": jnp.zeros(d)}, domain=(i,))
        loss = ((xs @ params["w"] - ys) ** 2).mean()
        new = tj.optim.step(tx, params, tj.grad(loss, params), over=i)
        p.output("w", new["w"][i.bound - 1])
    compiled = p.compile({"I": 20})
    kinds = {v.kind for v in compiled.memory().values}
    assert "ring" in kinds, kinds
    hlo = compiled.lower(x=x, y=y).compile().as_text()
    bodies = _loop_bodies(hlo)
    assert bodies
    assert not any(re.search(r"= f32\[[\d,]*\]\S* copy\(", b) for b in bodies)

    def loss_fn(w: jax.Array) -> jax.Array:
        return ((x @ w - y) ** 2).mean()

    w, state = jnp.zeros(d), tx.init(jnp.zeros(d))
    for _ in range(20):
        updates, state = tx.update(jax.grad(loss_fn)(w), state, w)
        w = optax.apply_updates(w, updates)
    np.testing.assert_allclose(compiled(x=x, y=y)["w"], w, rtol=1e-5, atol=1e-6)
