"""REINFORCE with a learned value baseline as one tempo_jax program over ``(i, b, t)``.

Each iteration acts for ``T`` steps in ``B`` environments (:func:`algorithms.rollout.rollout`),
computes a return ``G`` at every step, and takes one full-batch gradient step on

    ``-log_prob * (G - value) + value_coef * 0.5 * (value - G)^2 - entropy_coef * entropy``

averaged over ``(b, t)`` (``G`` and the advantage's ``value`` detached). As in
:mod:`algorithms.ppo`, the log-probabilities, values and entropies differentiated are the
rollout's own: there is no second forward pass. The returns are, with ``config.n_step``:

- ``0``: Monte-Carlo returns, a backward recurrence over ``t`` reset at episode ends and
  bootstrapped at the rollout's end with the critic's value of the next observation:
  ``G[t] = r[t] + gamma * (1 - done[t]) * G[t + 1]``, ``G[T] = V(next_obs[T - 1])``;
- ``n > 0``: n-step TD returns, a window read ``r[t : min(t + n, T)]`` at every step:
  ``G[t] = sum_{k < L} gamma^k r[t + k] + gamma^L V(s[t + L])`` with ``L = min(n, T - t)``,
  cut after the first ``done`` in the window (no reward or bootstrap beyond it).

:func:`build_actor_critic` is the skeleton shared with :mod:`algorithms.a2c`: everything but
the loss (parameters, rollout, the value of the last observation, gradient, optimiser step,
metrics, outputs and sink), which a caller passes as an ``objective``.

Example::

    train = make_train(config)      # config.algo == "reinforce"; compiles the whole run
    out = train()                   # {"params", "mean_return", "episodes", "loss"}, one XLA call
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax.numpy as jnp

import tempo_jax as tj

from . import envs, policy, ppo, training
from .config import RLConfig, check_one_step
from .networks import actor_critic
from .rollout import Rollout, read, rollout

Dims = tuple[tj.Symbol, tj.Symbol, tj.Symbol]
Log = Callable[[int, dict[str, float]], None]
# (rollout, V(next_obs[i, b, T - 1]) detached over (i, b), dims) -> the loss at every (i, b, t)
# and the metrics at every point (:func:`actor_critic_loss`)
Objective = Callable[[Rollout, tj.RT, Dims], tuple[tj.RT, dict[str, tj.RT]]]


def check(config: RLConfig, algo: str) -> None:
    """Raise ``ValueError`` unless ``config`` describes a run of ``algo`` (reinforce | a2c)."""
    if config.algo != algo:
        raise ValueError(f"config.algo is {config.algo!r}; this module trains {algo!r}")
    check_one_step(config, algo)


def next_values(value: tj.RT, last_value: tj.RT, dims: Dims) -> tj.RT:
    """The critic's value of the observation after each step: ``value[i, b, t + 1]``, and
    ``last_value[i, b]`` at the rollout's last step."""
    i, b, t = dims
    T = t.bound
    after = tj.placeholder((), jnp.float32, domain=(i, b, t), name="next_value")
    after[i, b, T - 1] = last_value[i, b]
    after[True] = value[i, b, t + 1]
    return after


def mc_returns(roll: Rollout, last_value: tj.RT, config: RLConfig, dims: Dims) -> tj.RT:
    """Discounted returns within the rollout, reset at episode ends, bootstrapped at its end:
    ``G[t] = r[t] + gamma * (1 - done[t]) * G[t + 1]`` and ``G[T] = last_value``."""
    i, b, t = dims
    T = t.bound
    alive = 1.0 - roll.done.astype(jnp.float32)
    ret = tj.placeholder((), jnp.float32, domain=(i, b, t), name="mc_return")
    ret[i, b, T - 1] = (roll.reward + config.gamma * alive * last_value[i, b])[i, b, T - 1]
    ret[True] = roll.reward + config.gamma * alive * ret[i, b, t + 1]
    return ret


def n_step_returns(
    roll: Rollout, value: tj.RT, last_value: tj.RT, config: RLConfig, dims: Dims
) -> tj.RT:
    """n-step TD returns (``n = config.n_step``) from a window read of the rewards.

    At ``(i, b, t)`` the window is ``r[i, b, t : end]`` with ``end = min(t + n, T)``, of
    ``L = end - t`` rows; ``k`` counts its rows. A reward counts if no episode ended earlier
    in the window; the bootstrap ``gamma^L * V(next_obs[end - 1])`` counts if none ended in
    it, which is the product of ``gamma * (1 - done)`` over the window.
    """
    i, b, t = dims
    end = tj.min(t + config.n_step, t.bound)
    rewards = roll.reward[i, b, t:end]
    dones = roll.done[i, b, t:end].astype(jnp.float32)
    k = tj.cumsum(tj.ones_like(rewards)) - 1.0
    ended_before = tj.cumsum(dones) - dones  # dones in the window before row k
    discounted = tj.where(ended_before == 0.0, config.gamma**k * rewards, 0.0).sum()
    bootstrap = (config.gamma * (1.0 - dones)).prod()
    return discounted + bootstrap * next_values(value, last_value, dims)[i, b, end - 1]


