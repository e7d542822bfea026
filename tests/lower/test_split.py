"""Split storage: a buffer read in tiles is kept one array per tile (and per index of an
unrolled dim), its tiles visited by an unrolled loop of switches. Checked against the
reference interpreter with layers unrolled (constant piece indices) and not (every write a
select over the pieces), causal and windowed, with a tile size that does not divide the
length, and with the buffer also read whole (an output: the pieces assembled)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax._lower.split import Split
from tests.lower.helpers import layer_inputs, recording

D, STEPS, LAYERS, BLOCK = 4, 7, 2, 3


def _program(kind: str, window: int = 5) -> tj.Program:
    with tj.Program() as p:
        t, l = p.dims("t l")
        x = tj.input("x", (D,), jnp.float32, domain=(t,))
        wk = tj.input("wk", (D, D), jnp.float32, domain=(l,))
        wv = tj.input("wv", (D, D), jnp.float32, domain=(l,))
        h = tj.placeholder((D,), jnp.float32, domain=(t, l))
        h[0, 0] = x[0]
        k = tj.tanh(h @ wk)  # computed keys and values over (t, l): buffers read in tiles
        v = tj.sin(h @ wv)
        rows = slice(0, t + 1) if kind == "causal" else slice(tj.max(0, t - window + 1), t + 1)

        def attend(q: jax.Array, ks: jax.Array, vs: jax.Array) -> jax.Array:
            weights = jax.nn.softmax(ks @ q, axis=0)
            return weights @ vs

        a = tj.lift(attend, name="attend")(h, k[rows, l], v[rows, l])
        y = h + a
        h[t, l + 1] = y[t, l]
        h[t + 1, 0] = x[t + 1] + 0.5 * y[t, l.bound - 1]
        p.output("y", y[t, l.bound - 1])
        p.output("keys", k[t, l])  # the whole buffer, read at every point
    return p


def _inputs() -> dict[str, np.ndarray]:
    return layer_inputs(STEPS, LAYERS, D)


def _run(program: tj.Program, unroll: tuple[str, ...]) -> tuple[dict, dict, list[Split]]:
    """The compiled outputs, the reference interpreter's, and the splits the lowering made."""
    inputs = _inputs()
    bounds = {"T": STEPS, "L": LAYERS}
    tiling = functools.partial(tj.tile_dynamic_ranges, block=BLOCK)
    pipeline = tj.Pipeline().replacing("tile_dynamic_ranges", tiling)
    compiled = program.compile(bounds, pipeline=pipeline, unroll=unroll)
    with recording(Split, "zeros", keep="self") as built:
        got = compiled(**inputs)
    return got, tj.reference.run(program.to_ir(), bounds, inputs), built


