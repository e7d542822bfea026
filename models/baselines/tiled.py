"""Decoding as one jitted ``lax.while_loop`` whose attention visits only live cache tiles.

Like :mod:`models.baselines.scan`, but the cache is cut into tiles of ``block`` rows and the
step at ``pos`` runs a ``lax.fori_loop`` over tiles ``lo .. hi - 1`` only, with
``hi = pos // block + 1`` and ``lo = 0`` (causal) or ``max(0, pos - window + 1) // block``
(sliding window). Each tile is a ``lax.dynamic_slice`` of the cache; scores are combined by an
online softmax (running maximum, rescaled sums), and the rows of the boundary tiles outside
``max(0, pos - window + 1) .. pos`` are masked. The cache has ``P + steps`` rows rounded up to
a whole number of tiles. Stops early like the scan decoder.

Example::

    out = generate(cfg, params, prompt, steps=32, block=64)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .. import layers
from ..config import DecoderConfig
from ..params import Params
from .decode_loop import Sampling, decode_while, prepare


@dataclasses.dataclass(frozen=True)
class TiledAttention:
    """Online-softmax attention over the live tiles of ``block`` cache rows."""

    block: int

    def bounds(self, cfg: DecoderConfig, pos: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The first and one-past-last tile holding rows ``pos`` may attend to."""
        lo = 0 if cfg.window is None else jnp.maximum(pos - cfg.window + 1, 0) // self.block
        return jnp.asarray(lo, jnp.int32), pos // self.block + 1

    def __call__(
        self, cfg: DecoderConfig, q: jax.Array, ks: jax.Array, vs: jax.Array, pos: jax.Array
    ) -> jax.Array:
        """``q`` ``[B, H, hd]`` against cache keys / values ``[B, KV, R, hd]``."""
        b, hd = q.shape[0], cfg.head_dim
        top = jnp.full((b, cfg.kv_heads, cfg.groups), layers.MASKED, jnp.float32)
        acc = jnp.zeros((b, cfg.kv_heads, cfg.groups, hd), jnp.float32)

        def tile(t: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            top, total, acc = carry
            start = t * self.block
            rows = start + jnp.arange(self.block)
            valid = rows <= pos
            if cfg.window is not None:
                valid &= rows > pos - cfg.window
            k = lax.dynamic_slice_in_dim(ks, start, self.block, axis=2)
            v = lax.dynamic_slice_in_dim(vs, start, self.block, axis=2)
            s = jnp.where(valid, layers.scores(cfg, q, jnp.swapaxes(k, 1, 2)), layers.MASKED)
            new_top = jnp.maximum(top, jnp.max(s, axis=-1))
            rescale = jnp.exp(top - new_top)
            e = jnp.where(valid, jnp.exp(s - new_top[..., None]), 0.0)
            part = jnp.einsum(
                "bkgs,bksd->bkgd", e.astype(v.dtype), v, preferred_element_type=jnp.float32
            )
            return new_top, total * rescale + jnp.sum(e, -1), acc * rescale[..., None] + part

        lo, hi = self.bounds(cfg, pos)
        _, total, acc = lax.fori_loop(lo, hi, tile, (top, jnp.zeros_like(top), acc))
        return (acc / total[..., None]).reshape(b, cfg.heads, hd).astype(vs.dtype)


def generate(
    cfg: DecoderConfig,
    params: Params,
    prompt: Any,
    steps: int,
    *,
    key: jax.Array | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    end_token: int | None = None,
    block: int = 64,
) -> dict[str, jax.Array]:
    """Decode ``steps`` tokens after ``prompt`` ``[B, P]`` (see :mod:`models.baselines`),
    attending in tiles of ``block`` cache rows."""
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")
    sampling = Sampling(temperature, top_p, end_token)
    prompt, key = prepare(cfg, prompt, steps, key, sampling)
    rows = -(-(prompt.shape[1] + steps) // block) * block
    return decode_while(
        cfg,
        params,
        prompt,
        key,
        steps=steps,
        rows=rows,
        sampling=sampling,
        attention=TiledAttention(block),
    )
