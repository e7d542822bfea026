"""Benchmark: causal attention over inputs ``(b, t)`` and its gradient, tempo_jax against
hand-written JAX.

The program is attention written op by op, ``s = k[b, 0:t+1] @ q[b, t]``,
``o = softmax(s) @ v[b, 0:t+1]``; tempo_jax fuses it into one op and computes it in query
blocks over the key tiles that hold data (block-causal). Its gradient (of
``sum(o * w)`` with respect to ``q``, ``k`` and ``v``) is two more tiled ops in query blocks: a
stats op per query (``dq`` and the row statistics) and a rows op per key (``dk``, ``dv``). The
baselines, in the same run:

- ``masked JAX``: the vectorised masked form a user would write (``(T, T)`` scores, a
  ``tril`` mask, softmax, a second product), and ``jax.grad`` of it;
- ``jax.nn.dot_product_attention``: JAX's own, ``is_causal=True``, and ``jax.grad`` of it.

All are jitted, compilation excluded, the median of ``repeats`` calls; they must agree.
Per pass (``forward``: sizes ``steps``; ``gradient``: sizes ``grad_steps``) and size ``T``, a
row per system: seconds, the ratio to the faster baseline, and the XLA temporary memory of its
compiled executable (``memory_analysis().temp_size_in_bytes``).
Writes ``results/attention/bench_attention.json`` and ``.csv`` and a plot ``.png``.

    python -m tempo_jax.scripts.bench_attention [--config configs/bench/attention.yaml]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import platform
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import tempo_jax as tj
from tempo_jax.configs import read
from tempo_jax.scripts import timing

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


def tempo_gradient(batch: int, steps: int, width: int) -> Callable[..., tuple[jax.Array, ...]]:
    """The gradient of ``sum(attention(q, k, v) * w)`` compiled by tempo_jax, as
    ``fn(q, k, v, w) -> (dq, dk, dv)``."""
    with tj.Program() as p:
        b, t = p.dims("b t")
        q, k, v, w = (tj.input(n, (width,), jnp.float32, domain=(b, t)) for n in "qkvw")
        s = k[b, 0 : t + 1] @ q[b, t] * (width**-0.5)
        o = tj.softmax(s) @ v[b, 0 : t + 1]
        grads = tj.grad((o * w[b, t]).sum(), [q, k, v])
        for name, g in zip("qkv", grads, strict=True):
            p.output(name, g[b, 0 : t.bound])
    compiled = p.compile(bounds={b.bound: batch, t.bound: steps})

    def fn(q: jax.Array, k: jax.Array, v: jax.Array, w: jax.Array) -> tuple[jax.Array, ...]:
        out = compiled(q=q, k=k, v=v, w=w)
        return out["q"], out["k"], out["v"]

    return fn


def _gradient(attention: Callable[..., jax.Array]) -> Callable[..., tuple[jax.Array, ...]]:
    """``jax.grad`` of ``sum(attention(q, k, v) * w)`` with respect to ``q``, ``k``, ``v``."""
    loss = lambda q, k, v, w: (attention(q, k, v) * w).sum()  # noqa: E731
    return jax.grad(loss, argnums=(0, 1, 2))


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
    return timing.median_seconds(lambda: fn(*args), repeats)


def run(config: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for kind, sizes in (("forward", config["steps"]), ("gradient", config.get("grad_steps", []))):
        for steps in sizes:
            rows += _measure(kind, steps, config)
    return rows


def _systems(kind: str, batch: int, steps: int, width: int) -> dict[str, Callable[..., Any]]:
    if kind == "forward":
        return {
            "tempo_jax": jax.jit(tempo_attention(batch, steps, width)),
            "masked JAX": jax.jit(masked),
            "jax.nn.dot_product_attention": jax.jit(dot_product),
        }
    return {
        "tempo_jax": jax.jit(tempo_gradient(batch, steps, width)),
        "masked JAX": jax.jit(_gradient(masked)),
        "jax.nn.dot_product_attention": jax.jit(_gradient(dot_product)),
    }


def _measure(kind: str, steps: int, config: dict[str, Any]) -> list[dict[str, Any]]:
    batch, width, repeats = config["batch"], config["width"], config["repeats"]
    rng = np.random.default_rng(steps)
    arrays = [jnp.asarray(rng.normal(size=(batch, steps, width)), jnp.float32) for _ in "qkvw"]
    args = tuple(arrays[:3]) if kind == "forward" else tuple(arrays)
    systems = _systems(kind, batch, steps, width)
    want = jax.tree.leaves(systems["masked JAX"](*args))
    for system, fn in systems.items():
        got = jax.tree.leaves(fn(*args))
        diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(got, want, strict=True))
        assert diff < 1e-3, f"{kind} T={steps}: {system} and masked JAX disagree by {diff}"
    seconds = {system: median_seconds(fn, args, repeats) for system, fn in systems.items()}
    fastest = min(seconds[s] for s in BASELINES)
    rows = []
    for system, fn in systems.items():
        memory = fn.lower(*args).compile().memory_analysis()
        rows.append(
            {
                "pass": kind,
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
            f"{kind:8s} T={steps:6d} {system:30s} {seconds[system] * 1e3:9.2f} ms  "
            f"x{seconds[system] / fastest:.2f}  temp {mib:8.1f} MiB"
        )
    return rows


def plot(rows: list[dict[str, Any]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    passes = list(dict.fromkeys(r["pass"] for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, axes = plt.subplots(len(passes), 2, figsize=(9, 3.2 * len(passes)), squeeze=False)
    for (left, right), kind in zip(axes, passes, strict=True):
        for system in systems:
            mine = [r for r in rows if r["system"] == system and r["pass"] == kind]
            steps = [r["steps"] for r in mine]
            left.plot(steps, [r["seconds_median"] for r in mine], marker="o", label=system)
            right.plot(steps, [r["temp_bytes"] / 2**20 for r in mine], marker="o", label=system)
        for ax, label in ((left, "seconds (median)"), (right, "XLA temp memory (MiB)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("T")
            ax.set_ylabel(label)
        left.legend(fontsize=7)
        left.set_title(f"causal attention {kind}, B x T x D")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bench/attention.yaml")
    parser.add_argument("--out", default="results/attention")
    args = parser.parse_args()
    tj.enable_compilation_cache()  # a second run skips XLA's compile
    config = read(args.config, kind="bench")
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
