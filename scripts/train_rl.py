"""Train an RL algorithm written as one tempo_jax program, with a progress bar, checkpoints
and resume.

The run is compiled once as a program of ``chunk`` iterations (every iteration's rollout,
returns, loss, backward and optimiser step: one XLA call) and called on the state the last
call returned until the run is done (:mod:`tempo_jax.algorithms.training`). Between calls the
metrics go to ``metrics.csv`` and the state to an orbax checkpoint (``checkpoints/<iteration>``,
the last two kept); Ctrl-C stops the run there, keeping both, and ``--resume`` continues it
with the same numbers an uninterrupted run gets. Per-iteration metrics reach the progress bar
through a sink. Each run gets its own directory (:func:`tempo_jax.scripts.results.run_dir`);
every file is written atomically.

    tempo-jax train ppo_cartpole [--iterations N] [--seed S] [--run NAME] [--overwrite]
    tempo-jax train results/rl/ppo_CartPole-v1_seed0 --resume
    python -m tempo_jax.scripts.train_rl [--config ppo_cartpole] [--iterations N] [--seed S]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import pathlib
import shutil
import signal
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

import tempo_jax as tj
from tempo_jax.algorithms import a2c, checkpoints, envs, evaluation, ppo, reinforce, training
from tempo_jax.algorithms import config as rl_config
from tempo_jax.algorithms.networks import actor_critic
from tempo_jax.configs import ConfigError
from tempo_jax.scripts import results

ALGORITHMS = {"ppo": ppo.make_train, "reinforce": reinforce.make_train, "a2c": a2c.make_train}
# the metrics.csv columns: the iteration, env steps, then the program's per-iteration outputs
# (losses and metrics: those of the algorithm), then the steps per second of the call
COUNTS = ["iteration", "env_steps", "episodes"]
METRICS = ["mean_return", "loss", "policy_loss", "value_loss", "entropy", "approx_kl"]
METRICS += ["clip_fraction"]
RUN_FILE = "run.json"  # the config and chunk a run was started with: what --resume reads


def default_chunk(iterations: int) -> int:
    """Iterations per call when not given: the largest divisor of ``iterations`` up to a tenth
    of it (at least 1), so every call runs the one compiled program."""
    top = max(1, iterations // 10)
    return max(k for k in range(1, top + 1) if iterations % k == 0)


class Interrupt:
    """Ctrl-C while installed asks the run to stop at the next call boundary
    (``requested``); a second Ctrl-C stops at once (``KeyboardInterrupt``)."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("stopping after this chunk of iterations (Ctrl-C again to stop now)")

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupt]:
        try:
            previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no handler, nothing to stop
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def _columns(result: dict[str, Any]) -> list[str]:
    return COUNTS + [m for m in METRICS if m in result] + ["steps_per_second"]


def _rows(
    result: dict[str, Any], done: int, config: rl_config.RLConfig, seconds: float
) -> list[dict[str, Any]]:
    """The metrics rows of one call's iterations (numbered from ``done``) that took
    ``seconds``."""
    batch = config.envs * config.steps
    values = {m: np.asarray(result[m], np.float64) for m in METRICS if m in result}
    episodes = np.asarray(result["episodes"])
    values["mean_return"][episodes == 0] = np.nan  # no episode ended in that iteration
    count = len(episodes)
    rows = []
    for k in range(count):
        row = {"iteration": done + k, "env_steps": (done + k + 1) * batch}
        row |= {"episodes": int(episodes[k]), **{m: float(v[k]) for m, v in values.items()}}
        rows.append(row | {"steps_per_second": count * batch / seconds})
    return rows


def _board(out: pathlib.Path, start: int) -> Any:
    """A TensorBoard writer of ``out/tensorboard``, events past env step ``start`` dropped (a
    resumed run rewrites them)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ConfigError(
            "tensorboard: needs tensorboardX (pip install 'tempo_jax[tensorboard]')"
        ) from None
    return SummaryWriter(str(out / "tensorboard"), purge_step=start or None)


def _scalars(board: Any, rows: list[dict[str, Any]]) -> None:
    """Each row's metrics as scalars at its env step (``charts/mean_return``,
    ``losses/...``, ``charts/steps_per_second``)."""
    for row in rows:
        for name, value in row.items():
            if name in COUNTS[:2] or not math.isfinite(value):
                continue
            group = (
                "charts" if name in ("mean_return", "episodes", "steps_per_second") else "losses"
            )
            board.add_scalar(f"{group}/{name}", value, global_step=row["env_steps"])
    board.flush()


def _read_rows(path: pathlib.Path, done: int) -> list[dict[str, Any]]:
    """The first ``done`` rows of a run's metrics.csv, typed as :func:`_rows` makes them."""
    with open(path) as f:
        rows = [
            {k: int(v) if k in COUNTS else float(v or math.nan) for k, v in r.items()}
            for r in csv.DictReader(f)
        ]
    if len(rows) < done:
        raise results.ResultsError(
            f"{path} has {len(rows)} iterations, the checkpoint {done}: not one run's files"
        )
    return rows[:done]


