"""The hand-written JAX training loop of a decoder: the reference for :mod:`models.train`.

What a user writes: the full-sequence forward with a causal (or sliding-window) mask, the mean
next-token cross-entropy, ``jax.value_and_grad`` and an optax update, the iterations a
``lax.scan`` inside one ``jax.jit`` (one batch of token rows ``[B, T+1]`` per iteration).
The parameters are :func:`models.train.per_layer`'s layout (a list of layer dicts).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from .. import layers
from ..config import DecoderConfig
from ..params import Params


def lm_loss(cfg: DecoderConfig, params: Params, rows: jax.Array) -> jax.Array:
    """The mean negative log-likelihood of ``rows[:, 1:]`` given ``rows[:, :-1]``."""
    tokens, targets = rows[:, :-1], rows[:, 1:]
    b, steps = tokens.shape
    pos = jnp.arange(steps)
    seen = pos[None, :] <= pos[:, None]
    if cfg.window is not None:
        seen &= pos[None, :] > pos[:, None] - cfg.window
    x = layers.embed(cfg, params, tokens, pos[None, :])
    for lp in params["layers"]:
        q, k, v = layers.qkv(cfg, lp, layers.norm(cfg, lp["attn_norm"], x), pos[None, :])
        q = q.reshape(b, steps, cfg.kv_heads, cfg.groups, cfg.head_dim)
        s = jnp.einsum("bikgd,bjkd->bkgij", q, k, preferred_element_type=jnp.float32)
        s = jnp.where(seen, s / math.sqrt(cfg.head_dim), -jnp.inf)
        o = jnp.einsum("bkgij,bjkd->bikgd", jax.nn.softmax(s, axis=-1).astype(v.dtype), v)
        x = x + layers.attn_out(cfg, lp, o.reshape(b, steps, cfg.heads, cfg.head_dim))
        x = x + layers.mlp(cfg, lp, layers.norm(cfg, lp["mlp_norm"], x))
    logp = jax.nn.log_softmax(layers.logits(cfg, params, x), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1).mean()


@functools.partial(jax.jit, static_argnums=(0, 1))
def train(
    cfg: DecoderConfig, tx: optax.GradientTransformation, params: Params, batches: jax.Array
) -> tuple[jax.Array, Params]:
    """``batches`` ``[I, B, T+1]``: the loss before each step ``[I]`` and the final params."""

    def step(carry: tuple[Params, Any], rows: jax.Array) -> tuple[tuple[Params, Any], Any]:
        prm, state = carry
        loss, grads = jax.value_and_grad(functools.partial(lm_loss, cfg))(prm, rows)
        updates, state = tx.update(grads, state, prm)
        return (optax.apply_updates(prm, updates), state), loss

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), batches)
    return losses, params