@pytest.mark.parametrize("unroll", [("l",), ()], ids=["unrolled", "looped"])
@pytest.mark.parametrize("kind", ["causal", "window"])
def test_split_buffers_equal_the_reference(kind: str, unroll: tuple[str, ...]) -> None:
    got, want, built = _run(_program(kind), unroll)
    for name in ("y", "keys"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    assert len(built) == 2  # keys and values, each split
    for split in built:
        assert (split.block, split.count) == (BLOCK, 3)  # 7 rows: tiles of 3, the last padded
        assert split.unrolled == ((1,) if unroll else ())


def test_a_window_no_longer_than_a_tile_is_not_split() -> None:
    """A window of ``BLOCK`` rows is read whole (not in tiles): its buffer stays one array,
    as splitting it would assemble the whole buffer at every read."""
    got, want, built = _run(_program("window", window=BLOCK), ("l",))
    for name in ("y", "keys"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    assert built == []


def test_a_payload_not_taken_in_tiles_keeps_its_buffer_whole() -> None:
    """A cumulative sum along the range is not a map-then-reduce: the op reads the padded
    range, so the buffer it reads is not split (the plan is checked before storage)."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (D,), jnp.float32, domain=(t,))
        k = tj.tanh(x * 2.0)
        c = tj.lift(lambda ks: jnp.cumsum(ks, axis=0).sum(0), name="cum")(k[0 : t + 1])
        p.output("c", c)
    tiling = functools.partial(tj.tile_dynamic_ranges, block=BLOCK)
    pipeline = tj.Pipeline().replacing("tile_dynamic_ranges", tiling)
    compiled = p.compile({"T": STEPS}, pipeline=pipeline)
    with recording(Split, "zeros", keep="self") as built:
        got = compiled(x=_inputs()["x"])
    xs = _inputs()["x"]
    ks = np.tanh(xs * 2.0)
    want = [np.cumsum(ks[: n + 1], axis=0).sum(0) for n in range(STEPS)]
    np.testing.assert_allclose(got["c"], want, rtol=1e-5, atol=1e-5)
    assert built == []


@pytest.mark.parametrize("traced", [False, True], ids=["constant", "traced"])
def test_split_writes_and_assembles_like_one_array(traced: bool) -> None:
    """``Split`` alone: points written at constant or traced coordinates, then assembled,
    equal the same writes into one array (logical (T, L, W), stored (L, W, T))."""
    rows, layers, width = 7, 2, 3
    split = Split((rows, layers, width), (1, 2, 0), (1,), 0, 3, 3)
    rng = np.random.default_rng(2)
    picks = zip(rng.integers(0, rows, 9), rng.integers(0, layers, 9), strict=True)
    points = [(int(r), int(g)) for r, g in picks]
    values = rng.normal(size=(len(points), width)).astype(np.float32)

    def run(coords: jax.Array, updates: jax.Array) -> jax.Array:
        pieces = split.zeros(jnp.float32)
        for n in range(len(points)):
            at = coords[n] if traced else points[n]
            pieces = split.write(pieces, updates[n].reshape(1, 1, width), (at[0], at[1]))
        return split.assemble(pieces)

    got = jax.jit(run)(jnp.asarray(points, jnp.int32), jnp.asarray(values))
    want = np.zeros((rows, layers, width), np.float32)
    for (r, g), v in zip(points, values, strict=True):
        want[r, g] = v
    np.testing.assert_array_equal(np.asarray(got), want.transpose(1, 2, 0))


def test_ranges_of_buffers_of_other_shapes_cut_alike_read_their_tiles_as_stored() -> None:
    """Keys ``(D,)`` and a row weight ``()`` per position, both read as ``[0:t+1]`` by one
    payload and split in the same tiles: each tile is read as its own array, never
    assembled from the pieces (a copy of the whole buffer per read)."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (D,), jnp.float32, domain=(t,))
        h = tj.placeholder((D,), jnp.float32, domain=(t,))
        h[0] = x[0]
        k = tj.tanh(h * 2.0)
        m = tj.sigmoid(h.sum())  # one weight per row

        def attend(q: jax.Array, ks: jax.Array, ms: jax.Array) -> jax.Array:
            return jax.nn.softmax(ks @ q + ms, axis=0) @ ks

        h[t + 1] = x[t + 1] + 0.5 * tj.lift(attend, name="attend")(h, k[0 : t + 1], m[0 : t + 1])[t]
        p.output("h", h)
    tiling = functools.partial(tj.tile_dynamic_ranges, block=BLOCK)
    pipeline = tj.Pipeline().replacing("tile_dynamic_ranges", tiling)
    compiled = p.compile({"T": STEPS}, pipeline=pipeline)
    xs = _inputs()["x"]
    with recording(Split, "zeros", keep="self") as built, recording(Split, "assemble") as whole:
        got = compiled(x=xs)
    np.testing.assert_allclose(
        got["h"], tj.reference.run(p, {"T": STEPS}, {"x": xs})["h"], rtol=1e-5, atol=1e-5
    )
    assert len(built) == 2 and whole == []


@pytest.mark.parametrize(
    ("rows", "start", "group"),
    [(7, 0, 0), (4, 2, 0), (1, 5, 1), (2, 0, 1)],  # whole, across tiles, one row, 2 groups
)
def test_a_block_write_lands_in_the_tiles_it_covers(rows: int, start: int, group: int) -> None:
    """``write_block`` at static starts (straight into the tiles), at a computed row (one row:
    the point write) and at computed starts (through the whole buffer) equals a NumPy update
    of the whole buffer; ``cut`` undoes ``assemble``."""
    rng = np.random.default_rng(rows + start)
    # logical (rows 7, unrolled 2, value 3), stored rows next to the last axis
    split = Split((7, 2, 3), (1, 0, 2), (1,), axis=0, block=3, count=3)
    whole = rng.normal(size=(7, 2, 3)).astype(np.float32)
    pieces = split.cut(jnp.transpose(jnp.asarray(whole), split.order))
    np.testing.assert_array_equal(split.assemble(pieces), np.transpose(whole, split.order))
    value = rng.normal(size=(rows, 2 - group, 3)).astype(np.float32)
    want = whole.copy()
    want[start : start + rows, group:] = value
    known = jax.jit(lambda p, v: split.write_block(p, v, [start, group, 0]))
    computed = jax.jit(lambda p, v, f: split.write_block(p, v, [f, group, 0]))
    traced = jax.jit(lambda p, v, f, g: split.write_block(p, v, [f, g, 0]))
    results = [
        known(pieces, value),
        computed(pieces, value, jnp.int32(start)),
        traced(pieces, value, jnp.int32(start), jnp.int32(group)),  # through the whole buffer
    ]
    for got in results:
        stored = np.transpose(np.asarray(split.assemble(got)), np.argsort(split.order))
        np.testing.assert_array_equal(stored, want)
