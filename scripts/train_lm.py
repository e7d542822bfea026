"""Train a GPT-2-style character-level language model as one tempo_jax program.

The corpus is synthetic text, lines of additions ``"17+25=42"`` (one character a token), cut
into windows of ``seq_len + 1`` characters, ``batch`` windows per iteration. The program
(:mod:`models.train`) runs every iteration (teacher forcing over ``(i, t)``, ``tj.grad``, an
optax Adam step) in one compiled program; the hand-written JAX/optax loop of the same model
(:mod:`models.baselines.train_loop`, a ``lax.scan`` of ``jax.value_and_grad`` steps in one
``jax.jit``) trains on the same batches in the same run. Both curves must agree to 1e-4 over
the first ``compare_steps`` steps.

Writes ``results/train/<config>.json`` (summary: losses, agreement, build / XLA compile / run
seconds of both, seconds per iteration and their ratio: the median over rounds in which the
two take turns), ``.csv`` (the loss per step of both)
and ``.png`` (the loss curves).

    python -m tempo_jax.scripts.train_lm [--config configs/train/lm_tiny.yaml]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import tempo_jax as tj
from tempo_jax.configs import read
from tempo_jax.models import train
from tempo_jax.models.baselines import train_loop
from tempo_jax.models.config import DecoderConfig
from tempo_jax.models.params import init_params
from tempo_jax.scripts.timing import interleaved, set_precision

ALPHABET = "0123456789+=\n"


def corpus(lines: int, seed: int) -> np.ndarray:
    """Token ids of ``lines`` lines ``a+b=c`` (``a, b < 100``), ``ALPHABET`` as the vocabulary."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 100, size=(2, lines))
    text = "".join(f"{x}+{y}={x + y}\n" for x, y in zip(a, b, strict=True))
    return np.array([ALPHABET.index(c) for c in text], np.int32)


def batches(tokens: np.ndarray, iterations: int, batch: int, seq_len: int, seed: int) -> Any:
    """``[iterations, batch, seq_len + 1]`` windows of ``tokens`` at random offsets."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - seq_len - 1, size=(iterations, batch))
    return tokens[starts[..., None] + np.arange(seq_len + 1)]


HAND = "hand-written JAX"
SPLIT = "tempo_jax split backward"  # the ablation: attention's backward in tiles, not dense


def _compiled(program: tj.Program, bounds: dict, rows: Any, pipeline: Any = None) -> Any:
    """``(the ahead-of-time call, its outputs, build and XLA compile seconds)``."""
    start = time.perf_counter()
    compiled = program.compile(bounds, pipeline=pipeline)
    built = time.perf_counter()
    call = compiled.ahead_of_time(tokens=rows)
    xla = time.perf_counter()
    out = call(tokens=rows)
    jax.block_until_ready(out)
    return call, out, {"build_seconds": built - start, "xla_compile_seconds": xla - built}


def model(config: dict[str, Any]) -> tuple[DecoderConfig, Any, optax.GradientTransformation]:
    """The model config, initial parameters and optimiser ``config`` describes."""
    spec, opts = config["model"], config["train"]
    cfg = DecoderConfig(vocab=len(ALPHABET), max_len=opts["seq_len"], norm_eps=1e-5, **spec)
    params = init_params(cfg, jax.random.PRNGKey(opts["seed"]))
    return cfg, params, optax.adam(opts["learning_rate"])


def program_bounds(config: dict[str, Any]) -> dict[str, int]:
    """The training program's bounds: ``I`` optimiser steps of ``T`` positions."""
    return {"I": config["train"]["iterations"], "T": config["train"]["seq_len"]}


