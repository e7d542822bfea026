"""Evaluating trained parameters with the deterministic policy: the likeliest action of a
discrete policy, the mean of a continuous one.

:func:`evaluate` runs ``episodes`` environments side by side (``jax.vmap``), each for one
episode from its own reset, in one jitted ``lax.while_loop`` that ends when every episode
has (or at ``max_steps``); an episode's return counts the rewards up to and including the
step that ends it. The environment's own randomness (its step keys) comes from ``key``.

    returns = evaluate(config, out["params"], jax.random.PRNGKey(0), episodes=10)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import envs
from .config import RLConfig
from .envs import Env
from .networks import ActorCritic, actor_critic


def greedy(net: ActorCritic, env: Env, params: Any, obs: jax.Array) -> jax.Array:
    """The deterministic policy's action for one observation."""
    out = net.apply(params, obs)
    if net.actions:
        return jnp.argmax(out[0])
    return jnp.clip(out[0], env.action_low, env.action_high)


def evaluate(
    config: RLConfig,
    params: Any,
    key: jax.Array,
    episodes: int = 10,
    max_steps: int = 10_000,
) -> np.ndarray:
    """The returns of ``episodes`` episodes of the deterministic policy of ``params`` (module
    docstring); an episode still running at ``max_steps`` counts what it has."""
    return evaluator(config, episodes, max_steps)(params, key)


def evaluator(
    config: RLConfig, episodes: int = 10, max_steps: int = 10_000
) -> Callable[[Any, jax.Array], np.ndarray]:
    """:func:`evaluate` as a function of ``(params, key)``, compiled once for any number of
    parameter sets (several trained seeds)."""
    env = envs.make(config.env, **config.env_options)
    run = _run(env, actor_critic(config, env), episodes, max_steps)
    return lambda params, key: np.asarray(run(params, key))


def _run(env: Env, net: ActorCritic, episodes: int, max_steps: int) -> Any:
    act = jax.vmap(functools.partial(greedy, net, env), in_axes=(None, 0))
    step = jax.vmap(env.step)

    @jax.jit
    def run(params: Any, key: jax.Array) -> jax.Array:
        reset_key, step_key = jax.random.split(key)
        obs, state = jax.vmap(env.reset)(jax.random.split(reset_key, episodes))

        def running(carry: tuple) -> jax.Array:
            t, _, _, _, ended = carry
            return (t < max_steps) & ~jnp.all(ended)

        def advance(carry: tuple) -> tuple:
            t, obs, state, total, ended = carry
            keys = jax.random.split(jax.random.fold_in(step_key, t), episodes)
            obs, state, reward, done = step(keys, state, act(params, obs))
            total = total + jnp.where(ended, 0.0, reward)
            return t + 1, obs, state, total, ended | done

        zeros = jnp.zeros((episodes,), jnp.float32)
        start = (jnp.zeros((), jnp.int32), obs, state, zeros, jnp.zeros((episodes,), bool))
        return jax.lax.while_loop(running, advance, start)[3]

    return run
