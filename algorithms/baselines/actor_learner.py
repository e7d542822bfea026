"""PPO in the actor-learner structure (CleanRL-like): Python loops drive jitted pieces.

Per iteration, a Python loop over steps calls a jitted ``act`` (``jax.vmap`` over the ``B``
environments) and a jitted ``env_step``, appending device arrays to Python lists; the
stacked rollout then goes to one jitted learner update that recomputes the forward pass
(:func:`algorithms.policy.evaluate`) and applies the optax update. Hyperparameters, keys and
the learner are those of :mod:`algorithms.baselines.ppo_jax`, so both baselines compute the
same run; only the program structure differs (``I * (2T + 1)`` dispatches instead of one).

Example::

    train = make_train(RLConfig(env="CartPole-v1", iterations=10))
    out = train()   # {"params", "mean_return", "loss", "episodes"}
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .. import envs, policy
from ..config import RLConfig
from ..networks import actor_critic
from .ppo_jax import Trajectory, episode_stats, init, keys, learn, point_keys


def make_train(config: RLConfig) -> Callable[[], dict[str, Any]]:
    """The training run as a Python loop over iterations and steps (module docstring)."""
    env = envs.make(config.env, **config.env_options)
    net = actor_critic(config, env)
    tx = config.optimiser()
    ks = keys(config)
    policy_act = jax.vmap(functools.partial(policy.act, net), in_axes=(None, 0, 0))

    @jax.jit
    def act(params: Any, i: jax.Array, t: jax.Array, obs: jax.Array) -> tuple:
        action, log_prob, value, _ = policy_act(params, point_keys(ks.act, i, t, config.envs), obs)
        return action, log_prob, value

    @jax.jit
    def env_step(i: jax.Array, t: jax.Array, state: Any, action: jax.Array, running: jax.Array):
        step_keys = point_keys(ks.step, i, t, config.envs)
        obs, state, reward, done = jax.vmap(env.step)(step_keys, state, action)
        ended = running + reward  # the return so far, this step included
        return obs, state, reward, done, ended, jnp.where(done, 0.0, ended)

    @jax.jit
    def learner(params: Any, opt_state: Any, traj: Trajectory, last_obs: jax.Array, i: jax.Array):
        params, opt_state, loss, _ = learn(
            params, opt_state, traj, last_obs, i, net, tx, config, ks.shuffle
        )
        return params, opt_state, (*episode_stats(traj), loss)

    start = jax.jit(lambda: init(config, env, net, ks))  # compiled once, not per run
    init_opt = jax.jit(tx.init)

    def train() -> dict[str, Any]:
        params, obs, state, running = start()
        opt_state = init_opt(params)
        stats = []
        for i in range(config.iterations):
            steps = []
            for t in range(config.steps):
                action, log_prob, value = act(params, i, t, obs)
                next_obs, state, reward, done, ended, running = env_step(
                    i, t, state, action, running
                )
                steps.append(Trajectory(obs, action, log_prob, value, reward, done, ended))
                obs = next_obs
            traj = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *steps)
            params, opt_state, stat = learner(params, opt_state, traj, obs, i)
            stats.append(stat)
        mean_return, episodes, loss = (jnp.stack(s) for s in zip(*stats, strict=True))
        return {"params": params, "mean_return": mean_return, "loss": loss, "episodes": episodes}

    return train
