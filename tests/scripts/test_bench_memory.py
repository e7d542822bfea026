"""The memory benchmark's rows and plot on a tiny config (not a timing test: the figures come
from ``python -m tempo_jax.scripts.bench_memory``)."""

from __future__ import annotations

import jax
import pytest
import yaml

from tempo_jax.configs import read
from tempo_jax.scripts import bench_memory

TINY = {
    "repeats": 1,
    "algos": ["reinforce"],
    "obs": [[3, 4, 4]],
    "episodes": [8],
    "base": {"iterations": 2, "envs": 4, "width": 8, "layers": 1, "cnn": True, "n_step": 3},
}


def test_a_point_config_sets_the_algorithm_returns_and_episode() -> None:
    nstep = bench_memory.point_config(TINY["base"], "reinforce_nstep", [3, 8, 8], 16)
    assert (nstep.algo, nstep.n_step, nstep.steps) == ("reinforce", 3, 16)
    assert nstep.env_options == {"obs_shape": (3, 8, 8), "episode": 16}
    assert bench_memory.point_config(TINY["base"], "reinforce", [3, 8, 8], 16).n_step == 0
    assert bench_memory.point_config(TINY["base"], "ppo", [3, 8, 8], 16).algo == "ppo"


@pytest.mark.slow
def test_each_point_runs_every_system_and_swaps_the_rollout(tmp_path) -> None:
    rows = bench_memory.run(TINY)
    assert [(r["system"], r["swap"]) for r in rows] == [
        ("tempo_jax", False),
        ("tempo_jax", True),
        ("single_jit", False),
    ]
    off, on, _ = rows
    assert off["host_bytes"] == 0 and on["host_bytes"] > 0  # the rollout is in host memory
    # of the vectorised and the streamed program, the budget keeps the one XLA gives less
    # temporary memory
    assert on["temp_bytes"] < off["temp_bytes"]
    # XLA's temp + output is what the planned peak counts (outputs included)
    assert all(r["xla_bytes"] > r["temp_bytes"] for r in rows)
    assert all(r["outputs_equal"] for r in rows[:2])  # swapping changes nothing but rounding
    assert [r["learner"] for r in rows] == ["vectorised", on["learner"], None]
    assert all(r["temp_bytes"] > 0 and r["seconds_per_iteration"] > 0 for r in rows)
    bench_memory.plot(rows, tmp_path / "memory.png")
    assert (tmp_path / "memory.png").stat().st_size > 0


@pytest.mark.slow
def test_fresh_processes_measure_each_system_alone_with_the_same_figures(tmp_path) -> None:
    """``--fresh-processes``: each system runs in a process of its own; the plan, XLA's
    temporary bytes and the outputs' agreement are those of one process."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    fresh = bench_memory.run(TINY, fresh_from=str(path))
    alone = bench_memory.run(TINY)
    keys = ("system", "swap", "temp_bytes", "xla_bytes", "host_bytes", "planned_peak_bytes")
    keys += ("learner",)
    assert [[r[k] for k in keys] for r in fresh] == [[r[k] for k in keys] for r in alone]
    assert all(r["machine"]["device"] == str(jax.devices()[0]) for r in fresh)
    assert [r["max_difference"] for r in fresh[:2]] == [r["max_difference"] for r in alone[:2]]


def test_the_gpu_config_reads_and_configures_every_point() -> None:
    """``memory_gpu_paper.yaml`` runs only where a GPU is lent: each of its points must make a
    run config before the device time is spent."""
    config = read("bench/memory_gpu_paper")
    found = bench_memory.points(config)
    assert len(found) == len(config["algos"]) * len(config["obs"]) * len(config["episodes"])
    for algo, obs, episode in found:
        cfg = bench_memory.point_config(config["base"], algo, obs, episode)
        assert cfg.env_options == {"obs_shape": tuple(obs), "episode": episode}
        assert (cfg.envs, cfg.steps, cfg.cnn) == (256, episode, True)
    assert config["fresh_processes"] is True  # the device's peak is each system's alone
