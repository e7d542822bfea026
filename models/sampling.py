"""Next-token sampling shared by every decoder: greedy, temperature and top-p (nucleus).

Every decoder draws the token at position ``p`` with ``step_key(key, p)``, so two decoders
given the same logits and key sample the same tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def step_key(key: jax.Array, position: int | jax.Array) -> jax.Array:
    """The key of the token at ``position``."""
    return jax.random.fold_in(key, position)


def top_p_mask(logits: jax.Array, top_p: float) -> jax.Array:
    """``logits`` ``[..., V]`` with every token outside the nucleus set to ``-inf``: the nucleus
    is the smallest set of most likely tokens whose probability mass reaches ``top_p``."""
    ranked = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ranked.astype(jnp.float32), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # at least 1
    threshold = jnp.take_along_axis(ranked, kept - 1, axis=-1)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample(logits: jax.Array, key: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """Int32 tokens ``[...]`` drawn from ``logits`` ``[..., V]``: the argmax when
    ``temperature`` is 0, otherwise a categorical draw from ``logits / temperature`` restricted
    to the top-``top_p`` nucleus (``top_p >= 1``: no restriction)."""
    if temperature < 0 or top_p <= 0:
        raise ValueError(f"need temperature >= 0 and top_p > 0, got {temperature}, {top_p}")
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits.astype(jnp.float32) / temperature
    if top_p < 1:
        scaled = top_p_mask(scaled, top_p)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
