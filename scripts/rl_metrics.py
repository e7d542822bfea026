"""A training run's metrics: the rows of ``metrics.csv``, TensorBoard scalars, the learning
curve (one seed, or several with a band), and the summary's return figures.

A row is one iteration of one seed: ``seed, iteration, env_steps, episodes``, the program's
per-iteration outputs (``mean_return``, ``loss`` and the algorithm's metrics), and the steps
per second of the call that ran it.
"""

from __future__ import annotations

import csv
import math
import pathlib
import warnings
from typing import Any

import numpy as np

from tempo_jax.algorithms import config as rl_config
from tempo_jax.algorithms import ppo
from tempo_jax.configs import ConfigError
from tempo_jax.scripts import results

COUNTS = ["seed", "iteration", "env_steps", "episodes"]
METRICS = ["mean_return", "loss", *ppo.METRICS]


def columns(result: dict[str, Any]) -> list[str]:
    """The columns of the rows of a run whose program gives ``result``."""
    return COUNTS + [m for m in METRICS if m in result] + ["steps_per_second"]


def rows(
    result: dict[str, Any],
    done: int,
    config: rl_config.RLConfig,
    seeds: int,
    seconds: float,
) -> list[dict[str, Any]]:
    """The rows of one call's iterations (numbered from ``done``; with ``seeds > 1`` every
    output has a leading seed axis), iteration by iteration, seed by seed; the call took
    ``seconds``."""
    batch = config.envs * config.steps

    def per_seed(x: Any) -> np.ndarray:
        x = np.asarray(x, np.float64)
        return x if seeds > 1 else x[None]

    values = {m: per_seed(result[m]) for m in METRICS if m in result}
    episodes = per_seed(result["episodes"])
    values["mean_return"][episodes == 0] = np.nan  # no episode ended in that iteration
    count = episodes.shape[1]
    rate = count * batch * seeds / seconds
    out = []
    for k in range(count):
        for s in range(seeds):
            row = {"seed": config.seed + s, "iteration": done + k}
            row |= {"env_steps": (done + k + 1) * batch, "episodes": int(episodes[s, k])}
            row |= {m: float(v[s, k]) for m, v in values.items()}
            out.append(row | {"steps_per_second": rate})
    return out


def write(path: pathlib.Path, table: list[dict[str, Any]], names: list[str]) -> None:
    """``table`` as ``path``'s CSV (atomically)."""
    results.write_csv(path, names, ([r[c] for c in names] for r in table))


def read(path: pathlib.Path, count: int) -> list[dict[str, Any]]:
    """The first ``count`` rows of a run's metrics.csv, typed as :func:`rows` makes them."""
    with open(path) as f:
        table = [
            {k: int(v) if k in COUNTS else float(v or math.nan) for k, v in r.items()}
            for r in csv.DictReader(f)
        ]
    if len(table) < count:
        raise results.ResultsError(
            f"{path} has {len(table)} rows, the checkpoint {count}: not one run's files"
        )
    return table[:count]


def returns(table: list[dict[str, Any]]) -> dict[int, np.ndarray]:
    """Each seed's mean returns, by iteration."""
    out: dict[int, list[float]] = {}
    for row in table:
        out.setdefault(int(row["seed"]), []).append(row["mean_return"])
    return {seed: np.array(r, np.float64) for seed, r in out.items()}


