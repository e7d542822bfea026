"""The policy at one point: sample an action and report its log-probability, value, entropy.

Shared by the tempo_jax algorithms (lifted point-wise) and the JAX baselines (``vmap``-ed).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .networks import ActorCritic


def act(net: ActorCritic, params: Any, key: jax.Array, obs: jax.Array) -> tuple:
    """``(action, log_prob, value, entropy)`` of one observation."""
    out = net.apply(params, obs)
    if net.actions:
        action = jax.random.categorical(key, out[0])
    else:
        mean, log_std = out[0], out[1]
        noise = jax.random.normal(key, mean.shape)
        action = jax.lax.stop_gradient(mean + jnp.exp(log_std) * noise)  # a sample: no gradient
    return action, _log_prob(net, out, action), out[-1], _entropy(net, out)


def evaluate(net: ActorCritic, params: Any, obs: jax.Array, action: jax.Array) -> tuple:
    """``(log_prob, value, entropy)`` of a given action under the policy."""
    out = net.apply(params, obs)
    return _log_prob(net, out, action), out[-1], _entropy(net, out)


def value(net: ActorCritic, params: Any, obs: jax.Array) -> jax.Array:
    """The critic's value of one observation."""
    return net.apply(params, obs)[-1]


def _log_prob(net: ActorCritic, out: tuple, action: jax.Array) -> jax.Array:
    if net.actions:
        return jax.nn.log_softmax(out[0])[action]
    mean, log_std = out[0], out[1]
    z = (action - mean) / jnp.exp(log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi))


def _entropy(net: ActorCritic, out: tuple) -> jax.Array:
    if net.actions:
        logp = jax.nn.log_softmax(out[0])
        return -jnp.sum(jnp.exp(logp) * logp)
    return jnp.sum(out[1] + 0.5 * jnp.log(2 * jnp.pi * jnp.e))