def run(config: dict[str, Any]) -> dict[str, Any]:
    data, opts = config["corpus"], config["train"]
    tokens = corpus(data["lines"], data["seed"])
    steps, size, length = opts["iterations"], opts["batch"], opts["seq_len"]
    cfg, params, tx = model(config)
    rows = batches(tokens, steps, size, length, opts["seed"])

    start = time.perf_counter()
    program = train.build_training_program(cfg, params, tx, batch=size, seq_len=length)
    recorded = time.perf_counter() - start
    bounds = program_bounds(config)
    call, out, tempo = _compiled(program, bounds, rows)
    tempo["build_seconds"] += recorded
    runs = {"tempo_jax": lambda: call(tokens=rows)}
    systems = {"tempo_jax": tempo}
    if opts.get("compare_split_backward"):
        split = tj.Pipeline().without("dense_range_grads")
        split_call, split_out, systems[SPLIT] = _compiled(program, bounds, rows, split)
        runs[SPLIT] = lambda: split_call(tokens=rows)

    start_params = train.per_layer(cfg, params)
    batches_dev = jnp.asarray(rows)
    start = time.perf_counter()
    lowered = train_loop.train.lower(cfg, tx, start_params, batches_dev).compile()
    xla = time.perf_counter()
    losses, _ = lowered(start_params, batches_dev)
    hand = {"build_seconds": 0.0, "xla_compile_seconds": xla - start}
    runs[HAND] = lambda: lowered(start_params, batches_dev)
    systems[HAND] = hand
    times = interleaved(runs, opts["repeats"])
    for name, r in systems.items():
        r["run_seconds"] = float(np.median(times[name]))
    ratios = {
        name: [a / b for a, b in zip(times[name], times[HAND], strict=True)]
        for name in runs
        if name != HAND
    }
    mine, theirs = np.asarray(out["loss"]), np.asarray(losses)
    curves = {"tempo_jax": mine}
    if SPLIT in systems:
        curves[SPLIT] = np.asarray(split_out["loss"])
    curves[HAND] = theirs
    compare = opts["compare_steps"]
    diff = max(float(np.max(np.abs(c[:compare] - theirs[:compare]))) for c in curves.values())
    per_iter = {name: r["run_seconds"] / steps for name, r in systems.items()}
    print(f"loss {mine[0]:.4f} -> {mine[-1]:.4f} over {steps} steps")
    print(f"max |tempo_jax - hand-written| over the first {compare} steps: {diff:.2e}")
    for name, r in systems.items():
        print(
            f"{name:24s} build {r['build_seconds']:6.2f} s  XLA {r['xla_compile_seconds']:6.2f} s"
            f"  run {r['run_seconds']:7.3f} s ({r['run_seconds'] / steps * 1e3:.2f} ms/iteration)"
        )
    for name, rounds in ratios.items():
        print(
            f"{name} / hand-written per iteration: x{np.median(rounds):.2f} (median of "
            f"{len(rounds)} interleaved rounds; x{min(rounds):.2f} to x{max(rounds):.2f})"
        )
    summary = {
        "losses": {name: c.tolist() for name, c in curves.items()},
        "max_abs_loss_diff_first_steps": diff,
        "compare_steps": compare,
        "agree": diff <= 1e-4,
        **systems,
        "seconds_per_iteration": per_iter,
        "ratio_per_iteration": float(np.median(ratios["tempo_jax"])),
        "ratio_per_round": ratios["tempo_jax"],
    }
    if SPLIT in ratios:
        summary["ratio_per_iteration_split_backward"] = float(np.median(ratios[SPLIT]))
        summary["ratio_per_round_split_backward"] = ratios[SPLIT]
    return summary


def plot(summary: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, losses in summary["losses"].items():
        ax.plot(
            np.arange(len(losses)), losses, label=name, linestyle="-" if "tempo" in name else "--"
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("next-character loss")
    ax.set_title("character-level LM, one program")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/train/lm_tiny.yaml")
    parser.add_argument("--out", default="results/train")
    args = parser.parse_args()
    tj.enable_compilation_cache()
    config = read(args.config, kind="train")
    set_precision(config)
    summary = run(config)
    summary["meta"] = {
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "devices": str(jax.devices()),
        "jax": jax.__version__,
        "config": config,
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = pathlib.Path(args.config).stem
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    with (out / f"{stem}.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["iteration", *summary["losses"]])
        writer.writerows(
            zip(
                range(len(summary["losses"]["tempo_jax"])), *summary["losses"].values(), strict=True
            )
        )
    plot(summary, out / f"{stem}.png")
    print(f"wrote {out}/{stem}.{{json,csv,png}}")
    if not summary["agree"]:
        raise SystemExit("the loss curves disagree")


if __name__ == "__main__":
    main()
