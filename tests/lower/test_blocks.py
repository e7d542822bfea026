"""Query blocks: an op over growing ranges with independent points, computed at once.

``o[b, t] = attend(q[b, t], k[b, 0:t+1], v[b, 0:t+1])`` has no dependence along ``b`` or ``t``:
the compiled program computes it in blocks of queries over shared key tiles (block-causal),
with no loop over ``b`` or per query. Oracles: the reference interpreter and a dense masked
NumPy formulation, for prefix, window and suffix ranges, at sizes that are not a multiple of
the tile.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj

D = 8


def _attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    return jax.nn.softmax(k @ q) @ v


def _pool(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    return k.mean(0) * q + v.max(0)  # two reductions of different kinds, no softmax


def _ranges(kind: str, t: tj.Symbol, T: tj.Symbol) -> slice:
    if kind == "prefix":
        return slice(0, t + 1)
    if kind == "window":
        return slice(tj.max(0, t - 4), t + 1)
    return slice(t, T)  # suffix


def build(kind: str, payload: Callable) -> tj.Program:
    with tj.Program() as p:
        b, t = p.dims("b t")
        q = tj.input("q", (D,), jnp.float32, domain=(b, t))
        k = tj.input("k", (D,), jnp.float32, domain=(b, t))
        v = tj.input("v", (D,), jnp.float32, domain=(b, t))
        rows = _ranges(kind, t, t.bound)
        p.output("o", tj.lift(payload, name="attend")(q, k[b, rows], v[b, rows]))
    return p


def dense(kind: str, payload: Callable, q: np.ndarray, k: np.ndarray, v: np.ndarray):
    """Every point by NumPy slicing: the range rows of k and v, then the payload."""
    steps = q.shape[1]
    out = np.zeros_like(q)
    for bi in range(q.shape[0]):
        for ti in range(steps):
            lo, hi = {"prefix": (0, ti + 1), "window": (max(0, ti - 4), ti + 1)}.get(
                kind, (ti, steps)
            )
            out[bi, ti] = payload(q[bi, ti], k[bi, lo:hi], v[bi, lo:hi])
    return out


def _compiled(program: tj.Program, block: int, bounds: dict) -> tj.Compiled:
    tile = functools.partial(tj.tile_dynamic_ranges, block=block)
    return program.compile(bounds, pipeline=tj.Pipeline().replacing("tile_dynamic_ranges", tile))


def _data(steps: int, batch: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(steps)
    return {n: rng.normal(size=(batch, steps, D)).astype(np.float32) for n in "qkv"}


@pytest.mark.parametrize("kind", ["prefix", "window", "suffix"])
@pytest.mark.parametrize("payload", [_attend, _pool], ids=["attend", "pool"])
@pytest.mark.parametrize(("steps", "block"), [(37, 8), (16, 4), (5, 8)])
def test_query_blocks_equal_the_dense_oracle(kind: str, payload, steps: int, block: int) -> None:
    """Sizes that are not a multiple of the tile, a last block overlapping the one before, and
    a tile longer than the range (not taken in tiles: the padded evaluation)."""
    data = _data(steps)
    got = _compiled(build(kind, payload), block, {"B": 3, "T": steps})(**data)["o"]
    want = dense(kind, payload, data["q"], data["k"], data["v"])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kind", ["prefix", "window", "suffix"])
def test_query_blocks_equal_the_interpreter(kind: str) -> None:
    program = build(kind, _attend)
    data = _data(11, batch=2)
    want = tj.reference.run(program, {"B": 2, "T": 11}, data)["o"]
    got = _compiled(program, 4, {"B": 2, "T": 11})(**data)["o"]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_no_loop_over_the_independent_dims_and_no_square_buffer() -> None:
    """The batch and the queries are vmapped: one loop over query blocks, one over the tiles
    of a block; no value holds a score per (query, key) pair of the whole range."""
    steps, block = 256, 32
    compiled = _compiled(build("prefix", _attend), block, {"B": 4, "T": steps})
    data = _data(steps, batch=4)
    text = str(compiled.jaxpr(**data))
    assert f"{steps},{steps}" not in text.replace(" ", "")
    # a scan over the blocks of queries and a while loop over the tiles of one block; and,
    # taken only where a block's values are not finite, a map over its queries (the batch
    # vmapped), each with a while loop over its own tiles
    assert text.count("while[") == 2 and text.count("scan[") == 2
    assert f"length={steps // block}" in text.replace(" ", "")
    assert f"length={block}" in text.replace(" ", "")  # the map over one block's queries
    memory = compiled.lower(**data).compile().memory_analysis()
    assert memory.temp_size_in_bytes < 4 * steps * steps  # a (T, T) float32 would not fit
    scores = np.einsum("btd,bsd->bts", data["q"], data["k"])
    scores = np.where(np.tril(np.ones((steps, steps), bool)), scores, -np.inf)
    want = np.einsum("bts,bsd->btd", jax.nn.softmax(scores, axis=-1), data["v"])
    np.testing.assert_allclose(compiled(**data)["o"], want, rtol=2e-5, atol=2e-5)


def test_a_value_that_is_not_finite_stays_in_its_own_range() -> None:
    """An inf in ``v`` at row 9 is inside the ranges of the queries from 9 on, and in the
    tile the block of queries 8..11 shares: the queries before 9 must stay finite, exactly as
    the interpreter computes them."""
    program = build("prefix", _attend)
    data = _data(16, batch=2)
    data["v"][1, 9, 2] = np.inf
    want = tj.reference.run(program, {"B": 2, "T": 16}, data)["o"]
    got = _compiled(program, 4, {"B": 2, "T": 16})(**data)["o"]
    assert np.isfinite(want[1, :9]).all() and not np.isfinite(want[1, 9:]).all()
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_an_op_reading_its_own_values_keeps_its_loop() -> None:
    """``h[t] = f(h[0:t], x[t])`` depends along ``t``: no query blocks, same values."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (D,), jnp.float32, domain=(t,))
        h = tj.placeholder((D,), jnp.float32, domain=(t,))
        h[0] = x[0]
        h[True] = tj.lift(lambda hs, xi: jnp.tanh(hs.mean(0) + xi), name="mix")(h[0:t], x)
        p.output("h", h)
    xs = np.random.default_rng(0).normal(size=(20, D)).astype(np.float32)
    want = tj.reference.run(p, {"T": 20}, {"x": xs})["h"]
    got = _compiled(p, 4, {"T": 20})(x=xs)["h"]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_attention_inside_a_recurrence_over_another_dim() -> None:
    """``o[i, t]`` attends over ``h[i, 0:t+1]`` while ``h[i+1]`` depends on ``o[i]``: a
    dependence along ``i``, so the op's points are not independent; the values are the
    interpreter's."""
    with tj.Program() as p:
        i, t = p.dims("i t")
        x = tj.input("x", (D,), jnp.float32, domain=(t,))
        h = tj.placeholder((D,), jnp.float32, domain=(i, t))
        h[0, t] = x[t]
        o = tj.lift(_attend, name="attend")(h, h[i, 0 : t + 1], h[i, 0 : t + 1])
        h[i + 1, t] = tj.tanh(o[i, t])
        p.output("o", o)
    xs = np.random.default_rng(2).normal(size=(13, D)).astype(np.float32)
    want = tj.reference.run(p, {"I": 3, "T": 13}, {"x": xs})["o"]
    got = _compiled(p, 4, {"I": 3, "T": 13})(x=xs)["o"]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def _weighted(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Each row weighted by its position in the range: depends on where the rows sit."""
    return (jnp.arange(k.shape[0], dtype=jnp.float32)[:, None] * k).sum(0) * q + v.mean(0)


@pytest.mark.parametrize("kind", ["prefix", "suffix"])
def test_a_range_shorter_than_a_tile_is_read_where_it_sits(kind: str) -> None:
    """Not taken in tiles, every point of the nest reads the whole buffer with its own rows
    marked valid: no copy of the range per point (``(B, T, T, D)``), same values."""
    steps = 24
    compiled = _compiled(build(kind, _attend), 32, {"B": 3, "T": steps})
    data = _data(steps)
    text = str(compiled.jaxpr(**data)).replace(" ", "")
    assert f"f32[3,{steps},{steps},{D}]" not in text
    want = dense(kind, _attend, data["q"], data["k"], data["v"])
    np.testing.assert_allclose(compiled(**data)["o"], want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kind", ["prefix", "suffix"])
def test_a_payload_using_row_positions_reads_its_range_from_the_first_row(kind: str) -> None:
    steps = 13
    data = _data(steps)
    got = _compiled(build(kind, _weighted), 32, {"B": 3, "T": steps})(**data)["o"]
    want = dense(kind, _weighted, data["q"], data["k"], data["v"])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_an_inf_outside_a_short_range_is_not_multiplied_in() -> None:
    """Untiled, a product masks one operand only (the smaller); an inf in ``v`` at the last
    row is outside every other query's range, and the block is recomputed exactly."""
    program = build("prefix", _attend)
    data = _data(12, batch=2)
    data["v"][0, 11, 1] = np.inf
    want = tj.reference.run(program, {"B": 2, "T": 12}, data)["o"]
    got = _compiled(program, 32, {"B": 2, "T": 12})(**data)["o"]
    assert np.isfinite(want[0, :11]).all() and not np.isfinite(want[0, 11]).all()
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
