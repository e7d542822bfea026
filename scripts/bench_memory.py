"""Benchmark: the memory of RL training with large observations, values swapped to host memory.

For each algorithm (PPO, REINFORCE with Monte-Carlo returns, REINFORCE with n-step TD
returns), observation shape and episode length of a config, three systems train the same run
side by side:

- ``tempo_jax`` with every value on the device (``swap: false``);
- ``tempo_jax`` compiled with ``memory_budget=0`` (``swap: true``): every value stored in
  full that a loop fills and a later step reads (the rollout, read by the learner) lives in
  host memory where that lowers the planned device peak (:mod:`tempo_jax._lower.memory_plan`),
  and the learner streams behind the returns (one step of the rollout at a time,
  :mod:`tempo_jax._passes.streaming`) where that lowers it;
- the single-jit baseline (:mod:`algorithms.baselines.ppo_jax`,
  :mod:`algorithms.baselines.pg_jax`).

Per system: XLA's temporary bytes for the compiled run (``memory_analysis()``), its
temporary and output bytes together (``xla_bytes``: what the planned peak counts, outputs
included, so the two compare like with like), the planned host bytes and planned peak device
bytes (``Compiled.memory()``, tempo_jax only), the
device's peak bytes in use after the run where the device reports them (a GPU's
``memory_stats()``; None on CPU, where device and host memory are the same RAM), seconds per
iteration (median of ``repeats`` runs), whether the learner streams (``learner``:
``streamed`` where its gradient is a running sum over the steps, else ``vectorised``; None
for the baseline), and whether the outputs equal those of swap off (to 1e-5 for tempo_jax,
whose streamed learner sums the gradient step by step, to 1e-3 for the baseline).

The device's peak is a high-water mark of the process, never reset: with ``--fresh-processes``
(or ``fresh_processes: true`` in the config; the GPU config sets it) each system of each point
runs in a process of its own, so each peak is that system's alone; the parent process never
starts JAX's backend, so it holds no device memory.
Rows go to ``results/memory/<config stem>.json``
(``{algo, system, obs, episode, swap, temp_bytes, xla_bytes, host_bytes, planned_peak_bytes,
peak_bytes, seconds_per_iteration, learner, outputs_equal, max_difference}``) with a plot
``.png``.

    python -m tempo_jax.scripts.bench_memory [--config configs/bench/memory_cpu_small.yaml]
        [--fresh-processes] [--out results/memory]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import tempo_jax as tj
from tempo_jax.algorithms import ppo, reinforce
from tempo_jax.algorithms.baselines import pg_jax, ppo_jax
from tempo_jax.algorithms.config import RLConfig
from tempo_jax.configs import read
from tempo_jax.scripts import timing

ALGOS: dict[str, tuple[Any, Any]] = {  # algo -> (tempo_jax module, single-jit baseline)
    "ppo": (ppo, ppo_jax),
    "reinforce": (reinforce, pg_jax),
}


def point_config(base: dict[str, Any], algo: str, obs: list[int], episode: int) -> RLConfig:
    """``base`` for one point: ``algo`` (``reinforce_nstep`` is REINFORCE with the base's
    ``n_step``; ``reinforce`` has Monte-Carlo returns), the trivial environment's observation
    shape, and the episode length (``steps``)."""
    fields = dict(base)
    n_step = fields.pop("n_step", 8)
    fields["algo"] = "ppo" if algo == "ppo" else "reinforce"
    fields["n_step"] = n_step if algo == "reinforce_nstep" else 0
    fields["env"] = "trivial"
    fields["env_options"] = {"obs_shape": tuple(obs), "episode": episode}
    fields["steps"] = episode
    return RLConfig(**fields)


def _median_seconds(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The outputs of a first call of ``run``, and the median seconds of ``repeats`` more."""
    out = jax.block_until_ready(run())
    return timing.median_seconds(run, repeats), out


def _device_peak() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def _xla_bytes(executable: Any) -> dict[str, int]:
    """XLA's temporary bytes for the compiled run, and its temporary and output bytes."""
    analysis = executable.memory_analysis()
    temp = int(analysis.temp_size_in_bytes)
    return {"temp_bytes": temp, "xla_bytes": temp + int(analysis.output_size_in_bytes)}


