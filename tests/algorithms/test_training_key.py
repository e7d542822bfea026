"""A compiled training run is a function of its PRNG key: the key of a seed gives that seed's
run, and the run traces under ``jax.jit``."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from tempo_jax.algorithms import reinforce
from tempo_jax.algorithms.config import RLConfig

CONFIG = RLConfig(algo="reinforce", iterations=2, envs=2, steps=8, seed=0)


def test_the_key_of_a_seed_gives_that_seeds_run_and_jit_traces_it() -> None:
    train = reinforce.make_train(CONFIG)
    other = reinforce.make_train(dataclasses.replace(CONFIG, seed=3))()
    got = train(jax.random.PRNGKey(3))
    for name in ("loss", "mean_return", "episodes"):
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(other[name]))
    assert not np.array_equal(np.asarray(train()["loss"]), np.asarray(got["loss"]))
    jitted = jax.jit(train)(jax.random.PRNGKey(3))
    np.testing.assert_array_equal(np.asarray(jitted["loss"]), np.asarray(got["loss"]))
