"""PPO and decoding split over 1, 2, 4, ... devices (JAX's SPMD), side by side.

- **PPO** (the config's ``base``): each device count is one compiled run of the same config
  with ``devices = n`` (the envs dim ``b`` sharded over a mesh axis of ``n`` devices). Per
  count: seconds per iteration, env steps per second, build + XLA compile seconds, the
  speed-up over one device, and how far the losses and parameters are from the one-device
  run's (an all-reduce sums in another order).
- **Decoding** (the config's ``decode`` section, optional): one :class:`models.tempo.
  TempoDecoder` per mesh ``[devices, tensor_parallel]`` (:func:`models.sharding.decode_mesh`:
  prompt rows over ``devices / tensor_parallel``, heads and hidden units over
  ``tensor_parallel``). Per mesh: seconds per call, new tokens per second, compile seconds,
  the speed-up over the first mesh, whether the tokens equal its tokens, and the largest
  difference of the logits.

Within each part the runs take turns in rounds (:func:`scripts.timing.interleaved`).

On a CPU the devices are virtual (``XLA_FLAGS=--xla_force_host_platform_device_count=N``,
set by this script before JAX starts when ``--virtual N`` is given): they share the
machine's cores, so the figures show correctness and the overhead of the split, not scaling.

Rows go to ``results/scale/<config>.json`` and a plot to ``.png``.

    python -m tempo_jax.scripts.bench_scale [--config configs/bench/scale_cpu.yaml] [--virtual 8]
"""

from __future__ import annotations

import argparse
import functools
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
                "workload": "ppo",
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


def run_decode(section: dict[str, Any]) -> list[dict[str, Any]]:
    """The decoding rows (module docstring) for the config's ``decode`` section."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tempo_jax.models.config import DecoderConfig
    from tempo_jax.models.params import init_params
    from tempo_jax.models.sharding import decode_mesh
    from tempo_jax.models.tempo import TempoDecoder
    from tempo_jax.scripts.timing import interleaved

    batch, prompt_len, steps = section["batch"], section["prompt_len"], section["steps"]
    fields = {"norm_eps": 1e-5, "tie_embeddings": True, **section["model"]}
    cfg = DecoderConfig(**fields, max_len=prompt_len + steps)
    params = init_params(cfg, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    prompt = jnp.asarray(rng.integers(0, cfg.vocab, (batch, prompt_len)), jnp.int32)
    meshes = [
        (n, tp) for n, tp in section["meshes"] if n <= len(jax.local_devices()) and n % tp == 0
    ]
    runs, meta, outs = {}, {}, {}
    for n, tp in meshes:
        start = time.perf_counter()
        mesh = None if n == 1 else decode_mesh(n, tp)
        decoder = TempoDecoder(cfg, batch, prompt_len, steps, block=section["block"], mesh=mesh)
        inputs = decoder.inputs(params, prompt)
        compiled = time.perf_counter()
        call = decoder.compiled.ahead_of_time(**inputs)
        ready = time.perf_counter()
        outs[(n, tp)] = jax.block_until_ready(call(**inputs))
        runs[f"{n}x{tp}"] = functools.partial(call, **inputs)
        meta[(n, tp)] = {
            "build_seconds": compiled - start,
            "xla_compile_seconds": ready - compiled,
        }
    times = interleaved(runs, section["repeats"])
    first = meshes[0]
    base = float(np.median(times[f"{first[0]}x{first[1]}"]))
    rows = []
    for n, tp in meshes:
        seconds = float(np.median(times[f"{n}x{tp}"]))
        out, one = outs[(n, tp)], outs[first]
        rows.append(
            {
                "system": "tempo_jax",
                "workload": "decode",
                "devices": n,
                "tensor_parallel": tp,
                "seconds_per_call": seconds,
                "tokens_per_second": batch * steps / seconds,
                "compile_seconds": sum(meta[(n, tp)].values()),
                **meta[(n, tp)],
                "speedup": base / seconds,
                "tokens_equal": bool(
                    np.array_equal(out["tokens"], one["tokens"])
                    and np.array_equal(out["first"], one["first"])
                ),
                "max_abs_logit_diff": float(
                    np.max(np.abs(np.asarray(out["logits"]) - np.asarray(one["logits"])))
                ),
            }
        )
    return rows


def plot(rows: list[dict[str, Any]], path: pathlib.Path, virtual: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from tempo_jax.scripts.results import save_figure

    ppo = [r for r in rows if r.get("workload", "ppo") == "ppo"]
    decode = [r for r in rows if r.get("workload") == "decode"]
    fig, axes = plt.subplots(1, 1 + bool(decode), figsize=(4.5 + 4.5 * bool(decode), 3.2))
    axes = list(np.atleast_1d(axes))
    counts = [r["devices"] for r in ppo]
    axes[0].plot(counts, [r["env_steps_per_second"] for r in ppo], marker="o")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(counts, [str(n) for n in counts])
    axes[0].set_ylabel("env steps per second")
    axes[0].set_title("PPO, envs split over devices")
    if decode:
        for tp in sorted({r["tensor_parallel"] for r in decode}):
            part = [r for r in decode if r["tensor_parallel"] == tp]
            label = "rows only" if tp == 1 else f"heads over {tp}"
            xs = [r["devices"] for r in part]
            axes[1].plot(xs, [r["tokens_per_second"] for r in part], marker="o", label=label)
        axes[1].set_xscale("log", base=2)
        counts = sorted({r["devices"] for r in decode})
        axes[1].set_xticks(counts, [str(n) for n in counts])
        axes[1].set_ylabel("new tokens per second")
        axes[1].set_title("decoding, rows (and heads) split")
        axes[1].legend()
    for ax in axes:
        ax.set_xlabel("virtual CPU devices" if virtual else "devices")
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
            f"PPO, {r['devices']} devices: {r['seconds_per_iteration'] * 1e3:8.2f} ms/iteration "
            f"({r['speedup']:.2f}x one device), compile {r['compile_seconds']:.1f} s, "
            f"|loss - one device| {r['max_abs_loss_diff']:.1e}"
        )
    if "decode" in config:
        decoded = run_decode(config["decode"])
        for r in decoded:
            print(
                f"decode, {r['devices']} devices ({r['tensor_parallel']} per heads split): "
                f"{r['tokens_per_second']:8.1f} tokens/s ({r['speedup']:.2f}x), compile "
                f"{r['compile_seconds']:.1f} s, tokens equal: {r['tokens_equal']}, "
                f"|logits - first| {r['max_abs_logit_diff']:.1e}"
            )
        rows += decoded
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