def train(
    config: rl_config.RLConfig,
    out: pathlib.Path,
    chunk: int | None = None,
    resume: bool = False,
    tensorboard: bool = False,
) -> dict[str, Any]:
    """Compile ``config`` as a program of ``chunk`` iterations (default:
    :func:`default_chunk`) and run it call after call, from the latest checkpoint under
    ``out`` with ``resume``; after each call write the metrics (and, with ``tensorboard``,
    TensorBoard scalars under ``out/tensorboard``, by env step) and a checkpoint; at the end
    (or at Ctrl-C) the summary and the curve (every file atomically)."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chunk = default_chunk(config.iterations) if chunk is None else chunk
    if chunk < 1:
        raise ConfigError(f"checkpoint_every: must be at least 1, got {chunk}")
    chunk = min(chunk, config.iterations)
    env = envs.make(config.env, **config.env_options)  # its package's import is not build time
    key = jax.random.PRNGKey(config.seed)
    saved = out / "checkpoints"
    if resume:
        like = jax.eval_shape(
            lambda k: training.initial_state(config, env, actor_critic(config, env), k), key
        )
        state = checkpoints.restore(saved, like)
        done = int(state.iteration)
        rows = _read_rows(out / "metrics.csv", done)
    else:
        results.write_json(out / RUN_FILE, {"config": dataclasses.asdict(config), "chunk": chunk})
        shutil.rmtree(saved, ignore_errors=True)  # an overwritten run's checkpoints
        state, done, rows = None, 0, []
    bar = tqdm(total=config.iterations, initial=done, desc="compiling", unit="it")
    shown: dict[str, str] = {}  # the bar's postfix: the last return, the last call's steps/s

    def log(iteration: int, metrics: dict[str, float]) -> None:
        if metrics["episodes"] > 0:  # the return of the episodes that ended this iteration
            shown["mean_return"] = f"{metrics['mean_return']:.1f}"
            bar.set_postfix(shown, refresh=False)
        bar.update(1)

    start = time.perf_counter()
    compiled = ALGORITHMS[config.algo](config, log, iterations=chunk)  # passes, schedule
    build = time.perf_counter() - start
    start = time.perf_counter()
    calls = {chunk: compiled.ahead_of_time()}  # XLA
    xla = time.perf_counter() - start
    bar.set_description(f"{config.algo} {config.env}")
    bar.unpause()  # its rate counts from here, not from the compile
    seconds, first = 0.0, done
    board = _board(out, done * config.envs * config.steps) if tensorboard else None
    with Interrupt().installed() as interrupt, board or contextlib.nullcontext():
        while done < config.iterations and not interrupt.requested:
            count = min(chunk, config.iterations - done)
            if count not in calls:  # the last, shorter call
                calls[count] = ALGORITHMS[config.algo](config, log, iterations=count)
            begin = time.perf_counter()
            result = calls[count](key, state)
            jax.block_until_ready(result)
            seconds += time.perf_counter() - begin
            state = result["state"]
            new = _rows(result, done, config, time.perf_counter() - begin)
            rows += new
            if board is not None:
                _scalars(board, new)
            shown["steps/s"] = f"{rows[-1]['steps_per_second']:,.0f}"
            bar.set_postfix(shown)
            done += count
            columns = _columns(result)
            table = ([r[c] for c in columns] for r in rows)
            results.write_csv(out / "metrics.csv", columns, table)  # before the checkpoint:
            checkpoints.save(saved, state)  # a resume never finds fewer rows than iterations
    bar.close()
    returns = np.array([r["mean_return"] for r in rows], np.float64)
    smooth = _smoothed(returns)
    steps = (done - first) * config.envs * config.steps
    summary = {
        "config": dataclasses.asdict(config),
        "iterations_done": done,
        "interrupted": done < config.iterations,
        "iterations_per_call": chunk,
        "build_seconds": build,
        "xla_compile_seconds": xla,
        "compile_seconds": build + xla,
        "run_seconds": seconds,
        "env_steps": done * config.envs * config.steps,
        "steps_per_second": steps / seconds if seconds else None,
        "final_mean_return": float(np.nanmean(returns[-20:])) if rows else None,
        "best_smoothed_return": float(np.nanmax(smooth)) if np.isfinite(smooth).any() else None,
        "env_steps_to_400": _first_reaching(smooth, 400.0, config),
    }
    results.write_json(out / "summary.json", summary)
    if rows:
        plot(returns, smooth, config, out / "learning_curve.png")
    return summary


def _smoothed(returns: np.ndarray, window: int = 20) -> np.ndarray:
    """The mean of the last ``window`` iterations' returns (iterations without episodes
    skipped)."""
    out = np.full(len(returns), np.nan)
    for k in range(len(returns)):
        recent = returns[max(0, k - window + 1) : k + 1]
        if np.isfinite(recent).any():
            out[k] = np.nanmean(recent)
    return out


def _first_reaching(smooth: np.ndarray, level: float, config: rl_config.RLConfig) -> int | None:
    hits = np.flatnonzero(smooth >= level)
    return None if not len(hits) else int((hits[0] + 1) * config.envs * config.steps)


def plot(
    returns: np.ndarray, smooth: np.ndarray, config: rl_config.RLConfig, path: pathlib.Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = (np.arange(len(returns)) + 1) * config.envs * config.steps
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(steps, returns, ".", markersize=1.5, alpha=0.4, label="per iteration")
    ax.plot(steps, smooth, linewidth=1.2, label="mean of 20 iterations")
    ax.set_xlabel("env steps")
    ax.set_ylabel("mean episode return")
    ax.set_title(f"{config.algo} on {config.env} (tempo_jax, one program)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    results.save_figure(fig, path, dpi=120)
    plt.close(fig)


def run(
    config: rl_config.RLConfig,
    root: str | pathlib.Path = "results/rl",
    name: str | None = None,
    overwrite: bool = False,
    chunk: int | None = None,
    tensorboard: bool = False,
) -> pathlib.Path:
    """Train ``config`` into a new run directory under ``root`` (named ``name``, or
    ``<algo>_<env>_seed<S>`` numbered past earlier runs); print the summary; the directory."""
    if chunk is not None and chunk < 1:  # before the run's directory is made
        raise ConfigError(f"checkpoint_every: must be at least 1, got {chunk}")
    default = f"{config.algo}_{config.env}_seed{config.seed}"
    out = results.run_dir(root, name or default, explicit=name is not None, overwrite=overwrite)
    _report(train(config, out, chunk, tensorboard=tensorboard), out)
    return out


def resume(folder: str | pathlib.Path, tensorboard: bool = False) -> pathlib.Path:
    """Continue the run in ``folder`` from its latest checkpoint, with its config and chunk,
    to its last iteration; print the summary; the directory."""
    folder = pathlib.Path(folder)
    started = folder / RUN_FILE
    if not started.is_file():
        raise results.ResultsError(f"{folder}: not a training run's directory (no {RUN_FILE})")
    if checkpoints.latest(folder / "checkpoints") is None:
        raise results.ResultsError(f"{folder}: no checkpoint to resume from")
    saved = json.loads(started.read_text())
    config = rl_config.from_dict(saved["config"])
    _report(train(config, folder, saved["chunk"], True, tensorboard), folder)
    return folder


def evaluate_run(folder: str | pathlib.Path, episodes: int = 10, seed: int = 0) -> dict:
    """Evaluate the latest checkpoint of the run in ``folder`` with the deterministic policy
    (:func:`tempo_jax.algorithms.evaluation.evaluate`); write ``evaluation.json`` there and
    return its content."""
    folder = pathlib.Path(folder)
    started = folder / RUN_FILE
    if not started.is_file():
        raise results.ResultsError(f"{folder}: not a training run's directory (no {RUN_FILE})")
    config = rl_config.from_dict(json.loads(started.read_text())["config"])
    env = envs.make(config.env, **config.env_options)
    net = actor_critic(config, env)
    like = jax.eval_shape(lambda k: training.initial_state(config, env, net, k), _KEY)
    try:
        state = checkpoints.restore(folder / "checkpoints", like)
    except FileNotFoundError:
        raise results.ResultsError(f"{folder}: no checkpoint to evaluate") from None
    returns = evaluation.evaluate(config, state.params, jax.random.PRNGKey(seed), episodes)
    report = {
        "iteration": int(state.iteration),
        "episodes": episodes,
        "seed": seed,
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "returns": [float(r) for r in returns],
    }
    results.write_json(folder / "evaluation.json", report)
    return report


_KEY = jax.ShapeDtypeStruct((2,), np.uint32)


def _report(summary: dict[str, Any], out: pathlib.Path) -> None:
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    if summary["interrupted"]:
        print(f"stopped after {summary['iterations_done']} iterations; continue with")
        print(f"  tempo-jax train {out} --resume")
    print(f"wrote {out}/metrics.csv, summary.json, learning_curve.png and checkpoints/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="ppo_cartpole", help="a shipped name or a path")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", default="results/rl")
    parser.add_argument("--run", help="the run's directory name (default: numbered)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--checkpoint-every", type=int, help="iterations per call and checkpoint")
    args = parser.parse_args()
    tj.enable_compilation_cache()  # a second run skips XLA's compile
    overrides = {
        k: v for k, v in (("iterations", args.iterations), ("seed", args.seed)) if v is not None
    }
    try:
        config = rl_config.load(args.config, **overrides)
        run(config, args.out, args.run, args.overwrite, args.checkpoint_every)
    except (ConfigError, results.ResultsError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
