"""The per-token decode step and its bookkeeping, shared by the three baselines.

Position ``p`` feeds token ``tokens[:, p]`` through every layer, writes its key and value to
row ``p`` of each layer's cache (``lax.dynamic_update_slice`` on the carried buffer: in place,
no copy), stores the logits at ``p`` and picks the token at ``p + 1``: ``prompt[:, p + 1]``
inside the prompt, otherwise ``sample(logits, step_key(key, p + 1), temperature, top_p)``.

Each layer's cache is ``[B, KV, R, hd]`` (``R >= P + steps`` rows): with the rows next to the
head dimension, the attention contractions read it as laid out, without a transposed copy.

A row is done once it has emitted ``end_token`` after the prompt; its later tokens are
``end_token`` and its ``length`` counts tokens up to and including that one. Decoding stops
when every row is done (``steps_run`` then falls short of ``P + steps - 1``; logits of
positions never run stay zero).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .. import layers
from ..config import DecoderConfig
from ..params import Params, layer
from ..sampling import sample, step_key

# attention(cfg, q [B, H, hd], cache keys / values [B, KV, R, hd], pos) -> [B, H, hd]
Attention = Callable[[DecoderConfig, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is picked, and the optional stop token."""

    temperature: float = 0.0
    top_p: float = 1.0
    end_token: int | None = None


class DecodeState(NamedTuple):
    """Everything carried from one position to the next."""

    pos: jax.Array  # int32 []: the position fed next
    tokens: jax.Array  # int32 [B, T]
    logits: jax.Array  # float32 [B, T - 1, V]
    keys: tuple[jax.Array, ...]  # per layer [B, KV, R, hd], R >= T rows
    values: tuple[jax.Array, ...]
    done: jax.Array  # bool [B]
    length: jax.Array  # int32 [B]


def prepare(
    cfg: DecoderConfig,
    prompt: Any,
    steps: int,
    key: jax.Array | None,
    sampling: Sampling,
) -> tuple[jax.Array, jax.Array]:
    """Check the arguments of ``generate``; the int32 prompt and the base key."""
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be [B, P] with P >= 1, got shape {prompt.shape}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if prompt.shape[1] + steps > cfg.max_len:
        raise ValueError(f"P + steps = {prompt.shape[1] + steps} exceeds max_len {cfg.max_len}")
    if sampling.temperature < 0 or sampling.top_p <= 0:
        raise ValueError(f"need temperature >= 0 and top_p > 0, got {sampling}")
    if sampling.temperature > 0 and key is None:
        raise ValueError("sampling with temperature > 0 needs a key")
    return prompt, jax.random.PRNGKey(0) if key is None else key


def init_state(
    cfg: DecoderConfig, params: Params, prompt: jax.Array, steps: int, rows: int, end: int | None
) -> DecodeState:
    """Position 0, the prompt followed by ``end`` (or 0), empty caches of ``rows`` rows."""
    b, total = prompt.shape[0], prompt.shape[1] + steps
    fill = jnp.full((b, steps), 0 if end is None else end, jnp.int32)
    shape, dtype = (b, cfg.kv_heads, rows, cfg.head_dim), params["embed"].dtype
    cache = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.layers))
    return DecodeState(
        pos=jnp.int32(0),
        tokens=jnp.concatenate([prompt, fill], axis=1),
        logits=jnp.zeros((b, total - 1, cfg.vocab), jnp.float32),
        keys=cache,
        values=tuple(jnp.zeros_like(c) for c in cache),
        done=jnp.zeros(b, bool),
        length=jnp.full(b, total, jnp.int32),
    )


def masked_attention(
    cfg: DecoderConfig, q: jax.Array, ks: jax.Array, vs: jax.Array, pos: jax.Array
) -> jax.Array:
    """Attention over every cache row, masked to ``row <= pos`` (and the window)."""
    rows = jnp.arange(ks.shape[2])
    valid = rows <= pos
    if cfg.window is not None:
        valid &= rows > pos - cfg.window
    return layers.attend(cfg, q, jnp.swapaxes(ks, 1, 2), jnp.swapaxes(vs, 1, 2), valid)


