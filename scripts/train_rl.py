"""Train an RL algorithm written as one tempo_jax program, with a progress bar.

The whole run (every iteration's rollout, returns, loss, backward and optimiser step) is one
compiled XLA computation; per-iteration metrics leave it through a sink to the progress bar
and to ``results/rl/<run>/metrics.csv``, and a learning curve is plotted next to it. Each run
gets its own directory (:func:`tempo_jax.scripts.results.run_dir`); every file is written
atomically.

    tempo-jax train ppo_cartpole [--iterations N] [--seed S] [--run NAME] [--overwrite]
    python -m tempo_jax.scripts.train_rl [--config ppo_cartpole] [--iterations N] [--seed S]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time
from typing import Any

import numpy as np
from tqdm import tqdm

import tempo_jax as tj
from tempo_jax.algorithms import a2c, envs, ppo, reinforce
from tempo_jax.algorithms import config as rl_config
from tempo_jax.configs import ConfigError
from tempo_jax.scripts import results

ALGORITHMS = {"ppo": ppo.make_train, "reinforce": reinforce.make_train, "a2c": a2c.make_train}


def train(config: rl_config.RLConfig, out: pathlib.Path) -> dict[str, Any]:
    """Compile and run ``config``; write metrics, the curve and a summary under ``out``
    (atomically: each file is whole, old or new)."""
    out.mkdir(parents=True, exist_ok=True)
    bars: list[tqdm] = []  # the progress bar, made when the run starts

    def log(iteration: int, metrics: dict[str, float]) -> None:
        if metrics["episodes"] > 0:  # the return of the episodes that ended this iteration
            bars[0].set_postfix(mean_return=f"{metrics['mean_return']:.1f}", refresh=False)
        bars[0].update(1)

    envs.make(config.env, **config.env_options)  # its package's import is not build time
    start = time.perf_counter()
    compiled = ALGORITHMS[config.algo](config, log)  # tempo_jax: passes, checks, schedule
    build = time.perf_counter() - start
    start = time.perf_counter()
    run = compiled.ahead_of_time()  # XLA
    xla = time.perf_counter() - start
    bars.append(tqdm(total=config.iterations, desc=f"{config.algo} {config.env}", unit="it"))
    start = time.perf_counter()
    result = run()
    np.asarray(result["mean_return"])  # wait for the run
    seconds = time.perf_counter() - start
    bars[0].close()
    steps = config.iterations * config.envs * config.steps
    returns = np.asarray(result["mean_return"], np.float64)
    episodes = np.asarray(result["episodes"])
    returns[episodes == 0] = np.nan  # no episode ended in that iteration
    losses = np.asarray(result["loss"])
    batch = config.envs * config.steps
    results.write_csv(
        out / "metrics.csv",
        ["iteration", "env_steps", "episodes", "mean_return", "loss"],
        (
            [k, (k + 1) * batch, int(episodes[k]), returns[k], losses[k]]
            for k in range(config.iterations)
        ),
    )
    smooth = _smoothed(returns)
    summary = {
        "config": dataclasses.asdict(config),
        "build_seconds": build,
        "xla_compile_seconds": xla,
        "compile_seconds": build + xla,
        "run_seconds": seconds,
        "env_steps": steps,
        "steps_per_second": steps / seconds,
        "final_mean_return": float(np.nanmean(returns[-20:])),
        "best_smoothed_return": float(np.nanmax(smooth)),
        "env_steps_to_400": _first_reaching(smooth, 400.0, config),
    }
    results.write_json(out / "summary.json", summary)
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
) -> pathlib.Path:
    """Train ``config`` into a new run directory under ``root`` (named ``name``, or
    ``<algo>_<env>_seed<S>`` numbered past earlier runs); print the summary; the directory."""
    default = f"{config.algo}_{config.env}_seed{config.seed}"
    out = results.run_dir(root, name or default, explicit=name is not None, overwrite=overwrite)
    summary = train(config, out)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    print(f"wrote {out}/metrics.csv, summary.json and learning_curve.png")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="ppo_cartpole", help="a shipped name or a path")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", default="results/rl")
    parser.add_argument("--run", help="the run's directory name (default: numbered)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    tj.enable_compilation_cache()  # a second run skips XLA's compile
    overrides = {
        k: v for k, v in (("iterations", args.iterations), ("seed", args.seed)) if v is not None
    }
    try:
        config = rl_config.load(args.config, **overrides)
        run(config, args.out, args.run, args.overwrite)
    except (ConfigError, results.ResultsError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