def returns(roll: Rollout, value: tj.RT, last_value: tj.RT, config: RLConfig, dims: Dims) -> tj.RT:
    """The returns ``config.n_step`` asks for (``value`` and ``last_value`` detached)."""
    if config.n_step == 0:
        return mc_returns(roll, last_value, config, dims)
    return n_step_returns(roll, value, last_value, config, dims)


def actor_critic_loss(
    log_prob: tj.RT, value: tj.RT, entropy: tj.RT, adv: tj.RT, ret: tj.RT, config: RLConfig
) -> tuple[tj.RT, dict[str, tj.RT]]:
    """``-log_prob * adv + value_coef * 0.5 * (value - ret)^2 - entropy_coef * entropy`` at
    every point (``adv`` and ``ret`` detached; REINFORCE's and A2C's loss), and its policy
    loss, value loss and entropy at every point (the first three of
    :data:`algorithms.ppo.METRICS`)."""
    policy_loss = -log_prob * adv
    value_loss = 0.5 * (value - ret) ** 2
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy
    parts = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy}
    return loss, {name: x.detach() for name, x in parts.items()}


def objective(config: RLConfig) -> Objective:
    """REINFORCE's loss at every point: returns, advantages ``G - value`` (module docstring)."""

    def loss(roll: Rollout, last_value: tj.RT, dims: Dims) -> tuple[tj.RT, dict[str, tj.RT]]:
        log_prob, value, entropy = roll.acted
        ret = returns(roll, value.detach(), last_value, config, dims)
        return actor_critic_loss(log_prob, value, entropy, ret - value.detach(), ret, config)

    return loss


def build_actor_critic(
    name: str, config: RLConfig, objective: Objective, log: Log | None = None
) -> ppo.Program:
    """Record an on-policy actor-critic run whose loss at every ``(i, b, t)`` is ``objective``:
    one full-batch step on its mean over ``(b, t)`` per iteration, with the outputs and the
    sink of :func:`algorithms.ppo.build`."""
    env = envs.make(config.env, **config.env_options)
    net = actor_critic(config, env)
    example = training.state_shape(config, env, net)
    with tj.Program(name) as p:
        dims = p.dims("i b t")
        i, b, t = dims
        _, run_key = training.split(training.key_input())
        start = training.state_input(example, b)
        params = tj.param(start.params, domain=(i,))
        acting = tj.lift(functools.partial(policy.act, net), name="policy")
        roll = rollout(env, lambda k, obs: ppo._split(acting(params, k, obs)), dims, run_key, start)
        critic = tj.lift(functools.partial(policy.value, net), name="value")
        last_value = critic(params, roll.next_obs[i, b, t.bound - 1]).detach()
        pointwise, parts = objective(roll, last_value, dims)
        total = pointwise[i, 0 : b.bound, 0 : t.bound].mean()
        metrics = {k: x[i, 0 : b.bound, 0 : t.bound].mean() for k, x in parts.items()}
        grads = tj.grad(total, params)
        new, opt_state = tj.optim.step(
            config.optimiser(), params, grads, over=i, state=start.opt_state, with_state=True
        )
        p.output("params", read(new, i.bound - 1))
        final = (read(new, i.bound - 1), read(opt_state, i.bound - 1))
        training.output_state(p, *final, roll.end, start, dims)
        ppo.output_metrics(p, roll, {"loss": total, **metrics}, dims, log)
    bounds = {i.bound: config.iterations, b.bound: config.envs, t.bound: config.steps}
    return ppo.Program(p, dims, bounds)


def build(config: RLConfig, log: Log | None = None) -> ppo.Program:
    """Record REINFORCE for ``config`` (module docstring)."""
    check(config, "reinforce")
    return build_actor_critic("reinforce", config, objective(config), log)


def make_train(
    config: RLConfig, log: Log | None = None, iterations: int | None = None
) -> training.Train:
    """The whole training run, compiled (:func:`algorithms.ppo.make_train`)."""
    return ppo.compile_run(build(config, log), config, iterations)
