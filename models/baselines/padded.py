"""Decoding as a Python loop calling one jitted step per token.

The step (:func:`step`) takes the decode state (the per-layer KV caches, preallocated to
``P + steps`` rows, the position and the tokens so far), feeds the token at the position and
attends over the whole cache under the mask ``row <= pos`` (and ``row > pos - window``). The
state is donated, so the cache is updated in place. The prompt goes through the same step one
token at a time. With an ``end_token`` the loop checks on the host, before each step, whether
every row is done, and stops early.

Example::

    out = generate(cfg, params, prompt, steps=32)  # {"tokens", "length", "logits", "steps_run"}
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from ..config import DecoderConfig
from ..params import Params
from .decode_loop import (
    DecodeState,
    Sampling,
    advance,
    init_state,
    masked_attention,
    prepare,
    result,
)


@functools.partial(jax.jit, static_argnames=("cfg", "sampling"), donate_argnames=("state",))
def step(
    cfg: DecoderConfig,
    params: Params,
    state: DecodeState,
    prompt: jax.Array,
    key: jax.Array,
    sampling: Sampling,
) -> DecodeState:
    """One token: compiled once per (config, shapes, sampling), whatever the position."""
    return advance(cfg, params, state, prompt, key, sampling, masked_attention)


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
    state = init_state(cfg, params, prompt, steps, prompt.shape[1] + steps, end_token)
    for _ in range(state.logits.shape[1]):
        if end_token is not None and bool(state.done.all()):
            break
        state = step(cfg, params, state, prompt, key, sampling)
    return result(state)
