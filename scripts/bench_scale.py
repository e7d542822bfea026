"""PPO with its environments split over 1, 2, 4, ... devices (JAX's SPMD), side by side.

Each device count is one compiled run of the same config with ``devices = n`` (the envs dim
``b`` sharded over a mesh axis of ``n`` devices); the runs take turns in rounds
(:func:`scripts.timing.interleaved`). Per count: seconds per iteration, env steps per
second, build + XLA compile seconds, the speed-up over one device, and how far the losses
and parameters are from the one-device run's (an all-reduce sums in another order).

On a CPU the devices are virtual (``XLA_FLAGS=--xla_force_host_platform_device_count=N``,
set by this script before JAX starts when ``--virtual N`` is given): they share the
machine's cores, so the figures show correctness and the overhead of the split, not scaling.

Rows go to ``results/scale/<config>.json`` and a plot to ``.png``.

    python -m tempo_jax.scripts.bench_scale [--config configs/bench/scale_cpu.yaml] [--virtual 8]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import time
from typing import Any


def _virtual(count: int) -> None:
    """Ask XLA for ``count`` virtual CPU devices (read when JAX first uses its backend)."""
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def run(config: dict[str, Any]) -> list[dict[str, Any]]:
    import dataclasses

    import jax
    import numpy as np

    from tempo_jax.algorithms import ppo
    from tempo_jax.algorithms.config import from_dict
    from tempo_jax.scripts.timing import interleaved

    base = from_dict(config["base"])
    counts = [n for n in config["devices"] if n <= len(jax.local_devices())]
    if not counts:
        raise SystemExit(f"no device count of {config['devices']} fits {jax.local_devices()}")
    built = ppo.build(base)
    runs, meta, outs = {}, {}, {}
    for n in counts:
        cfg = dataclasses.replace(base, devices=n)
        start = time.perf_counter()
        train = ppo.compile_run(built, cfg)
        compiled = time.perf_counter()
        call = train.ahead_of_time()
        ready = time.perf_counter()
        outs[n] = jax.block_until_ready(call())
        runs[n] = call
        meta[n] = {"build_seconds": compiled - start, "xla_compile_seconds": ready - compiled}
    times = interleaved({str(n): runs[n] for n in counts}, config["repeats"])
    one = outs[counts[0]]
    steps = base.iterations * base.envs * base.steps
    rows = []
    for n in counts:
        seconds = float(np.median(times[str(n)]))
        leaves = zip(
            jax.tree_util.tree_leaves(outs[n]["params"]),
            jax.tree_util.tree_leaves(one["params"]),
            strict=True,
        )
        rows.append(
            {
                "system": "tempo_jax",
                "devices": n,
                "seconds_per_iteration": seconds / base.iterations,
                "env_steps_per_second": steps / seconds,
                "compile_seconds": meta[n]["build_seconds"] + meta[n]["xla_compile_seconds"],
                **meta[n],
                "speedup": float(np.median(times[str(counts[0])])) / seconds,
                "max_abs_loss_diff": float(
                    np.max(np.abs(np.asarray(outs[n]["loss"]) - np.asarray(one["loss"])))
                ),
                "max_abs_param_diff": max(
                    float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in leaves
                ),
            }
        )
    return rows


def plot(rows: list[dict[str, Any]], path: pathlib.Path, virtual: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tempo_jax.scripts.results import save_figure

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    counts = [r["devices"] for r in rows]
    ax.plot(counts, [r["env_steps_per_second"] for r in rows], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.set_xlabel("virtual CPU devices" if virtual else "devices")
    ax.set_ylabel("env steps per second")
    ax.set_title("PPO, envs split over devices")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bench/scale_cpu.yaml")
    parser.add_argument("--virtual", type=int, help="virtual CPU devices (set before JAX starts)")
    parser.add_argument("--out", default="results/scale")
    args = parser.parse_args()
    if args.virtual:
        _virtual(args.virtual)
    import jax

    from tempo_jax.configs import read
    from tempo_jax.scripts.results import write_json

    config = read(args.config, kind="bench")
    rows = run(config)
    for r in rows:
        print(
            f"{r['devices']} devices: {r['seconds_per_iteration'] * 1e3:8.2f} ms/iteration "
            f"({r['speedup']:.2f}x one device), compile {r['compile_seconds']:.1f} s, "
            f"|loss - one device| {r['max_abs_loss_diff']:.1e}"
        )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = pathlib.Path(args.config).stem
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "devices": str(jax.devices()),
        "virtual": bool(args.virtual) or jax.default_backend() == "cpu",
        "jax": jax.__version__,
        "config": config,
    }
    write_json(out / f"{stem}.json", {"rows": rows, "meta": meta})
    plot(rows, out / f"{stem}.png", meta["virtual"])
    print(f"wrote {out}/{stem}.{{json,png}}")


if __name__ == "__main__":
    main()
