"""PPO as one jitted JAX computation (purejaxrl style): the tempo_jax PPO's plain-JAX twin.

The whole run is one ``jax.jit``: a ``lax.scan`` over iterations; inside it a ``lax.scan``
over steps (the rollout, ``jax.vmap`` over the ``B`` environments), GAE by a reverse
``lax.scan``, then ``epochs`` x ``minibatches`` clipped-PPO updates. The loss recomputes the
forward pass with :func:`algorithms.policy.evaluate` on the stored observations and actions
(at the first epoch the ratio is exactly 1).

Random keys are those of :mod:`algorithms.ppo`: ``init, run = split(PRNGKey(seed))``,
``reset, act, step = split(run, 3)``; the reset key of env ``b`` is ``fold_in(reset, b)``
and the act / step keys at ``(i, b, t)`` are ``fold_in(fold_in(fold_in(key, i), b), t)``.
So the first iteration's rollout is the tempo_jax program's own.

Example::

    train = make_train(RLConfig(env="CartPole-v1", iterations=10))
    out = train()   # {"params", "mean_return", "loss", "episodes"}, one XLA call
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .. import envs, policy
from ..config import RLConfig
from ..networks import ActorCritic, actor_critic


class Keys(NamedTuple):
    """The base keys of a run; ``shuffle`` (minibatch permutations) is not in tempo_jax's PPO."""

    init: jax.Array
    reset: jax.Array
    act: jax.Array
    step: jax.Array
    shuffle: jax.Array


class Trajectory(NamedTuple):
    """One iteration's rollout, time-major ``(T, B, ...)``."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    done: jax.Array
    episode_return: jax.Array  # the return so far, this step included (an episode's at done)


def keys(config: RLConfig) -> Keys:
    """The run's base keys, derived as in :func:`algorithms.ppo.build` and its rollout."""
    init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
    reset_key, act_key, step_key = jax.random.split(run_key, 3)
    return Keys(init_key, reset_key, act_key, step_key, jax.random.fold_in(run_key, 3))


def point_keys(key: jax.Array, i: jax.Array, t: jax.Array, count: int) -> jax.Array:
    """The keys at ``(i, b, t)`` for the ``count`` envs ``b``: ``key`` folded with ``i, b, t``."""
    at_i = jax.random.fold_in(key, i)
    return jax.vmap(lambda b: jax.random.fold_in(jax.random.fold_in(at_i, b), t))(jnp.arange(count))


def init(config: RLConfig, env: envs.Env, net: ActorCritic, ks: Keys) -> tuple:
    """``(params, first obs (B, ...), env states, running returns (B,))`` before iteration 0."""
    params = net.init(ks.init, env.reset(jax.random.PRNGKey(0))[0])
    reset_keys = jax.vmap(lambda b: jax.random.fold_in(ks.reset, b))(jnp.arange(config.envs))
    obs, state = jax.vmap(env.reset)(reset_keys)
    return params, obs, state, jnp.zeros((config.envs,), jnp.float32)


