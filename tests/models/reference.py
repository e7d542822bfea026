"""Full-sequence logits two ways: the flax module, and a reference built from the
:mod:`models.layers` functions with a mask written out position by position (both jitted)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.models import layers
from tempo_jax.models.config import DecoderConfig
from tempo_jax.models.flax import from_params
from tempo_jax.models.params import Params, layer


@functools.partial(jax.jit, static_argnums=0)
def flax_logits(cfg: DecoderConfig, params: Params, tokens: jax.Array) -> jax.Array:
    """``[B, S, V]`` logits of the flax module holding ``params``."""
    return from_params(cfg, params)(tokens)


def _visible(cfg: DecoderConfig, length: int) -> np.ndarray:
    """``[S, S]``: position ``t`` sees rows ``max(0, t - window + 1) .. t``."""
    mask = np.zeros((length, length), bool)
    for t in range(length):
        mask[t, 0 if cfg.window is None else max(0, t - cfg.window + 1) : t + 1] = True
    return mask


@functools.partial(jax.jit, static_argnums=0)
def reference_logits(cfg: DecoderConfig, params: Params, tokens: jax.Array) -> jax.Array:
    """``[B, S, V]`` logits computed from the :mod:`models.layers` functions."""
    pos = jnp.arange(tokens.shape[1])
    x = layers.embed(cfg, params, tokens, pos)
    for l in range(cfg.layers):
        lp = layer(params, l)
        q, k, v = layers.qkv(cfg, lp, layers.norm(cfg, lp["attn_norm"], x), pos)
        o = layers.attend(cfg, q, k[:, None], v[:, None], _visible(cfg, tokens.shape[1]))
        x = x + layers.attn_out(cfg, lp, o)
        x = x + layers.mlp(cfg, lp, layers.norm(cfg, lp["mlp_norm"], x))
    return layers.logits(cfg, params, x)
