"""The RL training script writes its metrics, summary, learning curve and checkpoints, stops
at Ctrl-C and resumes (not a timing test)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import struct

import jax
import numpy as np
import pytest

from tempo_jax.algorithms import checkpoints, envs, training
from tempo_jax.algorithms.config import RLConfig
from tempo_jax.algorithms.networks import actor_critic
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


def _events(folder) -> dict[tuple[str, int], float]:
    """``(tag, step) -> value`` of the scalars in a folder's TensorBoard event files (TFRecord:
    length, its CRC, an ``Event`` proto, its CRC)."""
    from tensorboardX.proto import event_pb2

    found = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                found[(value.tag, event.step)] = value.simple_value
    return found


def _metrics(run) -> list[dict[str, str]]:
    """A run's metrics.csv rows, as text, but the time it took."""
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "steps_per_second"} for r in csv.DictReader(f)]


class _InterruptingBar(train_rl.tqdm):
    """The progress bar, pressing Ctrl-C (a real SIGINT) at its ``at``-th update."""

    at = 2

    def update(self, n: int = 1) -> None:
        super().update(n)
        if self.n == type(self).at:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_stops_at_a_chunk_boundary_and_resume_gives_the_uninterrupted_run(
    tmp_path, monkeypatch
) -> None:
    """A run of 4 iterations, one per call: Ctrl-C during the second call stops after it,
    leaving 2 rows of metrics, a checkpoint of iteration 2 and a summary saying so; resuming
    finishes the run with the metrics and parameters of a run never stopped."""
    config = RLConfig(iterations=4, envs=2, steps=8, seed=2, epochs=2, minibatches=2)
    whole = train_rl.train(config, tmp_path / "whole", chunk=1, tensorboard=True)
    assert not whole["interrupted"] and whole["iterations_done"] == 4
    scalars = _events(tmp_path / "whole" / "tensorboard")
    for row in _metrics(tmp_path / "whole"):
        step = int(row["env_steps"])
        assert scalars[("losses/approx_kl", step)] == pytest.approx(float(row["approx_kl"]))
        if row["mean_return"] != "nan":  # no episode ended: no point
            got = scalars[("charts/mean_return", step)]
            assert got == pytest.approx(float(row["mean_return"]))
        else:
            assert ("charts/mean_return", step) not in scalars
    monkeypatch.setattr(train_rl, "tqdm", _InterruptingBar)
    stopped = tmp_path / "stopped"
    summary = train_rl.train(config, stopped, chunk=1)
    assert summary["interrupted"] and summary["iterations_done"] == 2
    with open(stopped / "metrics.csv") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == [0, 1]
    assert checkpoints.latest(stopped / "checkpoints") == 2
    assert not list(stopped.glob(".*.tmp"))  # no temporary file left
    monkeypatch.setattr(_InterruptingBar, "at", -1)  # no more Ctrl-C
    train_rl.resume(stopped)
    got, want = _metrics(stopped), _metrics(tmp_path / "whole")
    assert got == want and {"policy_loss", "approx_kl", "clip_fraction"} <= set(got[0])
    assert json.loads((stopped / "summary.json").read_text())["iterations_done"] == 4
    env = envs.make(config.env)
    like = jax.eval_shape(
        lambda k: training.initial_state(config, env, actor_critic(config, env), k),
        jax.random.PRNGKey(0),
    )
    got = checkpoints.restore(stopped / "checkpoints", like)
    want = checkpoints.restore(tmp_path / "whole" / "checkpoints", like)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_seeds_side_by_side_are_the_seeds_runs_and_evaluate_each(tmp_path) -> None:
    """``seeds=2``: one vmapped program; each seed's rows are that seed's own run's, the plot
    has a band, the checkpoint holds both states and evaluation reports both."""
    config = RLConfig(algo="reinforce", iterations=2, envs=2, steps=8, seed=4)
    both = train_rl.train(config, tmp_path / "both", chunk=1, seeds=2)
    assert both["seeds"] == 2 and both["env_steps"] == 2 * 2 * 16
    rows = _metrics(tmp_path / "both")
    for seed in (4, 5):
        alone = tmp_path / f"seed{seed}"
        train_rl.train(dataclasses.replace(config, seed=seed), alone, chunk=1)
        mine = [r for r in rows if r["seed"] == str(seed)]
        for got, want in zip(mine, _metrics(alone), strict=True):
            for name in ("episodes", "mean_return", "loss", "entropy"):
                assert float(got[name]) == pytest.approx(float(want[name]), rel=1e-5, nan_ok=True)
    report = train_rl.evaluate_run(tmp_path / "both", episodes=2)
    assert sorted(report["returns_per_trained_seed"]) == [4, 5]
    assert (tmp_path / "both" / "learning_curve.png").stat().st_size > 0
