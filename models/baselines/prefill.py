"""Decoding with a parallel prefill, hand-written: the prompt in one masked forward pass, then
the scan decoder's ``lax.while_loop`` from the first new token on.

The prompt's positions go through every layer together: attention of all ``P`` queries over
the ``P`` prompt keys under the causal mask (and the window), as a vectorised masked product
(the ``[B, P, KV, G, P]`` scores are materialised); each layer's keys and values fill rows
``0 .. P-1`` of its cache. The token at ``P`` is picked from the last prompt position's logits
like every decoder picks it, and the loop of :mod:`.scan` carries on at position ``P``. This is
what a JAX user writes for prefill; tokens and logits equal the other decoders'.

Example::

    out = generate(cfg, params, prompt, steps=32, end_token=2)
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .. import layers
from ..config import DecoderConfig
from ..params import Params, layer
from .decode_loop import (
    DecodeState,
    Sampling,
    _next_token,
    decode_from,
    init_state,
    masked_attention,
    prepare,
    result,
)


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
) -> dict[str, jax.Array]:
    """Decode ``steps`` tokens after ``prompt`` ``[B, P]`` (see :mod:`models.baselines`)."""
    sampling = Sampling(temperature, top_p, end_token)
    prompt, key = prepare(cfg, prompt, steps, key, sampling)
    return _generate(cfg, params, prompt, key, steps=steps, sampling=sampling)


@functools.partial(jax.jit, static_argnames=("cfg", "steps", "sampling"))
def _generate(
    cfg: DecoderConfig,
    params: Params,
    prompt: jax.Array,
    key: jax.Array,
    *,
    steps: int,
    sampling: Sampling,
) -> dict[str, jax.Array]:
    state = prefill(cfg, params, prompt, key, steps, sampling)
    return result(decode_from(cfg, params, state, prompt, key, sampling, masked_attention))


def prefill(
    cfg: DecoderConfig,
    params: Params,
    prompt: jax.Array,
    key: jax.Array,
    steps: int,
    sampling: Sampling,
) -> DecodeState:
    """The decode state after the prompt: caches filled for positions ``0 .. P-1``, the
    prompt's logits stored, the token at ``P`` picked; the next position to feed is ``P``."""
    width = prompt.shape[1]
    state = init_state(cfg, params, prompt, steps, width + steps, sampling.end_token)
    pos = jnp.arange(width)
    valid = pos[None, :] <= pos[:, None]  # [query, key]
    if cfg.window is not None:
        valid &= pos[None, :] > pos[:, None] - cfg.window
    x = layers.embed(cfg, params, prompt, pos[None, :])  # [B, P, D]
    keys, values = [], []
    for l in range(cfg.layers):
        lp = layer(params, l)
        q, k, v = layers.qkv(cfg, lp, layers.norm(cfg, lp["attn_norm"], x), pos)
        a = layers.attend(cfg, q, k[:, None], v[:, None], valid[None])  # [B, P, H, hd]
        x = x + layers.attn_out(cfg, lp, a)
        x = x + layers.mlp(cfg, lp, layers.norm(cfg, lp["mlp_norm"], x))
        rows = (jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2))  # [B, KV, P, hd]
        keys.append(lax.dynamic_update_slice_in_dim(state.keys[l], rows[0], 0, axis=2))
        values.append(lax.dynamic_update_slice_in_dim(state.values[l], rows[1], 0, axis=2))
    logits = layers.logits(cfg, params, x)  # [B, P, V]
    state = state._replace(pos=jnp.int32(width - 1), keys=tuple(keys), values=tuple(values))
    token, done, length = _next_token(logits[:, -1], state, prompt, key, sampling)
    return state._replace(
        pos=jnp.int32(width),
        tokens=state.tokens.at[:, width].set(token) if steps else state.tokens,
        logits=state.logits.at[:, : min(width, state.logits.shape[1])].set(
            logits[:, : state.logits.shape[1]]
        ),
        done=done,
        length=length,
    )
