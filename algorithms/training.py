"""A training run as a pure function of a PRNG key.

Every algorithm's program takes its randomness from one input, ``key`` (a ``uint32[2]`` PRNG
key, as ``jax.random.PRNGKey`` makes): the initial parameters and every rollout key are
derived from it inside the program, as the single-jit baselines derive them. So the compiled
run is a pure function of the key: one build serves every seed.

    train = ppo.make_train(config)                   # built once
    out = train()                                    # the seed of config.seed
    out = train(jax.random.PRNGKey(7))               # seed 7, same executable
    out = jax.jit(train)(key)                        # traceable

(``jax.vmap`` over keys traces, but XLA's compile of the batched run of even a tiny PPO
config did not finish within minutes on the 2-core CPU: seeds run one after another.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import tempo_jax as tj

KEY = "key"  # the name of every algorithm's key input


def key_input() -> tj.RT:
    """The program's ``key`` input: a ``uint32[2]`` PRNG key."""
    return tj.input(KEY, (2,), jnp.uint32)


def split(key: Any, n: int = 2, name: str = "split") -> tuple[tj.RT, ...]:
    """``jax.random.split(key, n)`` inside the program (``key`` a tensor or an array), as
    ``n`` keys."""
    return tj.lift(lambda k: tuple(jax.random.split(k, n)), name=name)(key)


def fold_in(key: Any, data: int) -> tj.RT:
    """``jax.random.fold_in(key, data)`` inside the program."""
    return tj.lift(lambda k: jax.random.fold_in(k, data), name="fold_in")(key)


@dataclasses.dataclass(eq=False)  # hashable: jax.jit(train) works
class Train:
    """A compiled training run, called as a function of its PRNG key: ``train(key)`` (or
    ``train()`` for ``jax.random.PRNGKey(seed)``) returns the outputs. Pure and traceable
    (``jax.jit(train)``). The compiled program's other methods
    (``ahead_of_time``, ``lower``, ``memory``, ``explain``, ...) are reachable as
    attributes."""

    compiled: tj.Compiled
    seed: int

    def key(self, key: jax.Array | None = None) -> jax.Array:
        """``key``, or the config's seed's key."""
        return jax.random.PRNGKey(self.seed) if key is None else key

    def __call__(self, key: jax.Array | None = None) -> dict[str, Any]:
        return self.compiled(**{KEY: self.key(key)})

    def ahead_of_time(self) -> Callable[..., dict[str, Any]]:
        """XLA-compile now; the returned function is called like this one."""
        run = self.compiled.ahead_of_time(**{KEY: self.key()})
        return lambda key=None: run(**{KEY: self.key(key)})

    def lower(self, key: jax.Array | None = None) -> jax.stages.Lowered:
        """The lowering for a key (``.compile().memory_analysis()`` works)."""
        return self.compiled.lower(**{KEY: self.key(key)})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.compiled, name)
