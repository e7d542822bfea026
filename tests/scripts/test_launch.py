"""``tempo-jax launch``: a command run as several processes of one JAX cluster on localhost
(gloo collectives on CPU). A training run over two processes makes one run directory, writes
its files once, checkpoints from both processes, and gets the one-process run's numbers; a
failing process ends the launch with its exit code."""

from __future__ import annotations

import csv
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tempo_jax.scripts import launch

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_cli(*argv: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """``tempo-jax *argv`` in a process of its own (one CPU device), run in ``cwd``."""
    flags = os.environ.get("XLA_FLAGS", "").split()  # one CPU device per process
    env = {**os.environ, "XLA_FLAGS": " ".join(f for f in flags if "device_count" not in f)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "tempo_jax.scripts.cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _rows(run: pathlib.Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # PPO compiled by two processes at once, then by one: about 1 min
def test_a_run_over_two_processes_is_the_one_process_run(tmp_path) -> None:
    config = tmp_path / "tiny.yaml"
    tiny = {"algo": "ppo", "env": "CartPole-v1", "iterations": 4, "envs": 4, "steps": 8}
    config.write_text(yaml.safe_dump(tiny | {"epochs": 2, "minibatches": 2}))
    common = ("train", str(config), "--out", "runs", "--checkpoint-every", "2")
    two = run_cli(
        "launch", "--processes", "2", *common, "--devices", "-1", "--run", "two", cwd=tmp_path
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli(*common, "--run", "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["one", "two"]
    assert two.stdout.count("wrote ") == 1  # process 0 reports; the other prints nothing
    got, want = _rows(tmp_path / "runs" / "two"), _rows(tmp_path / "runs" / "one")
    assert len(got) == len(want) == 4
    assert [a["episodes"] for a in got] == [b["episodes"] for b in want]
    for name in ("loss", "mean_return", "value_loss", "approx_kl"):
        a, b = ([float(row[name]) for row in rows] for rows in (got, want))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, equal_nan=True)
    saved = tmp_path / "runs" / "two" / "checkpoints"
    assert sorted(p.name for p in saved.iterdir()) == ["2", "4"]
    # the two processes' checkpoint at iteration 2, resumed by one process: the same run
    shutil.rmtree(saved / "4")
    again = run_cli("train", "runs/two", "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = _rows(tmp_path / "runs" / "two")
    np.testing.assert_allclose(
        [float(r["loss"]) for r in resumed], [float(r["loss"]) for r in want], rtol=1e-4
    )


def test_a_run_over_several_processes_must_use_them_all(tmp_path) -> None:
    done = run_cli(
        "launch", "--processes", "2", "train", "ppo_cartpole", "--iterations", "1", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "--devices -1" in done.stderr
    assert not (tmp_path / "results").exists()


def test_a_failing_process_ends_the_launch_with_its_code(tmp_path) -> None:
    done = run_cli("launch", "--processes", "2", "show-config", "no_such_config", cwd=tmp_path)
    assert done.returncode == 2
    assert "no_such_config" in done.stderr


def test_launch_needs_a_command_and_a_process_count(capsys) -> None:
    assert launch.main(["--processes", "2"]) == 2
    assert "give the command to run" in capsys.readouterr().err
    assert launch.main(["--processes", "0", "train", "ppo_cartpole"]) == 2
    assert "--processes must be at least 1" in capsys.readouterr().err


def test_a_cluster_described_halfway_is_named(monkeypatch) -> None:
    monkeypatch.setenv(launch.COORDINATOR, "localhost:1")
    monkeypatch.delenv(launch.NUM_PROCESSES, raising=False)
    monkeypatch.setenv(launch.PROCESS_ID, "0")
    with pytest.raises(SystemExit, match="TEMPO_JAX_NUM_PROCESSES and TEMPO_JAX_PROCESS_ID"):
        launch.initialize_from_env()
    monkeypatch.delenv(launch.COORDINATOR)
    assert launch.initialize_from_env() is False
