"""Benchmark: causal attention over inputs ``(b, t)``, tempo_jax against hand-written JAX.

The program is attention written op by op, ``s = k[b, 0:t+1] @ q[b, t]``,
``o = softmax(s) @ v[b, 0:t+1]``; tempo_jax fuses it into one op and computes it in query
blocks over the key tiles that hold data (block-causal). The baselines, in the same run:

- ``masked JAX``: the vectorised masked form a user would write (``(T, T)`` scores, a
  ``tril`` mask, softmax, a second product);
- ``jax.nn.dot_product_attention``: JAX's own, ``is_causal=True``.

All three are jitted, compilation excluded, the median of ``repeats`` calls; they must agree.
Per size ``T`` a row per system: seconds, the ratio to the faster baseline, and the XLA
temporary memory of its compiled executable (``memory_analysis().temp_size_in_bytes``).
Writes ``results/attention/bench_attention.json`` and ``.csv`` and a plot ``.png``.

    python -m scripts.bench_attention [--config configs/bench/attention.yaml]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import platform
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml

import tempo_jax as tj

BASELINES = ("masked JAX", "jax.nn.dot_product_attention")


def tempo_attention(batch: int, steps: int, width: int) -> Callable[..., jax.Array]:
    """Causal attention compiled by tempo_jax, as ``fn(q, k, v) -> o`` over ``[B, T, D]``."""
    with tj.Program() as p:
        b, t = p.dims("b t")
        q = tj.input("q", (width,), jnp.float32, domain=(b, t))
        k = tj.input("k", (width,), jnp.float32, domain=(b, t))
        v = tj.input("v", (width,), jnp.float32, domain=(b, t))
        s = k[b, 0 : t + 1] @ q[b, t] * (width**-0.5)
        p.output("o", tj.softmax(s) @ v[b, 0 : t + 1])
    compiled = p.compile(bounds={b.bound: batch, t.bound: steps})
    return lambda q, k, v: compiled(q=q, k=k, v=v)["o"]


def masked(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """The vectorised masked form: every score, the upper triangle masked."""
    steps = q.shape[1]
    scores = jnp.einsum("btd,bsd->bts", q, k) * (q.shape[-1] ** -0.5)
    scores = jnp.where(jnp.tril(jnp.ones((steps, steps), bool)), scores, -jnp.inf)
    return jnp.einsum("bts,bsd->btd", jax.nn.softmax(scores, axis=-1), v)


def dot_product(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """``jax.nn.dot_product_attention`` with one head, causal."""
    heads = [x[:, :, None, :] for x in (q, k, v)]
    return jax.nn.dot_product_attention(*heads, is_causal=True)[:, :, 0, :]


def median_seconds(fn: Callable[..., Any], args: tuple, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(config: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    batch, width, repeats = config["batch"], config["width"], config["repeats"]
    for steps in config["steps"]:
        rng = np.random.default_rng(steps)
        args = tuple(
            jnp.asarray(rng.normal(size=(batch, steps, width)), jnp.float32) for _ in "qkv"
        )
        systems = {
            "tempo_jax": jax.jit(tempo_attention(batch, steps, width)),
            "masked JAX": jax.jit(masked),
            "jax.nn.dot_product_attention": jax.jit(dot_product),
        }
        want = systems["masked JAX"](*args)
        for system, fn in systems.items():
            diff = float(jnp.max(jnp.abs(fn(*args) - want)))
            assert diff < 1e-3, f"T={steps}: {system} and masked JAX disagree by {diff}"
        seconds = {system: median_seconds(fn, args, repeats) for system, fn in systems.items()}
        fastest = min(seconds[s] for s in BASELINES)
        for system, fn in systems.items():
            memory = fn.lower(*args).compile().memory_analysis()
            rows.append(
                {
                    "steps": steps,
                    "batch": batch,
                    "width": width,
                    "system": system,
                    "seconds_median": seconds[system],
                    "ratio_vs_fastest_baseline": seconds[system] / fastest,
                    "temp_bytes": int(memory.temp_size_in_bytes),
                }
            )
            mib = memory.temp_size_in_bytes / 2**20
            print(
                f"T={steps:6d} {system:30s} {seconds[system] * 1e3:9.2f} ms  "
                f"x{seconds[system] / fastest:.2f}  temp {mib:8.1f} MiB"
            )
    return rows


def plot(rows: list[dict[str, Any]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for system in systems:
        mine = [r for r in rows if r["system"] == system]
        steps = [r["steps"] for r in mine]
        left.plot(steps, [r["seconds_median"] for r in mine], marker="o", label=system)
        right.plot(steps, [r["temp_bytes"] / 2**20 for r in mine], marker="o", label=system)
    for ax, label in ((left, "seconds (median)"), (right, "XLA temp memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T")
        ax.set_ylabel(label)
    left.legend(fontsize=7)
    left.set_title("causal attention, B x T x D")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bench/attention.yaml")
    parser.add_argument("--out", default="results/attention")
    args = parser.parse_args()
    tj.enable_compilation_cache()  # a second run skips XLA's compile
    config = yaml.safe_load(pathlib.Path(args.config).read_text())
    rows = run(config)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "devices": str(jax.devices()),
        "jax": jax.__version__,
        "config": config,
    }
    (out / "bench_attention.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    with (out / "bench_attention.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "bench_attention.png")
    print(f"wrote {out}/bench_attention.{{json,csv,png}}")


if __name__ == "__main__":
    main()
