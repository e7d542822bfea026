"""Flax actor-critic networks shared by the tempo_jax algorithms and the JAX baselines."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .config import RLConfig
from .envs import Env


class ActorCritic(nn.Module):
    """An MLP torso (or a small CNN for image observations) with a policy and a value head.

    Returns ``(logits, value)`` for discrete actions (``actions > 0``), or ``(mean, log_std,
    value)`` for a continuous action vector of ``action_dim``.
    """

    actions: int = 0
    action_dim: int = 0
    width: int = 64
    layers: int = 2
    cnn: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, ...]:
        x = obs
        if self.cnn:  # one (C, H, W) observation
            x = jnp.moveaxis(x, -3, -1)[None]
            x = nn.relu(nn.Conv(16, (3, 3), padding="SAME")(x))
            x = nn.relu(nn.Conv(16, (3, 3), padding="SAME")(x))
        x = x.reshape(-1)
        actor, critic = x, x
        for _ in range(self.layers):
            actor = nn.tanh(nn.Dense(self.width, kernel_init=_ortho(np.sqrt(2)))(actor))
            critic = nn.tanh(nn.Dense(self.width, kernel_init=_ortho(np.sqrt(2)))(critic))
        value = nn.Dense(1, kernel_init=_ortho(1.0))(critic)[0]
        if self.actions:
            logits = nn.Dense(self.actions, kernel_init=_ortho(0.01))(actor)
            return logits, value
        mean = nn.Dense(self.action_dim, kernel_init=_ortho(0.01))(actor)
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        return mean, log_std, value


def _ortho(scale: float) -> nn.initializers.Initializer:
    return nn.initializers.orthogonal(scale)


def actor_critic(config: RLConfig, env: Env) -> ActorCritic:
    """The actor-critic ``config`` asks for, with ``env``'s action heads (used by every
    algorithm and baseline)."""
    return ActorCritic(
        actions=env.actions,
        action_dim=env.action_dim,
        width=config.width,
        layers=config.layers,
        cnn=config.cnn,
    )
