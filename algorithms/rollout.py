"""The acting half of every algorithm: environments stepped by a policy, as recurrences.

:func:`rollout` records, inside an active ``tj.Program`` over dims ``(i, b, t)`` (iteration,
environment, step), the recurrences of one rollout per iteration:

- ``state[i, b, 0]``: the run's given start (:class:`~algorithms.training.State`: each
  environment's observation, state and running return) at ``i = 0``, then the state where
  iteration ``i - 1`` left off (episodes run on across iterations, as in CleanRL);
- ``state[i, b, t + 1] = env.step(state[i, b, t], action[i, b, t])`` (the environment resets
  an episode that ends);
- the policy's outputs at every ``(i, b, t)``, the reward and ``done``, and each finished
  episode's return;
- where each iteration leaves the environments (``Rollout.end``, over ``(i, b)``).

The whole rollout is one set of recurrences: tempo_jax vectorises ``b`` and schedules ``t``
inside ``i``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import tempo_jax as tj

from .envs import Env
from .training import State, key_at, split


def _is_rt(value: Any) -> bool:
    return isinstance(value, tj.RT)


def placeholders(example: Any, domain: tuple[tj.Symbol, ...], name: str) -> Any:
    """A pytree of placeholders shaped like ``example`` (arrays or shape structs), one per
    leaf."""
    return jax.tree_util.tree_map(
        lambda a: tj.placeholder(a.shape, a.dtype, domain=domain, name=name),
        example,
        is_leaf=_is_rt,
    )


def define(target: Any, index: Any, value: Any) -> None:
    """``leaf[index] = value leaf`` for every leaf of two pytrees of the same structure."""
    leaves = jax.tree_util.tree_leaves(target, is_leaf=_is_rt)
    values = jax.tree_util.tree_leaves(value, is_leaf=_is_rt)
    for leaf, v in zip(leaves, values, strict=True):
        leaf[index] = v


def read(tree: Any, index: Any) -> Any:
    """Every leaf of a pytree of tensors read at ``index``."""
    return jax.tree_util.tree_map(lambda x: x[index], tree, is_leaf=_is_rt)


def _last(tree: Any, i: tj.Symbol, b: tj.Symbol, T: Any) -> Any:
    """Each leaf's value at the last step, as a tensor over ``(i, b)``."""
    keep = tj.lift(lambda *leaves: leaves, name="last_step")
    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=_is_rt)
    return jax.tree_util.tree_unflatten(treedef, keep(*(x[i, b, T - 1] for x in leaves)))


@dataclasses.dataclass
class Rollout:
    """The tensors of a rollout over ``(i, b, t)``; ``acted`` is the policy's output pytree."""

    obs: tj.RT
    acted: Any
    action: tj.RT
    reward: tj.RT
    done: tj.RT
    next_obs: tj.RT
    episode_return: tj.RT  # at a step that ends an episode, that episode's return
    end: tuple[Any, Any, Any]  # (obs, env state, running return) after each iteration, (i, b)


def rollout(
    env: Env,
    act: Callable[[jax.Array, jax.Array], tuple[jax.Array, Any]],
    dims: tuple[tj.Symbol, tj.Symbol, tj.Symbol],
    key: Any,  # a key tensor of the program, or an array
    start: State,
) -> Rollout:
    """Record the rollout recurrences (module docstring) from ``start`` (the program's state
    inputs: ``obs``, ``env_state``, ``running`` over ``b``; ``iteration`` numbers the first
    iteration for the keys).

    ``act(key, obs) -> (action, outputs)`` is the policy at one point, already closed over
    its parameters' tensors (call it through ``tj.lift``-ed functions); the action is
    detached before it reaches the environment.
    """
    i, b, t = dims
    T = t.bound
    _, act_key, step_key = split(key, 3)  # the first is the resets' (training.initial_state)
    state = placeholders(start.env_state, (i, b, t), "state")
    obs = tj.placeholder(start.obs.shape, start.obs.dtype, domain=(i, b, t), name="obs")
    action, acted = act(key_at(act_key, dims, start.iteration), obs)
    step = tj.lift(env.step, name="env_step")
    next_obs, next_state, reward, done = step(
        key_at(step_key, dims, start.iteration), state, action.detach()
    )
    # where iteration i leaves off, as values of iteration i: the steps' buffers are then only
    # read within their own iteration, and the compiled program keeps one iteration of them
    final_obs, final_state = _last(next_obs, i, b, T), _last(next_state, i, b, T)
    define(state, (0, b, 0), read(start.env_state, b))
    obs[0, b, 0] = start.obs[b]
    define(state, (i + 1, b, 0), final_state)
    obs[i + 1, b, 0] = final_obs
    define(state, (i, b, t + 1), next_state)
    obs[i, b, t + 1] = next_obs
    running = tj.placeholder((), jnp.float32, domain=(i, b, t), name="running")
    ended = running + reward  # the return so far, this step included
    after = tj.where(done, 0.0, ended)
    final_running = _last(after, i, b, T)
    running[0, b, 0] = start.running[b]
    running[i + 1, b, 0] = final_running
    running[i, b, t + 1] = after
    end = (final_obs, final_state, final_running)
    return Rollout(obs, acted, action, reward, done, next_obs, ended, end)
