"""The scale benchmark runs PPO on 1 and 2 virtual devices and reports the split run's
distance to the one-device run (not a timing test; a process of its own, since the device
count is fixed when JAX starts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two PPO compiles in a fresh process: about a minute
def test_rows_for_each_device_count_and_the_split_run_equals_one_device(tmp_path) -> None:
    config = {
        "repeats": 1,
        "devices": [1, 2],
        "base": {"iterations": 2, "envs": 4, "steps": 8, "epochs": 2, "minibatches": 2},
    }
    path = tmp_path / "scale_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["-m", "scripts.bench_scale", "--config", str(path), "--virtual", "2"]
    done = subprocess.run(
        [sys.executable, *argv, "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "scale_tiny.json").read_text())["rows"]
    assert [r["devices"] for r in rows] == [1, 2]
    assert rows[0]["speedup"] == 1.0 and rows[1]["max_abs_loss_diff"] <= 1e-5
    assert all(r["seconds_per_iteration"] > 0 and r["compile_seconds"] > 0 for r in rows)
    assert (tmp_path / "scale_tiny.png").stat().st_size > 0
