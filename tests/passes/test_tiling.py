"""Static tiling of growing ranges: equal to the padded evaluation, visiting only live tiles."""

from __future__ import annotations

import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax._lower.tiling import Tiles, auto_block, tiled_call
from tempo_jax._passes.tiling import tile_dynamic_ranges
from tests.corpus import CASES, Case
from tests.lower.test_compile import _loops

UNTILED = tj.Pipeline(passes=tuple(p for p in tj.Pipeline().passes if p is not tile_dynamic_ranges))
D = 8


def _tiled(block: int) -> tj.Pipeline:
    tile = functools.partial(tile_dynamic_ranges, block=block)
    return tj.Pipeline(passes=(*UNTILED.passes, tile))


def _close(got: Any, want: Any) -> None:
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_tiling_keeps_the_outputs_on_the_corpus(case: Case) -> None:
    program, bounds, inputs = case.build()
    ir = program.to_ir()
    before = ir.ops
    out = tile_dynamic_ranges(ir, block=2)
    assert ir.ops == before  # the input program is unchanged
    assert tile_dynamic_ranges(out, block=2) is out  # idempotent
    want = tj.reference.run(ir, bounds, inputs)
    got = program.compile(bounds, pipeline=_tiled(2))(**inputs)
    for name, value in want.items():
        _close(got[name], value)


def _attention(kind: str, window: int = 5, heads: int = 1) -> tj.Program:
    with tj.Program() as p:
        (t,) = p.dims("t")
        T = t.bound
        q, k, v = (tj.input(n, (heads, D), jnp.float32, domain=(t,)) for n in "qkv")
        rows = {
            "causal": slice(0, t + 1),
            "window": slice(tj.max(0, t - window + 1), t + 1),
            "suffix": slice(t, T),
        }[kind]

        def attend(q: jax.Array, ks: jax.Array, vs: jax.Array) -> jax.Array:
            scores = jnp.einsum("hd,phd->hp", q, ks) / np.sqrt(D)
            return jnp.einsum("hp,phd->hd", jax.nn.softmax(scores, axis=-1), vs)

        p.output("o", tj.lift(attend)(q, k[rows], v[rows]))
    return p


@pytest.mark.parametrize("kind", ["causal", "window", "suffix"])
@pytest.mark.parametrize("steps", [16, 19])  # a multiple of the tile size, and not
def test_tiled_attention_equals_untiled(kind: str, steps: int) -> None:
    p = _attention(kind, heads=2)
    rng = np.random.default_rng(steps)
    data = {n: rng.normal(size=(steps, 2, D)).astype(np.float32) for n in "qkv"}
    tiled = p.compile({"T": steps}, pipeline=_tiled(4))
    assert [op.payload.block for op in tiled.program.ops if op.name == "attend"] == [4]
    want = p.compile({"T": steps}, pipeline=UNTILED)(**data)["o"]
    _close(tiled(**data)["o"], want)
    _close(want, tj.reference.run(p, {"T": steps}, data)["o"])


def test_tiled_attention_runs_a_tile_loop_inside_the_step_loop() -> None:
    p = _attention("causal")
    data = {n: np.ones((32, 1, D), np.float32) for n in "qkv"}
    tiled = p.compile({"T": 32}, pipeline=_tiled(8))
    untiled = p.compile({"T": 32}, pipeline=UNTILED)
    # the points of t are independent: a loop over blocks of queries (depth 0) with the tile
    # loop inside (1); taken only where a block's values are not finite, a map over its points
    # (1), each with its own tile loop (2)
    assert sorted(d for d, _ in _loops(tiled.jaxpr(**data).jaxpr)) == [0, 1, 1, 2]
    # untiled, every query over its whole padded range at once: no loop but, taken only where
    # the values are not finite, the map over the points
    assert [d for d, _ in _loops(untiled.jaxpr(**data).jaxpr)] == [0]


