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
    rng = np.random.default_rng(0)
    return {
        "x": rng.normal(size=(STEPS, D)).astype(np.float32),
        "wk": rng.normal(size=(LAYERS, D, D)).astype(np.float32),
        "wv": rng.normal(size=(LAYERS, D, D)).astype(np.float32),
    }


def _run(program: tj.Program, unroll: tuple[str, ...]) -> tuple[dict, dict, list[Split]]:
    """The compiled outputs, the reference interpreter's, and the splits the lowering made."""
    inputs = _inputs()
    bounds = {"T": STEPS, "L": LAYERS}
    tiling = functools.partial(tj.tile_dynamic_ranges, block=BLOCK)
    pipeline = tj.Pipeline().replacing("tile_dynamic_ranges", tiling)
    compiled = program.compile(bounds, pipeline=pipeline, unroll=unroll)
    built: list[Split] = []
    original = Split.zeros

    def zeros(self: Split, dtype: object) -> tuple[jax.Array, ...]:
        built.append(self)
        return original(self, dtype)

    Split.zeros = zeros  # type: ignore[method-assign]
    try:
        got = compiled(**inputs)
    finally:
        Split.zeros = original  # type: ignore[method-assign]
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
