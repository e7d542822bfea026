"""A2C as one tempo_jax program over ``(i, b, t)``: rollout, GAE, loss, backward, optimiser.

Each iteration acts for ``T`` steps in ``B`` environments, computes advantages and returns by
GAE (:func:`algorithms.ppo.gae`, a backward recurrence over ``t``), and takes one full-batch
gradient step on

    ``-log_prob * adv + value_coef * 0.5 * (value - ret)^2 - entropy_coef * entropy``

averaged over ``(b, t)`` (``adv`` and ``ret`` detached, the advantages not normalised). The
program is :func:`algorithms.reinforce.build_actor_critic` with this loss: the
log-probabilities, values and entropies differentiated are the rollout's own.

Example::

    train = make_train(config)      # config.algo == "a2c"; compiles the whole run
    out = train()                   # {"params", "mean_return", "episodes", "loss"}, one XLA call
"""

from __future__ import annotations

import tempo_jax as tj

from . import ppo, reinforce
from .config import RLConfig
from .reinforce import Dims, Log, Objective
from .rollout import Rollout
from .training import Train


def objective(config: RLConfig) -> Objective:
    """A2C's loss at every point, from GAE's advantages and returns (module docstring)."""

    def loss(roll: Rollout, last_value: tj.RT, dims: Dims) -> tuple[tj.RT, dict[str, tj.RT]]:
        log_prob, value, entropy = roll.acted
        adv, ret = ppo.gae(roll, value.detach(), last_value, config, dims)
        return reinforce.actor_critic_loss(log_prob, value, entropy, adv, ret, config)

    return loss


def build(config: RLConfig, log: Log | None = None) -> ppo.Program:
    """Record A2C for ``config`` (module docstring)."""
    reinforce.check(config, "a2c")
    return reinforce.build_actor_critic("a2c", config, objective(config), log)


def make_train(config: RLConfig, log: Log | None = None, iterations: int | None = None) -> Train:
    """The whole training run, compiled (:func:`algorithms.ppo.make_train`)."""
    return ppo.compile_run(build(config, log), config, iterations)
