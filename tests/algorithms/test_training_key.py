"""A compiled training run is a function of its PRNG key and of the state it starts from: the
key of a seed gives that seed's run, the run traces under ``jax.jit``, and a run continued
from the state another left gives the uninterrupted run."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from tempo_jax.algorithms import a2c, ppo, reinforce, training
from tempo_jax.algorithms.config import RLConfig
from tests.algorithms.runs import assert_same_run

CONFIG = RLConfig(algo="reinforce", iterations=2, envs=2, steps=8, seed=0)
MODULES = {"ppo": ppo, "reinforce": reinforce, "a2c": a2c}


def test_the_key_of_a_seed_gives_that_seeds_run_and_jit_traces_it() -> None:
    """The program does not depend on the seed: a run made for seed 3 (its default key) is
    the run of seed 0's executable called with seed 3's key."""
    train = reinforce.make_train(CONFIG)
    # the seed's start, computed on a second thread while the program was built, is the start
    assert train.first is not None and train.first[0] == CONFIG.seed
    first, fresh = (jax.tree.leaves(s) for s in (train.state(), train.start(train.key())))
    for a, b in zip(first, fresh, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = dataclasses.replace(train, seed=3)()  # its own seed's start, not the first's
    got = train(jax.random.PRNGKey(3))
    for name in ("loss", "mean_return", "episodes"):
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(other[name]))
    assert not np.array_equal(np.asarray(train()["loss"]), np.asarray(got["loss"]))
    jitted = jax.jit(train)(jax.random.PRNGKey(3))
    np.testing.assert_array_equal(np.asarray(jitted["loss"]), np.asarray(got["loss"]))
    # compiled ahead of time (the initial state on a thread of its own meanwhile): the same
    ahead = train.ahead_of_time()
    np.testing.assert_array_equal(np.asarray(ahead()["loss"]), np.asarray(train()["loss"]))
    np.testing.assert_array_equal(
        np.asarray(ahead(jax.random.PRNGKey(3))["loss"]), np.asarray(got["loss"])
    )


@pytest.mark.parametrize(
    ("algo", "iterations", "chunk", "options"),
    [
        pytest.param("reinforce", 4, 2, {"n_step": 3}, marks=pytest.mark.slow),
        pytest.param("a2c", 3, 1, {}, marks=pytest.mark.slow),
        pytest.param("ppo", 4, 2, {}, marks=pytest.mark.slow),  # the rollout's forward pass
        ("ppo", 3, 1, {"epochs": 2, "minibatches": 2, "anneal_lr": True, "clip_value_loss": True}),
    ],
)
def test_a_run_continued_from_its_state_is_the_uninterrupted_run(
    algo: str, iterations: int, chunk: int, options: dict
) -> None:
    """``iterations`` run as chunks of ``chunk``, each from the state the last returned (the
    iteration count, optimiser state, environments and running returns), equal the whole run:
    the keys are folded with the global iteration, the learning rate anneals over the run."""
    config = RLConfig(algo=algo, iterations=iterations, envs=4, steps=16, **options)
    key = jax.random.PRNGKey(5)
    whole = MODULES[algo].make_train(config)(key)
    part = MODULES[algo].make_train(config, iterations=chunk)
    outs, state = [], None
    for _ in range(iterations // chunk):
        outs.append(part(key, state))
        state = outs[-1]["state"]
    got = {k: np.concatenate([o[k] for o in outs]) for k in ("loss", "mean_return", "episodes")}
    assert_same_run({**got, "params": state.params}, whole)
    assert int(state.iteration) == iterations == int(whole["state"].iteration)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(state), leaves(whole["state"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_iterations_per_call_must_fit_the_run() -> None:
    with pytest.raises(ValueError, match="iterations per call must be 1 to 2, got 3"):
        reinforce.make_train(CONFIG, iterations=3)


def test_vmap_over_three_seeds_is_three_runs_and_the_sink_names_each() -> None:
    """``jax.vmap`` over keys (and ``run`` indices) runs the seeds side by side, as purejaxrl
    does: each seed's outputs are its own run's; the sink is called once per seed and
    iteration, with the seed's ``run``."""
    config = RLConfig(algo="reinforce", iterations=2, envs=2, steps=8)
    calls = []
    train = reinforce.make_train(config, log=lambda i, m: calls.append((i, int(m["run"]))))
    keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in (0, 1, 2)])
    batched = jax.jit(jax.vmap(lambda k, r: train(k, run=r)))(keys, jax.numpy.arange(3))
    assert sorted(calls) == [(i, r) for i in range(2) for r in range(3)]
    for s in range(3):
        alone = train(jax.random.PRNGKey(s))
        assert_same_run(jax.tree_util.tree_map(lambda x, s=s: x[s], batched), alone)


def test_devices_beyond_those_available_are_refused_and_one_device_is_no_mesh() -> None:
    assert training.device_mesh(RLConfig(devices=1)) is None
    count = len(jax.devices())
    with pytest.raises(ValueError, match=f"devices: {count + 1} asked, {count} available"):
        training.device_mesh(RLConfig(envs=8 * (count + 1), devices=count + 1))