def _tempo(config: RLConfig, swap: bool, repeats: int) -> tuple[dict[str, Any], Any]:
    module = ALGOS[config.algo][0]
    built = module.build(config)
    compiled = ppo.compile_run(built, config, memory_budget=0 if swap else None)
    executable = compiled.lower().compile()
    report = compiled.memory()
    seconds, out = _median_seconds(compiled.ahead_of_time(), repeats)
    return {
        **_xla_bytes(executable),
        "host_bytes": report.host_bytes,
        "planned_peak_bytes": report.peak_device_bytes,
        "peak_bytes": _device_peak(),
        "seconds_per_iteration": seconds / config.iterations,
        "learner": "streamed"
        if any(v.kind == "accumulated" for v in report.values)
        else "vectorised",
    }, out


def _baseline(config: RLConfig, repeats: int) -> tuple[dict[str, Any], Any]:
    train = ALGOS[config.algo][1].make_train(config)
    executable = train.lower().compile()
    seconds, out = _median_seconds(executable, repeats)
    return {
        **_xla_bytes(executable),
        "host_bytes": 0,
        "planned_peak_bytes": None,
        "peak_bytes": _device_peak(),
        "seconds_per_iteration": seconds / config.iterations,
        "learner": None,
    }, out


OUTPUTS = ("loss", "mean_return", "episodes")  # the outputs compared between systems


def _difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The largest absolute difference between the runs' losses, returns and episode counts."""
    keys = [k for k in OUTPUTS if k in a and k in b]
    return max(
        (float(np.max(np.abs(np.asarray(a[k], float) - np.asarray(b[k], float)))) for k in keys),
        default=0.0,
    )


def _equal(a: dict[str, Any], b: dict[str, Any], rtol: float) -> bool:
    """Whether the runs' losses, returns and episode counts agree to ``rtol``: 1e-5 for
    tempo_jax with and without swapping (a streamed learner sums its gradient step by step),
    1e-3 for the baseline."""
    keys = [k for k in OUTPUTS if k in a and k in b]
    return all(np.allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=rtol, atol=1e-6) for k in keys)


SYSTEMS = (("tempo_jax", False), ("tempo_jax", True), ("single_jit", False))


def measure(config: RLConfig, system: str, swap: bool, repeats: int) -> tuple[dict, Any]:
    """One system at one point: its figures and its outputs."""
    return _baseline(config, repeats) if system == "single_jit" else _tempo(config, swap, repeats)


def _outputs(out: Any) -> dict[str, np.ndarray]:
    return {k: np.asarray(out[k]) for k in OUTPUTS if k in out}


def _in_fresh_process(
    config_path: str, index: int, system: str, swap: bool, folder: pathlib.Path
) -> tuple[dict, dict[str, np.ndarray]]:
    """:func:`measure` in a new Python process (``--point``): its figures and outputs come
    back through files in ``folder``."""
    name = f"{index}_{system}_{swap}"
    command = [sys.executable, "-m", "tempo_jax.scripts.bench_memory", "--config", config_path]
    command += ["--point", str(index), "--system", system, "--save", str(folder / name)]
    command += ["--swap"] if swap else []
    subprocess.run(command, check=True)
    found = json.loads((folder / f"{name}.json").read_text())
    with np.load(folder / f"{name}.npz") as saved:
        return found, dict(saved)


def bench_point(
    algo: str,
    config: RLConfig,
    obs: list[int],
    episode: int,
    repeats: int,
    fresh: tuple[str, int, pathlib.Path] | None = None,
) -> list[dict]:
    """The three systems at one point, side by side; with ``fresh`` (the config's path, the
    point's index and a folder for the results), each in a process of its own."""
    measured = []
    for system, swap in SYSTEMS:
        if fresh is None:
            found, out = measure(config, system, swap, repeats)
            measured.append((found, _outputs(out)))
        else:
            measured.append(_in_fresh_process(fresh[0], fresh[1], system, swap, fresh[2]))
    off_out = measured[0][1]
    rows = []
    for (system, swap), (found, out) in zip(SYSTEMS, measured, strict=True):
        rows.append(
            {
                "algo": algo,
                "system": system,
                "obs": "x".join(str(n) for n in obs),
                "episode": episode,
                "swap": swap,
                **found,
                "outputs_equal": _equal(out, off_out, 1e-5 if system == "tempo_jax" else 1e-3),
                "max_difference": _difference(out, off_out),
            }
        )
        peak, planned = found["peak_bytes"], found["planned_peak_bytes"]
        print(
            f"{algo:16s} obs {rows[-1]['obs']:>9s} episode {episode:4d} {system:10s} "
            f"swap {swap!s:5s} temp {found['temp_bytes'] / 2**20:8.1f} MiB  "
            f"temp+out {found['xla_bytes'] / 2**20:8.1f} MiB  planned {_mib(planned)} MiB  host "
            f"{found['host_bytes'] / 2**20:7.1f} MiB  peak "
            f"{_mib(peak)} MiB  "
            f"{found['seconds_per_iteration'] * 1e3:8.1f} ms/it  learner {found['learner']}  "
            f"equal {rows[-1]['outputs_equal']}",
            flush=True,
        )
    return rows


