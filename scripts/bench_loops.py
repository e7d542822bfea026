"""Benchmark: recurrences compiled by tempo_jax against hand-written ``lax.scan``.

Times each workload of ``configs/bench/loops.yaml`` with both systems in one run (both
jitted, compilation excluded, the median of several calls), checks that they agree, and
writes ``results/bench_loops.json`` rows ``{name, system, seconds_median, ratio_vs_scan}``
(``rnn_grad``: the RNN's gradients by backpropagation through time, against ``jax.grad``)
plus a bar plot ``results/bench_loops.png``.

    python -m tempo_jax.scripts.bench_loops [--config configs/bench/loops.yaml] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import tempo_jax as tj
from tempo_jax._passes.tiling import tile_dynamic_ranges
from tempo_jax._passes.vectorize import vectorize
from tempo_jax.configs import read
from tempo_jax.scripts import timing

Workload = tuple[Callable[..., Any], Callable[..., Any], dict[str, np.ndarray]]


def running_sum(steps: int, rng: np.random.Generator) -> Workload:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        s = tj.placeholder((), jnp.float32, domain=(t,))
        s[0] = x[0]
        s[t + 1] = s[t] + x[t + 1]
        p.output("last", s[t.bound - 1])
    compiled = p.compile(bounds={t.bound: steps})

    def scan(x: jax.Array) -> jax.Array:
        return jax.lax.scan(lambda c, xi: (c + xi, None), jnp.zeros((), x.dtype), x)[0]

    return (lambda x: compiled(x=x)["last"]), scan, {"x": rng.normal(size=steps)}


def ema(steps: int, rng: np.random.Generator, width: int, decay: float) -> Workload:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (width,), jnp.float32, domain=(t,))
        m = tj.placeholder((width,), jnp.float32, domain=(t,))
        m[0] = x[0]
        m[t + 1] = decay * m[t] + (1 - decay) * x[t + 1]
        p.output("last", m[t.bound - 1])
    compiled = p.compile(bounds={t.bound: steps})

    def scan(x: jax.Array) -> jax.Array:
        step = lambda c, xi: (decay * c + (1 - decay) * xi, None)  # noqa: E731
        return jax.lax.scan(step, x[0], x)[0]  # from m = x[0], a first step keeps it x[0]

    return (lambda x: compiled(x=x)["last"]), scan, {"x": rng.normal(size=(steps, width))}


def rnn(steps: int, rng: np.random.Generator, layers: int, hidden: int) -> Workload:
    scale = hidden**-0.5
    weights = {
        f"{kind}{k}": (rng.normal(size=(hidden, hidden)) * scale).astype(np.float32)
        for k in range(layers)
        for kind in "wu"
    }
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (hidden,), jnp.float32, domain=(t,))
        below = x
        for k in range(layers):
            w, u = (tj.input(f"{kind}{k}", (hidden, hidden), jnp.float32) for kind in "wu")
            h = tj.placeholder((hidden,), jnp.float32, domain=(t,), name=f"h{k}")
            h[0] = tj.tanh(below[0] @ w)
            h[t + 1] = tj.tanh(below[t + 1] @ w + h[t] @ u)
            below = h
        p.output("last", below[t.bound - 1])
    compiled = p.compile(bounds={t.bound: steps})

    def scan(x: jax.Array, **ws: jax.Array) -> jax.Array:
        def step(hs: tuple[jax.Array, ...], xi: jax.Array) -> tuple[tuple[jax.Array, ...], None]:
            below, new = xi, []
            for k, h in enumerate(hs):
                below = jnp.tanh(below @ ws[f"w{k}"] + h @ ws[f"u{k}"])
                new.append(below)
            return tuple(new), None

        return jax.lax.scan(step, (jnp.zeros(hidden),) * layers, x)[0][-1]

    data = {"x": rng.normal(size=(steps, hidden)), **weights}
    return (lambda **kw: compiled(**kw)["last"]), scan, data


def rnn_grad(steps: int, rng: np.random.Generator, layers: int, hidden: int) -> Workload:
    """Backpropagation through time: the gradient of the RNN's loss for every weight.

    tempo_jax differentiates its program (``tj.grad``: a forward loop, then a reversed one);
    the baseline is ``jax.grad`` of the ``lax.scan`` RNN.
    """
    scale = hidden**-0.5
    names = [f"{kind}{k}" for k in range(layers) for kind in "wu"]
    weights = {n: (rng.normal(size=(hidden, hidden)) * scale).astype(np.float32) for n in names}
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (hidden,), jnp.float32, domain=(t,))
        ws = {n: tj.input(n, (hidden, hidden), jnp.float32) for n in names}
        below = x
        for k in range(layers):
            h = tj.placeholder((hidden,), jnp.float32, domain=(t,), name=f"h{k}")
            h[0] = tj.tanh(below[0] @ ws[f"w{k}"])
            h[t + 1] = tj.tanh(below[t + 1] @ ws[f"w{k}"] + h[t] @ ws[f"u{k}"])
            below = h
        loss = (below**2).mean()
        for n, g in zip(names, tj.grad(loss, [ws[n] for n in names]), strict=True):
            p.output(n, g)
    compiled = p.compile(bounds={t.bound: steps})

    def tempo(**kw: jax.Array) -> jax.Array:
        out = compiled(**kw)
        return jnp.stack([out[n] for n in names])

    def loss_fn(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        def step(hs: tuple[jax.Array, ...], xi: jax.Array) -> tuple[tuple, jax.Array]:
            below, new = xi, []
            for k, h in enumerate(hs):
                below = jnp.tanh(below @ params[f"w{k}"] + h @ params[f"u{k}"])
                new.append(below)
            return tuple(new), (below**2).mean()

        return jax.lax.scan(step, (jnp.zeros(hidden),) * layers, x)[1].sum()

    def scan(x: jax.Array, **ws: jax.Array) -> jax.Array:
        grads = jax.grad(loss_fn)(ws, x)
        return jnp.stack([grads[n] for n in names])

    data = {"x": rng.normal(size=(steps, hidden)), **weights}
    return tempo, scan, data


def batched_rnn(steps: int, rng: np.random.Generator, batch: int, hidden: int) -> Workload:
    """A tanh RNN over ``(b, t)``: ``b`` carries no dependence, so vectorisation makes it an
    array axis; the extra system compiles the same program with vectorisation off."""
    w = (rng.normal(size=(hidden, hidden)) * hidden**-0.5).astype(np.float32)
    with tj.Program() as p:
        b, t = p.dims("b t")
        x = tj.input("x", (hidden,), jnp.float32, domain=(b, t))
        u = tj.input("u", (hidden, hidden), jnp.float32)
        h = tj.placeholder((hidden,), jnp.float32, domain=(b, t))
        h[b, 0] = tj.tanh(x[b, 0])
        h[b, t + 1] = tj.tanh(x[b, t + 1] + h[b, t] @ u)
        p.output("last", h[b, t.bound - 1])
    bounds = {b.bound: batch, t.bound: steps}
    compiled = p.compile(bounds=bounds)
    looped = p.compile(bounds=bounds, pipeline=_without(vectorize))

    def scan(x: jax.Array, u: jax.Array) -> jax.Array:
        step = lambda h, xi: (jnp.tanh(xi + h @ u), None)  # noqa: E731
        xs = jnp.swapaxes(x, 0, 1)
        return jax.lax.scan(step, jnp.tanh(xs[0]), xs[1:])[0]

    data = {"x": rng.normal(size=(batch, steps, hidden)), "u": w}
    extra = {"tempo_jax, vectorisation off": lambda **kw: looped(**kw)["last"]}
    return (lambda **kw: compiled(**kw)["last"]), scan, data, extra


def causal_attention(steps: int, rng: np.random.Generator, heads: int, width: int) -> Workload:
    """Decoding-style causal attention: the key of step ``t`` depends on the output of step
    ``t``, which attends over the keys ``k[0:t+1]`` so far (a cache growing inside the loop).

    tempo_jax visits the cache's live tiles only (one sweep, online max rescaling); the extra
    system turns tiling off (the whole padded range, masked); the baseline scans over ``t``
    carrying the cache and attends over all ``T`` rows with a mask."""
    scale = width**-0.5

    def attend(q: jax.Array, ks: jax.Array) -> jax.Array:
        scores = jnp.einsum("hd,phd->hp", q, ks) * scale
        return jnp.einsum("hp,phd->hd", jax.nn.softmax(scores, axis=-1), ks)

    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (heads, width), jnp.float32, domain=(t,))
        o = tj.placeholder((heads, width), jnp.float32, domain=(t,))
        k = tj.tanh(x + o)  # the cache entry of step t
        o[0] = x[0]
        o[t + 1] = tj.lift(attend)(x[t + 1], k[0 : t + 1])
        p.output("o", o)
    bounds = {t.bound: steps}
    compiled = p.compile(bounds=bounds)
    padded = p.compile(bounds=bounds, pipeline=_without(tile_dynamic_ranges))

    def scan(x: jax.Array) -> jax.Array:
        rows = jnp.arange(steps)

        def step(carry: tuple, at: tuple) -> tuple[tuple, jax.Array]:
            cache, o = carry
            xt, xn, i = at
            cache = jax.lax.dynamic_update_index_in_dim(cache, jnp.tanh(xt + o), i, 0)
            scores = jnp.einsum("hd,phd->hp", xn, cache) * scale
            scores = jnp.where(rows[None, :] <= i, scores, -jnp.inf)
            nxt = jnp.einsum("hp,phd->hd", jax.nn.softmax(scores, axis=-1), cache)
            return (cache, nxt), o

        cache = jnp.zeros((steps, heads, width), x.dtype)
        following = jnp.concatenate([x[1:], x[:1]])
        return jax.lax.scan(step, (cache, x[0]), (x, following, rows))[1]

    data = {"x": rng.normal(size=(steps, heads, width))}
    extra = {"tempo_jax, tiling off": lambda **kw: padded(**kw)["o"]}
    return (lambda **kw: compiled(**kw)["o"]), scan, data, extra


def _without(step: Callable[..., Any]) -> tj.Pipeline:
    """The default pipeline with one pass turned off."""
    return tj.Pipeline(passes=tuple(p for p in tj.Pipeline().passes if p is not step))


WORKLOADS = {
    "running_sum": running_sum,
    "ema": ema,
    "rnn": rnn,
    "rnn_grad": rnn_grad,
    "batched_rnn": batched_rnn,
    "causal_attention": causal_attention,
}


def median_seconds(fn: Callable[..., Any], inputs: dict[str, Any], repeats: int) -> float:
    jax.block_until_ready(fn(**inputs))  # compile and warm up
    return timing.median_seconds(lambda: fn(**inputs), repeats)


def run(config: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, options in config["workloads"].items():
        rng = np.random.default_rng(0)
        options = dict(options or {})
        steps = options.pop("steps", config["steps"])
        repeats = options.pop("repeats", config["repeats"])
        tempo, scan, data, *more = WORKLOADS[name](steps, rng, **options)
        systems = {"lax.scan": scan, "tempo_jax": tempo, **(more[0] if more else {})}
        inputs = {k: jnp.asarray(v, jnp.float32) for k, v in data.items()}
        jitted = {system: jax.jit(fn) for system, fn in systems.items()}
        want = jitted["lax.scan"](**inputs)
        for system, fn in jitted.items():
            diff = float(jnp.max(jnp.abs(fn(**inputs) - want)) / (1 + jnp.max(jnp.abs(want))))
            assert diff < 1e-3, f"{name}: {system} and lax.scan disagree by {diff} (relative)"
        seconds = {system: median_seconds(fn, inputs, repeats) for system, fn in jitted.items()}
        base = seconds["lax.scan"]
        for system, took in seconds.items():
            rows.append(
                {
                    "name": name,
                    "system": system,
                    "steps": steps,
                    "seconds_median": took,
                    "ratio_vs_scan": took / base,
                    "speedup_of_tempo_jax": took / seconds["tempo_jax"],
                }
            )
            print(f"{name:12s} {system:30s} {took * 1e3:9.2f} ms  x{took / base:.2f}")
    return rows


def plot(rows: list[dict[str, Any]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["name"] for r in rows))
    ratios = [
        next(r["ratio_vs_scan"] for r in rows if r["name"] == n and r["system"] == "tempo_jax")
        for n in names
    ]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(names, ratios, color="tab:blue")
    ax.axhline(1.0, color="black", linewidth=0.8, label="lax.scan")
    ax.axhline(1.2, color="tab:red", linestyle="--", linewidth=0.8, label="target 1.2x")
    ax.set_ylabel("time / lax.scan time")
    ax.set_title("tempo_jax vs hand-written lax.scan")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bench/loops.yaml")
    parser.add_argument("--steps", type=int, help="override the config's T")
    parser.add_argument("--out", default="results")
    args = parser.parse_args()
    tj.enable_compilation_cache()  # a second run skips XLA's compile
    config = read(args.config, kind="bench")
    if args.steps:
        config["steps"] = args.steps
    rows = run(config)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "devices": str(jax.devices()),
        "steps": config["steps"],
        "jax": jax.__version__,
    }
    (out / "bench_loops.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    plot(rows, out / "bench_loops.png")
    print(f"wrote {out / 'bench_loops.json'} and {out / 'bench_loops.png'}")


if __name__ == "__main__":
    main()
