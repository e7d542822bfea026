"""Checkpoints of a training run: its :class:`~algorithms.training.State`, saved with orbax.

A run's checkpoints live in one directory, one step per saved state, numbered by the
iterations done (``checkpoints/100``, ``checkpoints/200``, ...); the last ``keep`` are kept.
Restoring needs the state's structure, which :func:`algorithms.training.initial_state` gives
(``jax.eval_shape`` of it: nothing is computed).

    save(run / "checkpoints", out["state"])
    state = restore(run / "checkpoints", like)      # the latest
    more = train(key, state)                        # continue the run
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax

from .training import State, iterations_done


def _manager(directory: str | pathlib.Path, keep: int = 2) -> Any:
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save(directory: str | pathlib.Path, state: State, keep: int = 2) -> int:
    """Save ``state`` as the step of its iteration count (replacing a step of that number);
    keep the last ``keep`` steps. Returns the step. (The states of seeds run side by side
    have a leading seed axis: their count is the same.)"""
    import orbax.checkpoint as ocp

    step = iterations_done(state)
    with _manager(directory, keep) as manager:
        if step in manager.all_steps():
            manager.delete(step)
        manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
    return step


def latest(directory: str | pathlib.Path) -> int | None:
    """The newest step saved in ``directory`` (None: no checkpoint)."""
    if not pathlib.Path(directory).is_dir():
        return None
    with _manager(directory) as manager:
        return manager.latest_step()


def restore(directory: str | pathlib.Path, like: State, step: int | None = None) -> State:
    """The state saved at ``step`` (default: the latest) in ``directory``, with the structure,
    shapes and dtypes of ``like`` (arrays or ``jax.ShapeDtypeStruct``s), and its shardings
    where it has them (under ``jax.distributed``: arrays over every process's devices; else
    this process's first device). A state saved by any number of processes restores."""
    import orbax.checkpoint as ocp

    with _manager(directory) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # the saver's may differ

        def target(x: Any) -> jax.ShapeDtypeStruct:
            sharding = getattr(x, "sharding", None) or here
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

        target = jax.tree_util.tree_map(target, like)
        return manager.restore(step, args=ocp.args.StandardRestore(target))