def _mib(n: int | None) -> str:
    return "-" if n is None else format(n / 2**20, ".1f")


def points(config: dict[str, Any]) -> list[tuple[str, list[int], int]]:
    """The config's points, in order: (algo, observation shape, episode length)."""
    return [
        (algo, obs, episode)
        for algo in config["algos"]
        for obs in config["obs"]
        for episode in config["episodes"]
    ]


def run(config: dict[str, Any], fresh_from: str | None = None) -> list[dict[str, Any]]:
    """Every point's rows; with ``fresh_from`` (the config's path), each system of each point
    in a process of its own."""
    repeats = int(config.get("repeats", 2))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (algo, obs, episode) in enumerate(points(config)):
            cfg = point_config(config["base"], algo, obs, episode)
            fresh = None if fresh_from is None else (fresh_from, index, pathlib.Path(folder))
            rows += bench_point(algo, cfg, obs, episode, repeats, fresh)
    return rows


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
    }


def _one_system(config: dict[str, Any], args: argparse.Namespace) -> None:
    """``--point``: measure one system at one point and save its figures (with the machine)
    and outputs as ``<save>.json`` and ``<save>.npz``."""
    algo, obs, episode = points(config)[args.point]
    cfg = point_config(config["base"], algo, obs, episode)
    found, out = measure(cfg, args.system, args.swap, int(config.get("repeats", 2)))
    save = pathlib.Path(args.save)
    np.savez(save.with_suffix(".npz"), **_outputs(out))
    _write(save.with_suffix(".json"), json.dumps({**found, "machine": _machine()}))


def plot(rows: list[dict[str, Any]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algos = sorted({r["algo"] for r in rows})
    fig, axes = plt.subplots(1, len(algos), figsize=(4.5 * len(algos), 3.4), squeeze=False)
    for ax, algo in zip(axes[0], algos, strict=True):
        for (system, swap, obs), style in _series(rows, algo):
            points = [
                r
                for r in rows
                if (r["algo"], r["system"], r["swap"], r["obs"]) == (algo, system, swap, obs)
            ]
            label = f"{system}{' swap' if swap else ''} {obs}"
            ax.plot(
                [r["episode"] for r in points],
                [r["temp_bytes"] / 2**20 for r in points],
                style,
                label=label,
            )
        ax.set_title(algo)
        ax.set_xlabel("episode length")
        ax.set_ylabel("XLA temporary MiB")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _series(rows: list[dict[str, Any]], algo: str) -> list[tuple[tuple, str]]:
    keys = sorted({(r["system"], r["swap"], r["obs"]) for r in rows if r["algo"] == algo})
    return [(key, "o-" if key[0] == "tempo_jax" else "s--") for key in keys]


def _write(path: pathlib.Path, text: str) -> None:
    """Written whole or not at all: a temporary file, then renamed."""
    temp = path.with_suffix(path.suffix + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/bench/memory_cpu_small.yaml")
    parser.add_argument(
        "--fresh-processes", action="store_true", help="each system of each point alone"
    )
    parser.add_argument("--out", default="results/memory")
    parser.add_argument("--point", type=int, help=argparse.SUPPRESS)  # one system, one point
    parser.add_argument("--system", choices=("tempo_jax", "single_jit"), help=argparse.SUPPRESS)
    parser.add_argument("--swap", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    tj.enable_compilation_cache()
    config = read(args.config, kind="bench")
    timing.set_precision(config)
    if args.point is not None:
        _one_system(config, args)
        return
    fresh = args.fresh_processes or bool(config.get("fresh_processes", False))
    rows = run(config, fresh_from=args.config if fresh else None)
    machine = rows[0].pop("machine") if fresh else _machine()
    for row in rows:
        row.pop("machine", None)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = pathlib.Path(args.config).stem
    summary = {"config": args.config, "machine": machine, "rows": rows}
    _write(out / f"{stem}.json", json.dumps(summary, indent=2))
    plot(rows, out / f"{stem}.png")
    print(f"wrote {out}/{stem}.{{json,png}}")


if __name__ == "__main__":
    main()
