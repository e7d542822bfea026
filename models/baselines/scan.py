"""Decoding as one jitted function: a ``lax.while_loop`` over positions.

The prompt (token by token) and the generation run in one ``lax.while_loop`` that carries the
per-layer KV caches (``P + steps`` rows, updated in place). Each step attends over the whole
cache under the mask ``row <= pos`` (and ``row > pos - window``). The loop bound is dynamic:
it exits as soon as every row has emitted ``end_token``, so ``steps_run`` counts the positions
actually fed.

Example::

    out = generate(cfg, params, prompt, steps=32, end_token=2)
"""

from __future__ import annotations

from typing import Any

import jax

from ..config import DecoderConfig
from ..params import Params
from .decode_loop import Sampling, decode_while, masked_attention, prepare


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
    rows = prompt.shape[1] + steps
    return decode_while(
        cfg,
        params,
        prompt,
        key,
        steps=steps,
        rows=rows,
        sampling=sampling,
        attention=masked_attention,
    )
