"""Environments as pure JAX functions, ready to lift into tempo_jax programs.

An :class:`Env` is ``reset(key) -> (obs, state)`` and ``step(key, state, action) -> (obs,
state, reward, done)``; ``step`` resets an episode that ends (the observation returned is the
new episode's first one), so a rollout is one recurrence ``state[t+1] = step(state[t])``.
Environments come from a registry, one entry each: :data:`REGISTRY` maps a name to a
function building the :class:`Env` (gymnax environments, and :func:`trivial`).

Example::

    env = make("CartPole-v1")
    obs, state = env.reset(jax.random.PRNGKey(0))
    obs, state, reward, done = env.step(key, state, action)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Env:
    """A JAX environment: ``obs_shape``, and ``actions`` (a count, discrete) or
    ``action_dim`` (a continuous action vector)."""

    name: str
    reset: Callable[[jax.Array], tuple[jax.Array, Any]]
    step: Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any, jax.Array, jax.Array]]
    obs_shape: tuple[int, ...]
    actions: int = 0
    action_dim: int = 0
    action_low: float = -1.0
    action_high: float = 1.0

    @property
    def discrete(self) -> bool:
        return self.actions > 0


def gymnax_env(name: str, channels_last: bool = False) -> Env:
    """A gymnax environment, its default parameters bound; ``done`` is terminated or
    truncated (gymnax resets the episode itself). Image observations given ``(H, W, C)``
    (``channels_last``, MinAtar) come out ``(C, H, W)``, the layout the CNN takes."""
    import gymnax

    env, params = gymnax.make(name)

    def observe(obs: jax.Array) -> jax.Array:
        obs = obs.astype(jnp.float32)
        return jnp.moveaxis(obs, -1, 0) if channels_last else obs

    def reset(key: jax.Array) -> tuple[jax.Array, Any]:
        obs, state = env.reset(key, params)
        return observe(obs), state

    def step(key: jax.Array, state: Any, action: jax.Array) -> tuple:
        obs, state, reward, terminated, truncated, _ = env.step(key, state, action, params)
        done = jnp.logical_or(terminated, truncated)
        return observe(obs), state, reward.astype(jnp.float32), done

    space = env.action_space(params)
    shape = tuple(env.observation_space(params).shape)
    if channels_last:
        shape = (shape[-1], *shape[:-1])
    if hasattr(space, "n"):
        return Env(name, reset, step, shape, actions=int(space.n))
    low, high = float(jnp.min(space.low)), float(jnp.max(space.high))
    dim = int(space.shape[0]) if space.shape else 1

    def step_continuous(key: jax.Array, state: Any, action: jax.Array) -> tuple:
        return step(key, state, action.reshape(space.shape))

    return Env(
        name, reset, step_continuous, shape, action_dim=dim, action_low=low, action_high=high
    )


@dataclasses.dataclass(frozen=True)
class TrivialState:
    t: jax.Array


jax.tree_util.register_dataclass(TrivialState, data_fields=["t"], meta_fields=[])


def trivial(obs_shape: tuple[int, ...] = (3, 4, 4), episode: int = 100, action_dim: int = 1) -> Env:
    """A scale-test environment: constant observations of ``obs_shape``, a continuous action,
    reward ``-|action|^2`` per step, episodes of ``episode`` steps."""

    def reset(key: jax.Array) -> tuple[jax.Array, TrivialState]:
        del key
        return jnp.ones(obs_shape, jnp.float32), TrivialState(jnp.zeros((), jnp.int32))

    def step(key: jax.Array, state: TrivialState, action: jax.Array) -> tuple:
        del key
        t = state.t + 1
        done = t >= episode
        reward = -jnp.sum(jnp.square(action)).astype(jnp.float32)
        return jnp.ones(obs_shape, jnp.float32), TrivialState(jnp.where(done, 0, t)), reward, done

    return Env(f"trivial{obs_shape}", reset, step, tuple(obs_shape), action_dim=action_dim)


REGISTRY: dict[str, Callable[..., Env]] = {
    "CartPole-v1": lambda: gymnax_env("CartPole-v1"),
    "Acrobot-v1": lambda: gymnax_env("Acrobot-v1"),
    "Pendulum-v1": lambda: gymnax_env("Pendulum-v1"),
    "Breakout-MinAtar": lambda: gymnax_env("Breakout-MinAtar", channels_last=True),
    "trivial": trivial,
}


def make(name: str, **options: Any) -> Env:
    """The environment registered as ``name`` (options go to its builder, e.g. the trivial
    env's ``obs_shape``)."""
    if name not in REGISTRY:
        raise KeyError(f"no environment {name!r}; registered: {', '.join(REGISTRY)}")
    return REGISTRY[name](**options)
