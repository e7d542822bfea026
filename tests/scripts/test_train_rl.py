"""The RL training script writes its metrics, summary and learning curve (not a timing test)."""

from __future__ import annotations

import csv
import json

from tempo_jax.algorithms.config import RLConfig
from tempo_jax.scripts import train_rl


def test_a_short_run_writes_metrics_and_a_plot(tmp_path) -> None:
    config = RLConfig(iterations=4, envs=2, steps=8, seed=1)
    summary = train_rl.train(config, tmp_path)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2, 3]
    assert [int(r["env_steps"]) for r in rows] == [16, 32, 48, 64]
    assert all(float(r["loss"]) == float(r["loss"]) for r in rows)  # no NaN loss
    assert summary["env_steps"] == 64 and summary["steps_per_second"] > 0
    assert json.loads((tmp_path / "summary.json").read_text())["config"]["envs"] == 2
    assert (tmp_path / "learning_curve.png").stat().st_size > 0
    assert summary["build_seconds"] > 0 and summary["xla_compile_seconds"] > 0
    assert summary["compile_seconds"] == summary["build_seconds"] + summary["xla_compile_seconds"]
