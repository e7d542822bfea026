"""``scripts.train_lm``: a short run writes the summary, the curves and the plot, and the loss
curves agree (tempo_jax with its attention backward dense and split, and the hand-written
loop)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow  # the LM program itself: tests/models/test_train.py
def test_a_short_run_writes_agreeing_curves(tmp_path: pathlib.Path) -> None:
    config = yaml.safe_load((ROOT / "configs/train/lm_tiny.yaml").read_text())
    config["corpus"]["lines"] = 200
    config["model"].update(dim=32, heads=2, kv_heads=2, head_dim=16, hidden=64, layers=1)
    config["train"].update(
        batch=2, seq_len=16, iterations=25, repeats=1, compare_split_backward=True
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    script = [sys.executable, "-m", "tempo_jax.scripts.train_lm"]
    subprocess.run(
        [*script, "--config", str(path), "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    summary = json.loads((tmp_path / "tiny.json").read_text())
    assert summary["agree"] and summary["max_abs_loss_diff_first_steps"] <= 1e-4
    assert len(summary["losses"]["tempo_jax"]) == 25
    assert summary["seconds_per_iteration"]["tempo_jax"] > 0
    assert (tmp_path / "tiny.png").stat().st_size > 0
    lines = (tmp_path / "tiny.csv").read_text().splitlines()
    header = "iteration,tempo_jax,tempo_jax split backward,hand-written JAX"
    assert lines[0] == header and len(lines) == 26
    split = summary["tempo_jax split backward"]
    assert split["xla_compile_seconds"] > 0 and summary["ratio_per_iteration_split_backward"] > 0