def board(out: pathlib.Path, start: int) -> Any:
    """A TensorBoard writer of ``out/tensorboard``, events past env step ``start`` dropped (a
    resumed run rewrites them)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ConfigError(
            "tensorboard: needs tensorboardX (pip install 'tempo_jax[tensorboard]')"
        ) from None
    return SummaryWriter(str(out / "tensorboard"), purge_step=start or None)


def scalars(writer: Any, table: list[dict[str, Any]], seeds: int) -> None:
    """Each row's metrics as scalars at its env step (``charts/mean_return``,
    ``losses/...``, ``charts/steps_per_second``; with several seeds, ``seed<S>/...``)."""
    for row in table:
        for name, value in row.items():
            if name in COUNTS[:3] or not math.isfinite(value):
                continue
            group = (
                "charts" if name in ("mean_return", "episodes", "steps_per_second") else "losses"
            )
            tag = f"{group}/{name}" if seeds == 1 else f"seed{row['seed']}/{group}/{name}"
            writer.add_scalar(tag, value, global_step=row["env_steps"])
    writer.flush()


def smoothed(values: np.ndarray, window: int = 20) -> np.ndarray:
    """The mean of the last ``window`` iterations' returns (iterations without episodes
    skipped)."""
    out = np.full(len(values), np.nan)
    for k in range(len(values)):
        recent = values[max(0, k - window + 1) : k + 1]
        if np.isfinite(recent).any():
            out[k] = np.nanmean(recent)
    return out


def first_reaching(curve: np.ndarray, level: float, config: rl_config.RLConfig) -> int | None:
    """The env steps after which ``curve`` (by iteration) first reaches ``level``."""
    hits = np.flatnonzero(curve >= level)
    return None if not len(hits) else int((hits[0] + 1) * config.envs * config.steps)


def summary(table: list[dict[str, Any]], config: rl_config.RLConfig) -> dict[str, Any]:
    """The return figures of a run: over the last 20 iterations, the best of the 20-iteration
    mean, the env steps to a mean of 400 (CartPole's target) — per seed, and their mean."""
    raw = returns(table)
    by_seed = {seed: smoothed(r) for seed, r in raw.items()}
    final = {
        s: float(np.nanmean(r[-20:])) if np.isfinite(r).any() else None for s, r in raw.items()
    }
    best = {s: float(np.nanmax(c)) if np.isfinite(c).any() else None for s, c in by_seed.items()}
    reach = {s: first_reaching(c, 400.0, config) for s, c in by_seed.items()}
    if len(by_seed) == 1:
        (seed,) = by_seed
        return {
            "final_mean_return": final[seed],
            "best_smoothed_return": best[seed],
            "env_steps_to_400": reach[seed],
        }
    known = [v for v in final.values() if v is not None]
    return {
        "final_mean_return": float(np.mean(known)) if known else None,
        "final_mean_return_per_seed": final,
        "best_smoothed_return_per_seed": best,
        "env_steps_to_400_per_seed": reach,
    }


def plot(table: list[dict[str, Any]], config: rl_config.RLConfig, path: pathlib.Path) -> None:
    """The learning curve: one seed's returns per iteration and their 20-iteration mean; or,
    for several seeds, each seed's mean faintly, their mean, and a band from the lowest to
    the highest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_seed = returns(table)
    length = min(len(r) for r in by_seed.values())
    steps = (np.arange(length) + 1) * config.envs * config.steps
    fig, ax = plt.subplots(figsize=(5, 3))
    if len(by_seed) == 1:
        (values,) = by_seed.values()
        ax.plot(steps, values, ".", markersize=1.5, alpha=0.4, label="per iteration")
        ax.plot(steps, smoothed(values), linewidth=1.2, label="mean of 20 iterations")
    else:
        curves = np.stack([smoothed(r[:length]) for r in by_seed.values()])
        for curve in curves:
            ax.plot(steps, curve, linewidth=0.6, alpha=0.35)
        with warnings.catch_warnings():  # iterations where no seed's episode ended yet: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high, mean = np.nanmin(curves, 0), np.nanmax(curves, 0), np.nanmean(curves, 0)
        ax.fill_between(steps, low, high, alpha=0.2, label="lowest to highest")
        ax.plot(steps, mean, linewidth=1.4, label=f"mean of {len(curves)} seeds")
    ax.set_xlabel("env steps")
    ax.set_ylabel("mean episode return")
    ax.set_title(f"{config.algo} on {config.env} (tempo_jax, one program)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    results.save_figure(fig, path, dpi=120)
    plt.close(fig)
