"""REINFORCE and A2C as one jitted JAX computation each (purejaxrl style): the plain-JAX twins
of :mod:`algorithms.reinforce` and :mod:`algorithms.a2c`.

The whole run is one ``jax.jit``: a ``lax.scan`` over iterations; inside it the rollout of
:mod:`algorithms.baselines.ppo_jax` (a ``lax.scan`` over steps, ``jax.vmap`` over the ``B``
environments, the same keys), the returns, and one full-batch gradient step on

    ``-log_prob * adv + value_coef * 0.5 * (value - ret)^2 - entropy_coef * entropy``

with the forward pass recomputed by :func:`algorithms.policy.evaluate` on the stored
observations and actions. The returns are, on time-major ``(T, B)`` arrays:

- REINFORCE, ``n_step = 0``: :func:`mc_returns` (a reverse ``lax.scan``), ``adv = ret - value``;
- REINFORCE, ``n_step = n``: :func:`n_step_returns` (a ``fori_loop`` over the ``n`` offsets in
  the window), ``adv = ret - value``;
- A2C: GAE (:func:`algorithms.baselines.ppo_jax.gae`).

Example::

    train = make_train(RLConfig(env="CartPole-v1", algo="a2c", iterations=10))
    out = train()   # {"params", "mean_return", "loss", "episodes"}, one XLA call
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from .. import envs, policy
from ..config import RLConfig, check_one_step
from ..networks import ActorCritic, actor_critic
from .ppo_jax import Trajectory, episode_stats, gae, init, keys, make_rollout

ALGOS = ("reinforce", "a2c")


def mc_returns(
    rewards: jax.Array, dones: jax.Array, last_value: jax.Array, gamma: float
) -> jax.Array:
    """Discounted returns on time-major ``(T, B)`` arrays, reset at episode ends:
    ``G[t] = r[t] + gamma * (1 - done[t]) * G[t + 1]`` with ``G[T] = last_value`` (``(B,)``)."""
    alive = 1.0 - dones.astype(jnp.float32)

    def back(following: jax.Array, x: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        reward, a = x
        ret = reward + gamma * a * following
        return ret, ret

    _, ret = jax.lax.scan(back, last_value, (rewards, alive), reverse=True)
    return ret


def n_step_returns(
    rewards: jax.Array,
    dones: jax.Array,
    values: jax.Array,
    last_value: jax.Array,
    gamma: float,
    n: int,
) -> jax.Array:
    """n-step TD returns on time-major ``(T, B)`` arrays (``last_value``: ``(B,)``, the value of
    the observation after the last step).

    ``G[t] = sum_{k < L} gamma^k r[t + k] + gamma^L v[t + L]`` with ``L = min(n, T - t)`` and
    ``v[T] = last_value``, cut after the first done: neither later rewards nor the bootstrap
    count once an episode ended. Built as a sum over the offsets ``k`` of the window.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    steps = rewards.shape[0]
    width = min(n, steps)
    alive = 1.0 - dones.astype(jnp.float32)
    next_values = jnp.concatenate([values[1:], last_value[None]], axis=0)
    padding = jnp.zeros((width, *rewards.shape[1:]), rewards.dtype)
    r, a, v = (jnp.concatenate([x, padding]) for x in (rewards, alive, next_values))
    t = jnp.arange(steps).reshape(steps, *(1,) * (rewards.ndim - 1))

    def add(k: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        ret, weight = carry  # weight: gamma^k, or 0 once an episode ended before t + k

        def at(x: jax.Array) -> jax.Array:
            return jax.lax.dynamic_slice_in_dim(x, k, steps)

        inside = t + k < steps
        last = inside & ((k == width - 1) | (t + k == steps - 1))
        ret = ret + jnp.where(inside, weight * (at(r) + gamma * at(a) * at(v) * last), 0.0)
        return ret, weight * gamma * at(a)

    start = (jnp.zeros_like(rewards), jnp.ones_like(rewards))
    ret, _ = jax.lax.fori_loop(0, width, add, start)
    return ret


def targets(
    config: RLConfig, traj: Trajectory, last_value: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(advantages, returns)`` of one rollout for ``config.algo`` (module docstring)."""
    if config.algo == "a2c":
        return gae(traj.reward, traj.value, traj.done, last_value, config.gamma, config.gae_lambda)
    if config.n_step == 0:
        ret = mc_returns(traj.reward, traj.done, last_value, config.gamma)
    else:
        ret = n_step_returns(
            traj.reward, traj.done, traj.value, last_value, config.gamma, config.n_step
        )
    return ret - traj.value, ret


def pg_loss(
    params: Any,
    net: ActorCritic,
    traj: Trajectory,
    adv: jax.Array,
    ret: jax.Array,
    config: RLConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The actor-critic loss of a ``(T, B)`` rollout, averaged, and its metrics (``adv`` and
    ``ret`` are constants here: the forward pass is recomputed from ``traj.obs`` and
    ``traj.action``)."""
    evaluate = functools.partial(policy.evaluate, net, params)
    for _ in range(adv.ndim):
        evaluate = jax.vmap(evaluate)
    log_prob, value, entropy = evaluate(traj.obs, traj.action)
    policy_loss = -log_prob * adv
    value_loss = 0.5 * (value - ret) ** 2
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy
    metrics = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy}
    return loss.mean(), {k: v.mean() for k, v in metrics.items()}


def check(config: RLConfig) -> None:
    """Raise ``ValueError`` unless ``config`` is a REINFORCE or A2C run these twins can do."""
    if config.algo not in ALGOS:
        raise ValueError(f"config.algo must be one of {', '.join(ALGOS)}, got {config.algo!r}")
    check_one_step(config, config.algo)


def make_train(config: RLConfig) -> Callable[[], dict[str, Any]]:
    """The whole training run as one jitted function of no arguments (module docstring)."""
    check(config)
    env = envs.make(config.env, **config.env_options)
    net = actor_critic(config, env)
    tx = config.optimiser()
    ks = keys(config)
    rollout = make_rollout(config, env, net, ks)
    value = jax.vmap(functools.partial(policy.value, net), in_axes=(None, 0))
    grad_fn = jax.value_and_grad(pg_loss, has_aux=True)

    def iteration(carry: tuple, i: jax.Array) -> tuple[tuple, tuple]:
        params, opt_state, env_carry = carry
        env_carry, traj = rollout(params, env_carry, i)
        adv, ret = targets(config, traj, value(params, env_carry[0]))
        (loss, metrics), grads = grad_fn(params, net, traj, adv, ret, config)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        mean_return, episodes = episode_stats(traj)
        return (params, opt_state, env_carry), (mean_return, loss, episodes, metrics)

    def train() -> dict[str, Any]:
        params, obs, state, running = init(config, env, net, ks)
        carry = (params, tx.init(params), (obs, state, running))
        (params, _, _), (mean_return, loss, episodes, metrics) = jax.lax.scan(
            iteration, carry, jnp.arange(config.iterations)
        )
        out = {"params": params, "mean_return": mean_return, "loss": loss, "episodes": episodes}
        return {**out, **metrics}

    return jax.jit(train)