def gae(
    rewards: jax.Array,
    values: jax.Array,
    dones: jax.Array,
    last_value: jax.Array,
    gamma: float,
    lam: float,
) -> tuple[jax.Array, jax.Array]:
    """Advantages and returns by GAE on time-major ``(T, B)`` arrays (``last_value``: ``(B,)``,
    the value of the observation after the last step).

    ``adv[t] = delta[t] + gamma * lam * (1 - done[t]) * adv[t + 1]`` with
    ``delta[t] = r[t] + gamma * (1 - done[t]) * v[t + 1] - v[t]`` and ``v[T] = last_value``;
    the returns are ``adv + values``.
    """
    alive = 1.0 - dones.astype(jnp.float32)
    next_values = jnp.concatenate([values[1:], last_value[None]], axis=0)
    deltas = rewards + gamma * alive * next_values - values

    def back(adv: jax.Array, x: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        delta, a = x
        adv = delta + gamma * lam * a * adv
        return adv, adv

    _, adv = jax.lax.scan(back, jnp.zeros_like(last_value), (deltas, alive), reverse=True)
    return adv, adv + values


def ppo_loss(
    params: Any, net: ActorCritic, batch: dict[str, jax.Array], config: RLConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The clipped PPO loss of a batch, and its metrics: ``{"policy_loss", "value_loss",
    "entropy", "approx_kl", "clip_fraction"}`` (CleanRL's KL estimate and clip fraction).

    ``batch`` holds ``obs``, ``actions``, ``log_probs`` and ``values`` (the acting policy's),
    ``advantages`` (unnormalised: they are normalised here over the whole batch) and
    ``returns``, all with the same leading dims (any number, e.g. ``(T, B)`` or one flat
    minibatch axis). With ``config.clip_value_loss`` the value loss is CleanRL's clipped one.
    """
    adv = batch["advantages"]
    evaluate = functools.partial(policy.evaluate, net, params)
    for _ in range(adv.ndim):
        evaluate = jax.vmap(evaluate)
    log_prob, value, entropy = evaluate(batch["obs"], batch["actions"])
    norm = (adv - adv.mean()) / (adv.std() + 1e-8)
    ratio = jnp.exp(log_prob - batch["log_probs"])
    clipped = jnp.clip(ratio, 1.0 - config.clip, 1.0 + config.clip)
    policy_loss = jnp.maximum(-norm * ratio, -norm * clipped)
    value_loss = 0.5 * (value - batch["returns"]) ** 2
    if config.clip_value_loss:  # CleanRL's clip_vloss
        near = batch["values"] + jnp.clip(value - batch["values"], -config.clip, config.clip)
        value_loss = jnp.maximum(value_loss, 0.5 * (near - batch["returns"]) ** 2)
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy
    log_ratio = log_prob - batch["log_probs"]
    aux = {
        "policy_loss": policy_loss.mean(),
        "value_loss": value_loss.mean(),
        "entropy": entropy.mean(),
        "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
        "clip_fraction": (jnp.abs(ratio - 1.0) > config.clip).astype(jnp.float32).mean(),
    }
    return loss.mean(), aux


def learn(
    params: Any,
    opt_state: Any,
    traj: Trajectory,
    last_obs: jax.Array,
    i: jax.Array,
    net: ActorCritic,
    tx: optax.GradientTransformation,
    config: RLConfig,
    shuffle_key: jax.Array,
) -> tuple[Any, Any, jax.Array, dict[str, jax.Array]]:
    """GAE, then ``epochs`` passes of ``minibatches`` updates: ``(params, opt_state, loss,
    metrics)``, the loss and :func:`ppo_loss`'s metrics averaged over all updates (with one
    update, at the acting params)."""
    last_value = jax.vmap(functools.partial(policy.value, net, params))(last_obs)
    adv, ret = gae(traj.reward, traj.value, traj.done, last_value, config.gamma, config.gae_lambda)
    batch = {
        "obs": traj.obs,
        "actions": traj.action,
        "log_probs": traj.log_prob,
        "values": traj.value,
        "advantages": adv,
        "returns": ret,
    }
    grad_fn = jax.value_and_grad(ppo_loss, has_aux=True)

    def update(carry: tuple, minibatch: dict) -> tuple[tuple, tuple]:
        params, opt_state = carry
        (loss, aux), grads = grad_fn(params, net, minibatch, config)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (loss, aux)

    if config.epochs == 1 and config.minibatches == 1:  # the whole (T, B) batch, unshuffled
        (params, opt_state), (loss, aux) = update((params, opt_state), batch)
        return params, opt_state, loss, aux
    (params, opt_state), (losses, aux) = _shuffled_updates(
        update, (params, opt_state), batch, jax.random.fold_in(shuffle_key, i), config
    )
    return params, opt_state, losses.mean(), {k: v.mean() for k, v in aux.items()}


def _shuffled_updates(
    update: Callable, carry: tuple, batch: dict, key: jax.Array, config: RLConfig
) -> tuple[tuple, jax.Array]:
    """``epochs`` passes over ``batch`` flattened to ``B * T`` rows, each reshuffled (key
    ``fold_in(key, epoch)``) and cut into ``minibatches`` updates; the losses ``(E, M)``."""
    size = config.envs * config.steps
    if size % config.minibatches:
        raise ValueError(
            f"envs * steps = {size} is not divisible by minibatches = {config.minibatches}"
        )
    flat = jax.tree_util.tree_map(lambda x: x.reshape(size, *x.shape[2:]), batch)

    def epoch(carry: tuple, e: jax.Array) -> tuple[tuple, jax.Array]:
        order = jax.random.permutation(jax.random.fold_in(key, e), size)
        minibatches = jax.tree_util.tree_map(
            lambda x: x[order].reshape(config.minibatches, -1, *x.shape[1:]), flat
        )
        return jax.lax.scan(update, carry, minibatches)

    return jax.lax.scan(epoch, carry, jnp.arange(config.epochs))


def episode_stats(traj: Trajectory) -> tuple[jax.Array, jax.Array]:
    """``(mean return of the episodes that ended, their number)`` in one rollout."""
    ended = traj.done.astype(jnp.float32)
    returns = jnp.where(traj.done, traj.episode_return, 0.0)
    return returns.sum() / jnp.maximum(ended.sum(), 1.0), ended.sum()


Rollout = Callable[[Any, tuple, jax.Array], tuple[tuple, Trajectory]]


def make_rollout(config: RLConfig, env: envs.Env, net: ActorCritic, ks: Keys) -> Rollout:
    """``rollout(params, (obs, env states, running returns), i) -> (carry, Trajectory)``: one
    iteration's ``T`` steps in the ``B`` environments (every baseline's rollout)."""
    act = jax.vmap(functools.partial(policy.act, net), in_axes=(None, 0, 0))
    env_step = jax.vmap(env.step)

    def rollout(params: Any, carry: tuple, i: jax.Array) -> tuple[tuple, Trajectory]:
        def step(carry: tuple, t: jax.Array) -> tuple[tuple, Trajectory]:
            obs, state, running = carry
            action, log_prob, value, _ = act(params, point_keys(ks.act, i, t, config.envs), obs)
            step_keys = point_keys(ks.step, i, t, config.envs)
            next_obs, state, reward, done = env_step(step_keys, state, action)
            ended = running + reward
            traj = Trajectory(obs, action, log_prob, value, reward, done, ended)
            return (next_obs, state, jnp.where(done, 0.0, ended)), traj

        return jax.lax.scan(step, carry, jnp.arange(config.steps))

    return rollout


def make_train(config: RLConfig) -> Callable[[], dict[str, Any]]:
    """The whole training run as one jitted function of no arguments (module docstring)."""
    env = envs.make(config.env, **config.env_options)
    net = actor_critic(config, env)
    tx = config.optimiser()
    ks = keys(config)
    rollout = make_rollout(config, env, net, ks)

    def iteration(carry: tuple, i: jax.Array) -> tuple[tuple, tuple]:
        params, opt_state, env_carry = carry
        env_carry, traj = rollout(params, env_carry, i)
        params, opt_state, loss, metrics = learn(
            params, opt_state, traj, env_carry[0], i, net, tx, config, ks.shuffle
        )
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
