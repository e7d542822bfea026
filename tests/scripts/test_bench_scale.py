"""The scale benchmark runs PPO on 1 and 2 virtual devices, and decoding with rows and with
heads split over 2, and reports each split run's distance to the one-device run (not a timing
test; a process of its own, since the device count is fixed when JAX starts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two PPO compiles and three decoders in a fresh process: about 90 s
def test_rows_for_each_device_count_and_the_split_run_equals_one_device(tmp_path) -> None:
    config = {
        "repeats": 1,
        "devices": [1, 2],
        "base": {"iterations": 2, "envs": 4, "steps": 8, "epochs": 2, "minibatches": 2},
        "decode": {
            "repeats": 1,
            "model": {
                "arch": "gpt2",
                "layers": 1,
                "dim": 32,
                "heads": 2,
                "kv_heads": 2,
                "head_dim": 16,
                "hidden": 64,
                "vocab": 50,
            },
            "batch": 2,
            "prompt_len": 3,
            "steps": 4,
            "block": 4,
            "meshes": [[1, 1], [2, 1], [2, 2]],
        },
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
    found = json.loads((tmp_path / "scale_tiny.json").read_text())["rows"]
    rows = [r for r in found if r["workload"] == "ppo"]
    decoded = [r for r in found if r["workload"] == "decode"]
    assert [(r["devices"], r["tensor_parallel"]) for r in decoded] == [(1, 1), (2, 1), (2, 2)]
    assert all(r["tokens_equal"] and r["max_abs_logit_diff"] <= 1e-5 for r in decoded)
    assert all(r["tokens_per_second"] > 0 for r in decoded)
    assert [r["devices"] for r in rows] == [1, 2]
    assert rows[0]["speedup"] == 1.0 and rows[1]["max_abs_loss_diff"] <= 1e-5
    assert all(r["seconds_per_iteration"] > 0 and r["compile_seconds"] > 0 for r in rows)
    assert (tmp_path / "scale_tiny.png").stat().st_size > 0
