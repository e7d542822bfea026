"""PPO as one tempo_jax program over ``(i, b, t)``: rollout, GAE, loss, backward, optimiser.

With ``epochs = minibatches = 1`` the loss is computed from the rollout's own forward pass:
the log-probabilities and values the policy produced while acting are the ones
differentiated (their old values are the same tensors, detached), so there is no second
forward pass. Advantages come from GAE, a backward recurrence over ``t``:
``adv[t] = delta[t] + gamma * lambda * (1 - done[t]) * adv[t+1]``.

Example::

    train = make_train(config)      # compiles the whole training run
    out = train()                   # {"params", "mean_return", "loss", ...}, one XLA call
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import tempo_jax as tj

from . import envs, policy
from .config import RLConfig
from .networks import actor_critic
from .rollout import Rollout, rollout


@dataclasses.dataclass
class Program:
    """The recorded program and the handles a caller may read or log."""

    program: tj.Program
    dims: tuple[tj.Symbol, tj.Symbol, tj.Symbol]
    bounds: dict[tj.Symbol, int]


def gae(
    roll: Rollout, value: tj.RT, last_value: tj.RT, config: RLConfig, dims: tuple
) -> tuple[tj.RT, tj.RT]:
    """Advantages and returns by GAE (``value`` and ``last_value`` already detached)."""
    i, b, t = dims
    T = t.bound
    next_value = tj.placeholder((), jnp.float32, domain=(i, b, t), name="next_value")
    next_value[i, b, T - 1] = last_value[i, b]
    next_value[True] = value[i, b, t + 1]
    alive = 1.0 - roll.done.astype(jnp.float32)
    delta = roll.reward + config.gamma * alive * next_value - value
    adv = tj.placeholder((), jnp.float32, domain=(i, b, t), name="adv")
    adv[i, b, T - 1] = delta[i, b, T - 1]
    adv[True] = delta + config.gamma * config.gae_lambda * alive * adv[i, b, t + 1]
    return adv, adv + value


def ppo_loss(
    log_prob: tj.RT,
    value: tj.RT,
    entropy: tj.RT,
    adv: tj.RT,
    ret: tj.RT,
    config: RLConfig,
    dims: tuple,
) -> tuple[tj.RT, tj.RT]:
    """The clipped PPO objective at every ``(i, b, t)`` and its mean per iteration."""
    i, b, t = dims
    rows = adv[i, 0 : b.bound, 0 : t.bound]
    norm = (adv - rows.mean()) / (rows.std() + 1e-8)
    ratio = tj.exp(log_prob - log_prob.detach())
    clipped = tj.clip(ratio, 1.0 - config.clip, 1.0 + config.clip)
    policy_loss = tj.maximum(-norm * ratio, -norm * clipped)
    value_loss = 0.5 * (value - ret) ** 2
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy
    return loss, loss[i, 0 : b.bound, 0 : t.bound].mean()


def build(config: RLConfig, log: Callable[[int, dict[str, float]], None] | None = None) -> Program:
    """Record PPO (``epochs = minibatches = 1``) for ``config`` (module docstring)."""
    if config.epochs != 1 or config.minibatches != 1:
        raise NotImplementedError("PPO with several epochs or minibatches is not built yet")
    env = envs.make(config.env, **config.env_options)
    net = actor_critic(config, env)
    key = jax.random.PRNGKey(config.seed)
    init_key, run_key = jax.random.split(key)
    obs0, _ = env.reset(jax.random.PRNGKey(0))
    with tj.Program("ppo") as p:
        dims = p.dims("i b t")
        i, b, t = dims
        params = tj.param(net.init(init_key, obs0), domain=(i,))
        acting = tj.lift(functools.partial(policy.act, net), name="policy")
        roll = rollout(env, lambda k, obs: _split(acting(params, k, obs)), dims, run_key)
        log_prob, value, entropy = roll.acted
        critic = tj.lift(functools.partial(policy.value, net), name="value")
        last_value = critic(params, roll.next_obs[i, b, t.bound - 1]).detach()
        adv, ret = gae(roll, value.detach(), last_value, config, dims)
        _, total = ppo_loss(log_prob, value, entropy, adv, ret, config, dims)
        grads = tj.grad(total, params)
        new = tj.optim.step(config.optimiser(), params, grads, over=i)
        ended = roll.done.astype(jnp.float32)[i, 0 : b.bound, 0 : t.bound]
        returns = tj.where(roll.done, roll.episode_return, 0.0)[i, 0 : b.bound, 0 : t.bound]
        mean_return = returns.sum() / tj.maximum(ended.sum(), 1.0)
        I = i.bound
        p.output("params", jax.tree_util.tree_map(lambda x: x[I - 1], new, is_leaf=_is_rt))
        p.output("mean_return", mean_return[0:I])
        p.output("episodes", ended.sum()[0:I])
        p.output("loss", total[0:I])
        if log is not None:
            stats = tj.stack([mean_return, total])
            tj.sink(
                stats, lambda v, at: log(at["i"], {"mean_return": float(v[0]), "loss": float(v[1])})
            )
    bounds = {i.bound: config.iterations, b.bound: config.envs, t.bound: config.steps}
    return Program(p, dims, bounds)


def _split(out: Any) -> tuple[tj.RT, tuple[tj.RT, tj.RT, tj.RT]]:
    action, log_prob, value, entropy = out
    return action, (log_prob, value, entropy)


def _is_rt(value: Any) -> bool:
    return isinstance(value, tj.RT)


def make_train(
    config: RLConfig, log: Callable[[int, dict[str, float]], None] | None = None
) -> Callable[[], dict[str, Any]]:
    """The whole training run, compiled: a function of no arguments returning its outputs."""
    built = build(config, log)
    return built.program.compile(built.bounds)