def _visits(fn: Any, rows: np.ndarray, length: int, block: int) -> tuple[list, list[int]]:
    """``tiled_call`` of ``fn(q, rows)`` with a reader that records the tiles it reads."""
    seen: list[int] = []
    padded = jnp.asarray(rows)

    def reader(tile: Any) -> jax.Array:
        jax.debug.callback(lambda i: seen.append(int(i)), tile, ordered=True)
        index = jnp.clip(tile * block + jnp.arange(block), 0, padded.shape[0] - 1)
        return jnp.take(padded, index, axis=0)

    q = jnp.ones((D,), jnp.float32)
    example = jax.ShapeDtypeStruct((block, D), jnp.float32)

    @jax.jit
    def run(n: jax.Array) -> list:
        def valid(tile: Any) -> jax.Array:
            return tile * block + jnp.arange(block) < n

        tiles = Tiles(0, (n + block - 1) // block, valid, n)
        out = tiled_call(fn, [q, example], [None, reader], [None, 0], tiles, "L", "test")
        assert out is not None
        return out

    out = run(jnp.int32(length))
    jax.effects_barrier()
    return out, seen


@pytest.mark.parametrize("length", [1, 8, 9, 21])
def test_softmax_attention_reads_each_live_tile_once(length: int) -> None:
    """One sweep (online max rescaling) over ceil(L / block) tiles, not three passes over all."""
    rows = np.random.default_rng(length).normal(size=(40, D)).astype(np.float32)

    def attend(q: jax.Array, ks: jax.Array) -> tuple[jax.Array]:
        return (jax.nn.softmax(ks @ q) @ ks,)

    (got,), seen = _visits(attend, rows, length, block=8)
    assert seen == list(range(-(-length // 8)))
    _close(got, attend(jnp.ones(D), jnp.asarray(rows[:length]))[0])


def test_a_max_then_a_sum_of_other_rows_takes_two_sweeps() -> None:
    """exp(x - max) feeding a square (not a product) cannot be rescaled: a second sweep."""
    rows = np.random.default_rng(0).normal(size=(24, D)).astype(np.float32)

    def fn(q: jax.Array, ks: jax.Array) -> tuple[jax.Array]:
        s = ks @ q
        return ((jnp.exp(s - s.max()) ** 2).sum(),)

    (got,), seen = _visits(fn, rows, 20, block=8)
    assert seen == [0, 1, 2, 0, 1, 2]
    _close(got, fn(jnp.ones(D), jnp.asarray(rows[:20]))[0])


def test_a_mean_over_tiles_divides_by_the_whole_length() -> None:
    rows = np.random.default_rng(1).normal(size=(24, D)).astype(np.float32)

    def fn(q: jax.Array, ks: jax.Array) -> tuple[jax.Array]:
        return (jnp.mean(ks * q, axis=0) + jnp.max(ks, axis=0),)

    (got,), seen = _visits(fn, rows, 13, block=4)
    assert seen == [0, 1, 2, 3]
    want = np.mean(rows[:13], axis=0) + np.max(rows[:13], axis=0)
    _close(got, want)


def test_payloads_that_are_not_map_then_reduce_fall_back() -> None:
    """An index built from the range (discounting by position) or a cumulative sum along it."""
    example = jax.ShapeDtypeStruct((4, D), jnp.float32)
    q = jnp.ones((D,), jnp.float32)
    for fn in (
        lambda q, ks: ((ks * 0.9 ** jnp.arange(ks.shape[0])[:, None]).sum(0),),
        lambda q, ks: (jnp.cumsum(ks, axis=0).sum(0),),
        lambda q, ks: (ks * q,),  # the output keeps the range
    ):
        tiles = Tiles(0, 1, lambda i: jnp.arange(4) < 3, 3)
        got = tiled_call(fn, [q, example], [None, lambda i: None], [None, 0], tiles, "L", "x")
        assert got is None
    # the same payloads compile (padded, unmasked where the masking allows) with equal values
    p = next(c for c in CASES if c.name == "returns_suffix")
    program, bounds, inputs = p.build()
    _close(
        program.compile(bounds, pipeline=_tiled(2))(**inputs)["g"],
        p.oracle(inputs)["g"],
    )


def _copies(hlo: str, at_least: int) -> list[str]:
    """HLO copy instructions of at least ``at_least`` elements."""
    found = []
    for line in hlo.splitlines():
        match = re.search(r"= \w+\[([\d,]*)\][^ ]* copy\(", line)
        if match:
            size = int(np.prod([int(n) for n in match.group(1).split(",") if n] or [1]))
            if size >= at_least:
                found.append(line.strip())
    return found


def test_tiled_attention_over_a_buffer_written_in_the_loop_copies_no_buffer() -> None:
    """The keys are computed and stored in the same loop that reads their live tiles: XLA must
    not copy the (T, D) buffer per iteration (a known trap on CPU)."""
    steps = 128
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (D,), jnp.float32, domain=(t,))
        w = tj.input("w", (D, D), jnp.float32)
        attend = tj.lift(lambda q, ks: jax.nn.softmax(ks @ q) @ ks)
        o = tj.placeholder((D,), jnp.float32, domain=(t,))
        k = tj.tanh(o @ w + x)  # the key depends on the previous output: one loop over t
        o[0] = x[0]
        o[t + 1] = attend(o[t], k[0 : t + 1])
        p.output("o", o)
    data = {
        "x": np.random.default_rng(0).normal(size=(steps, D)).astype(np.float32),
        "w": (np.eye(D) * 0.5).astype(np.float32),
    }
    compiled = p.compile({"T": steps}, pipeline=_tiled(16))
    assert "for t" in compiled.schedule
    hlo = compiled.lower(**data).compile().as_text()
    assert _copies(hlo, at_least=steps * D) == []
    untiled = p.compile({"T": steps}, pipeline=UNTILED)  # checked against the reference above
    _close(compiled(**data)["o"], untiled(**data)["o"])


def test_automatic_tile_sizes_and_bad_ones() -> None:
    assert auto_block(4096) == 256 and auto_block(100) == 32 and auto_block(10**6) == 1024
    p = _attention("causal")
    with pytest.raises(ValueError, match="tile size"):
        tile_dynamic_ranges(p.to_ir(), block=-1)
    data = {n: np.random.default_rng(3).normal(size=(40, 1, D)).astype(np.float32) for n in "qkv"}
    untiled = p.compile({"T": 40}, pipeline=UNTILED)
    _close(p.compile({"T": 40})(**data)["o"], untiled(**data)["o"])


@pytest.mark.parametrize("length", [3, 8, 21])
def test_a_value_broadcast_along_the_range_is_tiled(length: int) -> None:
    """``broadcast_to(q, rows.shape)`` makes the range axis from a value without it: every
    tile holds the same broadcast, and its padding rows are kept out of the sums."""
    rows = np.random.default_rng(length).normal(size=(40, D)).astype(np.float32)

    def fn(q: jax.Array, ks: jax.Array) -> tuple[jax.Array]:
        wide = jnp.broadcast_to(q, ks.shape)
        return (jnp.sum(wide * ks, axis=0) + jnp.sum(wide, axis=0),)

    (got,), seen = _visits(fn, rows, length, block=8)
    assert seen == list(range(-(-length // 8)))
    want = fn(jnp.ones(D), jnp.asarray(rows[:length]))[0]
    _close(got, want)
