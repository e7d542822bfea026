"""Next-token sampling shared by every decoder: greedy, temperature, top-k and top-p (nucleus).

Every decoder draws the token at position ``p`` with ``step_key(key, p)``, so two decoders
given the same logits and key sample the same tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def step_key(key: jax.Array, position: int | jax.Array) -> jax.Array:
    """The key of the token at ``position``."""
    return jax.random.fold_in(key, position)


def top_k_mask(logits: jax.Array, top_k: int) -> jax.Array:
    """``logits`` ``[..., V]`` with every token below the ``top_k``-th largest set to ``-inf``
    (ties with it are kept)."""
    kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
    return jnp.where(logits >= kth, logits, -jnp.inf)


def top_p_mask(logits: jax.Array, top_p: float) -> jax.Array:
    """``logits`` ``[..., V]`` with every token outside the nucleus set to ``-inf``: the nucleus
    is the smallest set of most likely tokens whose probability mass reaches ``top_p``."""
    ranked = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ranked.astype(jnp.float32), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # at least 1
    threshold = jnp.take_along_axis(ranked, kept - 1, axis=-1)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample(
    logits: jax.Array,
    key: jax.Array,
    temperature: float,
    top_p: float,
    top_k: int | None = None,
) -> jax.Array:
    """Int32 tokens ``[...]`` drawn from ``logits`` ``[..., V]``: the argmax when
    ``temperature`` is 0, otherwise a categorical draw from ``logits / temperature`` restricted
    to the ``top_k`` most likely tokens (``None``: no restriction), then to the top-``top_p``
    nucleus (``top_p >= 1``: no restriction). ``top_k = 1`` draws the argmax.

    Example::

        tokens = sample(logits, jax.random.PRNGKey(0), temperature=0.8, top_p=0.9, top_k=50)
    """
    if temperature < 0 or top_p <= 0:
        raise ValueError(f"need temperature >= 0 and top_p > 0, got {temperature}, {top_p}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be None or at least 1, got {top_k}")
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        scaled = top_k_mask(scaled, top_k)
    if top_p < 1:
        scaled = top_p_mask(scaled, top_p)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