def _layers(
    cfg: DecoderConfig, params: Params, state: DecodeState, attention: Attention
) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """The final hidden state ``[B, D]`` of the token at ``state.pos``, and updated caches."""
    pos = state.pos
    token = lax.dynamic_index_in_dim(state.tokens, pos, axis=1, keepdims=False)
    x = layers.embed(cfg, params, token, pos)
    keys, values = [], []
    for l in range(cfg.layers):
        lp = layer(params, l)
        q, k, v = layers.qkv(cfg, lp, layers.norm(cfg, lp["attn_norm"], x), pos)
        ks = lax.dynamic_update_slice_in_dim(state.keys[l], k[:, :, None], pos, axis=2)
        vs = lax.dynamic_update_slice_in_dim(state.values[l], v[:, :, None], pos, axis=2)
        x = x + layers.attn_out(cfg, lp, attention(cfg, q, ks, vs, pos))
        x = x + layers.mlp(cfg, lp, layers.norm(cfg, lp["mlp_norm"], x))
        keys.append(ks)
        values.append(vs)
    return x, keys, values


def _next_token(
    logits: jax.Array, state: DecodeState, prompt: jax.Array, key: jax.Array, s: Sampling
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The token at ``pos + 1`` ``[B]``, and the updated ``done`` and ``length``."""
    nxt, p = state.pos + 1, prompt.shape[1]
    forced = lax.dynamic_index_in_dim(prompt, jnp.minimum(nxt, p - 1), axis=1, keepdims=False)
    token = lax.cond(
        nxt < p,
        lambda: forced,
        lambda: sample(logits, step_key(key, nxt), s.temperature, s.top_p),
    )
    if s.end_token is None:
        return token, state.done, state.length
    token = jnp.where(state.done, s.end_token, token)
    hit = ~state.done & (token == s.end_token) & (nxt >= p)
    return token, state.done | hit, jnp.where(hit, nxt + 1, state.length)


def advance(
    cfg: DecoderConfig,
    params: Params,
    state: DecodeState,
    prompt: jax.Array,
    key: jax.Array,
    sampling: Sampling,
    attention: Attention,
) -> DecodeState:
    """One position: feed ``tokens[:, pos]``, store its logits, pick ``tokens[:, pos + 1]``."""
    x, keys, values = _layers(cfg, params, state, attention)
    logits = layers.logits(cfg, params, x)
    token, done, length = _next_token(logits, state, prompt, key, sampling)
    pos = state.pos
    return DecodeState(
        pos=pos + 1,
        tokens=lax.dynamic_update_slice_in_dim(state.tokens, token[:, None], pos + 1, axis=1),
        logits=lax.dynamic_update_slice_in_dim(state.logits, logits[:, None], pos, axis=1),
        keys=tuple(keys),
        values=tuple(values),
        done=done,
        length=length,
    )


def running(state: DecodeState, sampling: Sampling) -> jax.Array:
    """Whether another position is to run: one is left and some row is not done."""
    more = state.pos < state.logits.shape[1]
    return more if sampling.end_token is None else more & ~jnp.all(state.done)


def result(state: DecodeState) -> dict[str, jax.Array]:
    """The ``generate`` result: ``tokens``, ``length``, ``logits`` and ``steps_run`` (the
    number of positions fed)."""
    return {
        "tokens": state.tokens,
        "length": state.length,
        "logits": state.logits,
        "steps_run": state.pos,
    }


@functools.partial(jax.jit, static_argnames=("cfg", "steps", "rows", "sampling", "attention"))
def decode_while(
    cfg: DecoderConfig,
    params: Params,
    prompt: jax.Array,
    key: jax.Array,
    *,
    steps: int,
    rows: int,
    sampling: Sampling,
    attention: Attention,
) -> dict[str, jax.Array]:
    """The whole decode as one XLA computation: a ``lax.while_loop`` over positions that
    exits as soon as every row is done (or the last position has run)."""
    state = init_state(cfg, params, prompt, steps, rows, sampling.end_token)
    return result(decode_from(cfg, params, state, prompt, key, sampling, attention))


def decode_from(
    cfg: DecoderConfig,
    params: Params,
    state: DecodeState,
    prompt: jax.Array,
    key: jax.Array,
    sampling: Sampling,
    attention: Attention,
) -> DecodeState:
    """``state`` advanced position by position, in a ``lax.while_loop``, while
    :func:`running`."""
    return lax.while_loop(
        lambda s: running(s, sampling),
        lambda s: advance(cfg, params, s, prompt, key, sampling, attention),
        state,
    )
