"""Benchmark: RL training as one tempo_jax program against the two JAX baselines.

For each point of a sweep (one factor at a time around a base: network layers and width,
episode length, number of environments; ``configs/bench/rl_cpu_small.yaml`` here,
``configs/bench/rl_paper.yaml`` for the paper's sizes), every system trains the same
algorithm with the same config and keys, side by side in one run:

- ``tempo_jax``: the whole run is one compiled tempo_jax program (:mod:`algorithms.ppo`);
- ``single_jit``: hand-written ``lax.scan`` PPO under one ``jax.jit``
  (:mod:`algorithms.baselines.ppo_jax`);
- ``actor_learner``: a Python loop over a jitted policy and env step, then a jitted learner
  that recomputes the forward pass (:mod:`algorithms.baselines.actor_learner`).

Each system is built and called once (compilation), then timed over ``repeats`` rounds in
which the systems take turns (the median; a ratio is the median of the per-round ratios).
Rows go to ``results/rl/bench_<config>.json``: ``{algo, system, factor, value,
seconds_per_iteration, steps_per_second, build_seconds, xla_compile_seconds, compile_seconds
(build + XLA), ratio_vs_single_jit}``, with a plot ``results/rl/bench_<config>.png`` (one
panel per factor).

    python -m tempo_jax.scripts.bench_rl [--config configs/bench/rl_cpu_small.yaml] [--only base]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import tempo_jax as tj
from tempo_jax.algorithms import envs, ppo
from tempo_jax.algorithms.baselines import actor_learner, ppo_jax
from tempo_jax.algorithms.config import RLConfig
from tempo_jax.configs import ConfigError, read
from tempo_jax.scripts import results
from tempo_jax.scripts.timing import interleaved

SYSTEMS: dict[str, dict[str, Callable[[RLConfig], Callable[[], dict[str, Any]]]]] = {
    "ppo": {
        "tempo_jax": ppo.make_train,
        "single_jit": ppo_jax.make_train,
        "actor_learner": actor_learner.make_train,
    },
}

FACTORS = ("layers", "width", "steps", "envs")  # ``steps`` is the episode length


def point_config(base: dict[str, Any], factor: str, value: Any) -> RLConfig:
    """The config of one sweep point: ``base`` with ``factor`` set to ``value`` (an episode
    length sets the trivial environment's episode too)."""
    fields = {**base, "env_options": dict(base.get("env_options", {}))}
    if factor != "base":
        fields[factor] = value
    if fields.get("env") == "trivial":
        fields["env_options"]["episode"] = fields["steps"]
        if "obs_shape" in fields["env_options"]:
            fields["env_options"]["obs_shape"] = tuple(fields["env_options"]["obs_shape"])
    return RLConfig(**fields)


def _wait(out: dict[str, Any]) -> dict[str, Any]:
    jax.block_until_ready(out)
    return out


def prepare(
    make: Callable[[RLConfig], Callable[[], dict[str, Any]]], config: RLConfig
) -> tuple[dict[str, float], Callable[[], dict[str, Any]], dict[str, Any], float | None]:
    """``({build, xla_compile} seconds, the run, its first outputs, the first call's seconds
    where XLA compiles during it)``.

    A system that compiles ahead of time (tempo_jax's ``ahead_of_time``, a ``jax.jit``
    function's ``lower().compile()``) is timed stage by stage; one that compiles as it runs
    (the actor-learner's Python loop over jitted pieces) counts its first call's excess over a
    timed run as its XLA compile (:func:`bench_point`).
    """
    start = time.perf_counter()
    run = make(config)
    build = time.perf_counter() - start
    start = time.perf_counter()
    ahead = True
    if hasattr(run, "ahead_of_time"):
        run = run.ahead_of_time()
    elif hasattr(run, "lower"):
        run = run.lower().compile()
    else:
        ahead = False
    xla = time.perf_counter() - start
    start = time.perf_counter()
    out = _wait(run())
    first = time.perf_counter() - start
    return {"build": build, "xla_compile": xla}, run, out, None if ahead else first


def _start_jax() -> None:
    """Start JAX's backend and XLA's compiler with a trivial program, so that whichever system
    is timed first does not also pay for starting them (a cold cache still: the program is
    not any system's)."""
    jax.block_until_ready(jax.jit(lambda x: x * 2 + 1).lower(jnp.float32(1)).compile()(1.0))


def bench_point(
    algo: str, factor: str, value: Any, config: RLConfig, settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """One sweep point, every system side by side; ``actor_learner`` runs fewer iterations
    (``settings["actor_learner_iterations"]``): its time per iteration does not depend on
    how many it runs."""
    outputs, runs, prepared = {}, {}, {}
    envs.make(config.env, **config.env_options)  # imported before any system is timed
    _start_jax()
    for system, make in SYSTEMS[algo].items():
        if system in settings.get("skip", []):
            continue
        cfg = config
        if system == "actor_learner":
            cfg = dataclasses.replace(config, iterations=settings["actor_learner_iterations"])
        stages, runs[system], outputs[system], first = prepare(make, cfg)
        prepared[system] = (cfg, stages, first)
    times = interleaved(runs, settings["repeats"])
    per_iteration = {
        system: [t / prepared[system][0].iterations for t in ts] for system, ts in times.items()
    }
    rows = []
    for system, (cfg, stages, first) in prepared.items():
        seconds = statistics.median(times[system])
        xla = stages["xla_compile"] if first is None else max(0.0, first - seconds)
        row = {
            "algo": algo,
            "system": system,
            "factor": factor,
            "value": value,
            "iterations": cfg.iterations,
            "seconds_per_iteration": seconds / cfg.iterations,
            "steps_per_second": cfg.iterations * cfg.envs * cfg.steps / seconds,
            "build_seconds": stages["build"],
            "xla_compile_seconds": xla,
            "compile_seconds": stages["build"] + xla,
        }
        if "single_jit" in per_iteration:  # per round, then the median: both in one spell
            ratios = [
                a / b
                for a, b in zip(per_iteration[system], per_iteration["single_jit"], strict=True)
            ]
            row["ratio_vs_single_jit"] = statistics.median(ratios)
        rows.append(row)
    if "tempo_jax" in outputs and "single_jit" in outputs:  # the same run, computed twice
        got, want = (np.asarray(outputs[s]["loss"]) for s in ("tempo_jax", "single_jit"))
        diff = float(np.max(np.abs(got - want) / (np.abs(want) + 1e-6)))
        for row in rows:
            row["loss_rel_diff_vs_single_jit"] = diff
    return rows


def sweep(config: dict[str, Any], only: str | None = None) -> list[dict[str, Any]]:
    """Every (algo, factor, value) point of ``config``: the base, then each factor's values."""
    settings = {
        "repeats": config.get("repeats", 3),
        "actor_learner_iterations": config.get("actor_learner_iterations", 2),
        "skip": config.get("skip", []),
    }
    base = config["base"]
    points: list[tuple[str, Any]] = [("base", None)]
    for factor in FACTORS:
        points += [
            (factor, v) for v in config.get("sweep", {}).get(factor, []) if v != base[factor]
        ]
    if only is not None and all(factor != only for factor, _ in points):
        factors = ", ".join(dict.fromkeys(factor for factor, _ in points))
        raise ConfigError(f"--only {only}: no such factor in this config; it has: {factors}")
    rows = []
    for algo in config.get("algos", ["ppo"]):
        for factor, value in points:
            if only is not None and factor != only:
                continue
            cfg = point_config({**base, "algo": algo}, factor, value)
            shown = value if factor != "base" else "-"
            print(f"{algo} {factor}={shown}: B={cfg.envs} T={cfg.steps} {cfg.layers}x{cfg.width}")
            for row in bench_point(algo, factor, value, cfg, settings):
                rows.append(row)
                print(
                    f"  {row['system']:>13}: {row['seconds_per_iteration'] * 1e3:9.2f} ms/it "
                    f"{row['steps_per_second']:12.0f} steps/s "
                    f"x{row.get('ratio_vs_single_jit', float('nan')):.2f} vs single_jit"
                )
    return rows


def plot(rows: list[dict[str, Any]], base: dict[str, Any], path: pathlib.Path) -> None:
    """One panel per factor: seconds per iteration against the factor's value, per system
    (the base point is on every panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FACTORS), figsize=(4 * len(FACTORS), 3.2))
    systems = sorted({r["system"] for r in rows})
    for ax, factor in zip(axes, FACTORS, strict=True):
        for system in systems:
            points = [
                (base[factor] if r["factor"] == "base" else r["value"], r["seconds_per_iteration"])
                for r in rows
                if r["system"] == system and r["factor"] in ("base", factor)
            ]
            if not points:
                continue
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=system)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel({"steps": "episode length"}.get(factor, factor))
        ax.set_ylabel("seconds per iteration")
    axes[0].legend(fontsize=7)
    fig.suptitle("RL training: one iteration (rollout, returns, update), lower is better")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bench/rl_cpu_small.yaml")
    parser.add_argument("--only", help="run one factor of the sweep (e.g. base)")
    parser.add_argument("--out", default="results/rl")
    args = parser.parse_args()
    tj.enable_compilation_cache()  # a second run skips XLA's compile
    try:
        config = read(args.config, kind="bench")
        rows = sweep(config, args.only)
    except ConfigError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    out = pathlib.Path(args.out)
    meta = {
        "config": args.config,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
    }
    stem = f"bench_{pathlib.Path(args.config).stem}"  # one file per config
    results.write_json(out / f"{stem}.json", {"meta": meta, "rows": rows})
    plot(rows, config["base"], out / f"{stem}.png")
    print(f"wrote {out / stem}.json and .png")


if __name__ == "__main__":
    main()
