"""The RL benchmark's rows and plot on a tiny sweep (not a timing test: the figures come from
``python -m tempo_jax.scripts.bench_rl``)."""

from __future__ import annotations

import numpy as np
import pytest

from tempo_jax.scripts import bench_rl, timing

TINY = {
    "repeats": 1,
    "actor_learner_iterations": 1,
    "algos": ["ppo"],
    "base": {
        "env": "trivial",
        "env_options": {"obs_shape": [3, 2, 2]},
        "iterations": 2,
        "envs": 4,
        "steps": 8,
        "layers": 1,
        "width": 8,
    },
    "sweep": {"envs": [4, 2]},  # 4 is the base: only envs = 2 is added
}


@pytest.mark.slow
def test_each_point_times_every_system_on_the_same_run(tmp_path) -> None:
    rows = bench_rl.sweep(TINY)
    assert [(r["factor"], r["value"]) for r in rows] == [("base", None)] * 3 + [("envs", 2)] * 3
    assert [r["system"] for r in rows[:3]] == ["tempo_jax", "single_jit", "actor_learner"]
    for row in rows:
        assert row["seconds_per_iteration"] > 0 and row["steps_per_second"] > 0
        assert row["loss_rel_diff_vs_single_jit"] < 1e-3  # tempo_jax computed the same run
        assert row["build_seconds"] >= 0 and row["xla_compile_seconds"] >= 0
        assert row["compile_seconds"] == row["build_seconds"] + row["xla_compile_seconds"]
    assert all(r["ratio_vs_single_jit"] == 1.0 for r in rows if r["system"] == "single_jit")
    assert rows[2]["iterations"] == 1 and rows[0]["iterations"] == 2
    bench_rl.plot(rows, TINY["base"], tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_an_episode_length_sets_the_trivial_envs_episode() -> None:
    config = bench_rl.point_config(TINY["base"], "steps", 16)
    assert config.steps == 16 and config.env_options == {"obs_shape": (3, 2, 2), "episode": 16}


def test_a_system_is_timed_stage_by_stage() -> None:
    config = bench_rl.point_config(TINY["base"], "base", None)
    for make in (bench_rl.SYSTEMS["ppo"]["tempo_jax"], bench_rl.SYSTEMS["ppo"]["single_jit"]):
        stages, run, out, first = bench_rl.prepare(make, config)
        assert stages["build"] >= 0 and stages["xla_compile"] > 0
        assert first is None  # compiled ahead of time: the first call is a run
        assert out["loss"].shape == (config.iterations,)
        np.testing.assert_array_equal(run()["loss"], out["loss"])


def test_systems_take_turns_in_each_round() -> None:
    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = timing.interleaved(runs, 3)
    warmup = ["a", "b", "c"]  # one untimed round first
    assert calls == [*warmup, "a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert {name: len(ts) for name, ts in times.items()} == {"a": 3, "b": 3, "c": 3}
    calls.clear()
    timing.interleaved(runs, 1, warmup=0)
    assert calls == ["a", "b", "c"]
