"""Train an RL algorithm written as one tempo_jax program, with a progress bar, checkpoints
and resume.

The run is compiled once as a program of ``chunk`` iterations (every iteration's rollout,
returns, loss, backward and optimiser step: one XLA call) and called on the state the last
call returned until the run is done (:mod:`tempo_jax.algorithms.training`). Between calls the
metrics go to ``metrics.csv`` and the state to an orbax checkpoint (``checkpoints/<iteration>``,
the last two kept); Ctrl-C stops the run there, keeping both, and ``--resume`` continues it
with the same numbers an uninterrupted run gets. Per-iteration metrics reach the progress bar
through a sink. With ``seeds > 1`` the compiled run is ``jax.vmap``-ed over that many seeds
(``config.seed`` and the next): one call advances them all, the checkpoint holds all their
states, the curve shows their mean with a band. Each run gets its own directory
(:func:`tempo_jax.scripts.results.run_dir`); every file is written atomically.

Under ``jax.distributed`` (``tempo-jax launch --processes N train ...``,
:mod:`tempo_jax.scripts.launch`) every process runs the same calls on its share of the
devices; process 0 makes the run's directory (the others take its path), shows the progress
and writes the files, and every process writes its own part of each checkpoint (orbax).

    tempo-jax train ppo_cartpole [--iterations N] [--seed S] [--run NAME] [--overwrite]
    tempo-jax train ppo_cartpole --seeds 3          # seeds S, S+1, S+2 side by side (vmap)
    tempo-jax train results/rl/ppo_CartPole-v1_seed0 --resume
    python -m tempo_jax.scripts.train_rl [--config ppo_cartpole] [--iterations N] [--seed S]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import pathlib
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import tempo_jax as tj
from tempo_jax.algorithms import a2c, checkpoints, envs, evaluation, ppo, reinforce, training
from tempo_jax.algorithms import config as rl_config
from tempo_jax.algorithms.networks import actor_critic
from tempo_jax.configs import ConfigError
from tempo_jax.models.sharding import gathered
from tempo_jax.scripts import results, rl_metrics
from tempo_jax.scripts.launch import is_primary

ALGORITHMS = {"ppo": ppo.make_train, "reinforce": reinforce.make_train, "a2c": a2c.make_train}
RUN_FILE = "run.json"  # the config, chunk and seeds a run was started with: what --resume reads


def default_chunk(iterations: int) -> int:
    """Iterations per call when not given: the largest divisor of ``iterations`` up to a tenth
    of it (at least 1), so every call runs the one compiled program."""
    top = max(1, iterations // 10)
    return max(k for k in range(1, top + 1) if iterations % k == 0)


class Interrupt:
    """Ctrl-C while installed asks the run to stop at the next call boundary
    (``requested``); a second Ctrl-C stops at once (``KeyboardInterrupt``)."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("stopping after this chunk of iterations (Ctrl-C again to stop now)")

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupt]:
        try:
            previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no handler, nothing to stop
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def _keys(config: rl_config.RLConfig, seeds: int) -> jax.Array:
    """The run's key, or the ``seeds`` keys of ``config.seed`` and the next, stacked."""
    if seeds == 1:
        return jax.random.PRNGKey(config.seed)
    return jnp.stack([jax.random.PRNGKey(config.seed + s) for s in range(seeds)])


def _state_shape(config: rl_config.RLConfig, seeds: int) -> training.State:
    """The shapes of the run's state (with a leading seed axis when ``seeds > 1``)."""
    env = envs.make(config.env, **config.env_options)
    return training.state_shape(config, env, actor_critic(config, env), seeds)


def _caller(train: training.Train, keys: jax.Array, state: Any, seeds: int) -> Callable:
    """``train`` compiled by XLA for these inputs: ``call(state) -> outputs``, vmapped over
    the seeds when ``seeds > 1``."""
    if seeds == 1:
        run = train.ahead_of_time()
        return lambda state: run(keys, state)
    runs = jnp.arange(seeds, dtype=jnp.int32)
    batched = jax.jit(jax.vmap(lambda k, s, r: train(k, s, r)))
    executable = batched.lower(keys, state, runs).compile()
    return lambda state: executable(keys, state, runs)


def train(
    config: rl_config.RLConfig,
    out: pathlib.Path,
    chunk: int | None = None,
    resume: bool = False,
    tensorboard: bool = False,
    seeds: int = 1,
) -> dict[str, Any]:
    """Compile ``config`` as a program of ``chunk`` iterations (default:
    :func:`default_chunk`), for ``seeds`` seeds side by side, and run it call after call,
    from the latest checkpoint under ``out`` with ``resume``; after each call write the
    metrics (and, with ``tensorboard``, TensorBoard scalars under ``out/tensorboard``, by env
    step) and a checkpoint; at the end (or at Ctrl-C) the summary and the curve (every file
    atomically)."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chunk = default_chunk(config.iterations) if chunk is None else chunk
    if chunk < 1:
        raise ConfigError(f"checkpoint_every: must be at least 1, got {chunk}")
    if seeds < 1:
        raise ConfigError(f"seeds: must be at least 1, got {seeds}")
    _check_processes(config)
    chunk = min(chunk, config.iterations)
    envs.make(config.env, **config.env_options)  # its package's import is not build time
    keys = _keys(config, seeds)
    saved = out / "checkpoints"
    primary = is_primary()  # process 0 shows the progress and writes the files
    if resume:
        done = checkpoints.latest(saved)  # a checkpoint's step is the iterations done
        if done is None:
            raise results.ResultsError(f"{out}: no checkpoint to resume from")
        table = rl_metrics.read(out / "metrics.csv", done * seeds)
    else:
        started = {"config": dataclasses.asdict(config), "chunk": chunk, "seeds": seeds}
        if primary:
            results.write_json(out / RUN_FILE, started)
            shutil.rmtree(saved, ignore_errors=True)  # an overwritten run's checkpoints
        state, done, table = None, 0, []
    bar = tqdm(
        total=config.iterations, initial=done, desc="compiling", unit="it", disable=not primary
    )
    shown: dict[str, str] = {}  # the bar's postfix: the last return, the last call's steps/s

    def log(iteration: int, metrics: dict[str, float]) -> None:
        if metrics["run"] != 0:  # several seeds: the bar follows the first
            return
        if metrics["episodes"] > 0:  # the return of the episodes that ended this iteration
            shown["mean_return"] = f"{metrics['mean_return']:.1f}"
            bar.set_postfix(shown, refresh=False)
        bar.update(1)

    def compile_for(count: int) -> Callable:  # the state is known by then
        return _caller(ALGORITHMS[config.algo](config, log, iterations=count), keys, state, seeds)

    begin = time.perf_counter()
    built = ALGORITHMS[config.algo](config, log, iterations=chunk)  # passes, schedule
    build = time.perf_counter() - begin
    begin = time.perf_counter()
    start = built.start if seeds == 1 else jax.jit(jax.vmap(built.start))
    # a resumed state laid out over the devices as the program's initial state is
    state = checkpoints.restore(saved, jax.eval_shape(start, keys), done) if resume else None
    state = start(keys) if state is None else state
    calls = {chunk: _caller(built, keys, state, seeds)}  # XLA
    xla = time.perf_counter() - begin
    bar.set_description(f"{config.algo} {config.env}" + (f" x{seeds} seeds" if seeds > 1 else ""))
    bar.unpause()  # its rate counts from here, not from the compile
    seconds, first = 0.0, done
    board = tensorboard and primary
    writer = rl_metrics.board(out, done * config.envs * config.steps) if board else None
    with Interrupt().installed() as interrupt, writer or contextlib.nullcontext():
        while done < config.iterations and not _agreed(interrupt.requested):
            count = min(chunk, config.iterations - done)
            if count not in calls:  # the last, shorter call
                calls[count] = compile_for(count)
            begin = time.perf_counter()
            result = calls[count](state)
            jax.block_until_ready(result)
            took = time.perf_counter() - begin
            seconds += took
            state = result["state"]
            # its outputs but the state, whole on every process (they may span several)
            metrics = gathered({k: v for k, v in result.items() if k != "state"})
            new = rl_metrics.rows(metrics, done, config, seeds, took)
            table += new
            if writer is not None:
                rl_metrics.scalars(writer, new, seeds)
            shown["steps/s"] = f"{new[-1]['steps_per_second']:,.0f}"
            bar.set_postfix(shown)
            done += count
            # the metrics before the checkpoint: a resume never finds fewer rows than it needs
            if primary:
                rl_metrics.write(out / "metrics.csv", table, rl_metrics.columns(result))
            checkpoints.save(saved, state)  # every process: each writes its own shards
    bar.close()
    steps = (done - first) * config.envs * config.steps * seeds
    summary = {
        "config": dataclasses.asdict(config),
        "seeds": seeds,
        "iterations_done": done,
        "interrupted": done < config.iterations,
        "iterations_per_call": chunk,
        "build_seconds": build,
        "xla_compile_seconds": xla,
        "compile_seconds": build + xla,
        "run_seconds": seconds,
        "env_steps": done * config.envs * config.steps * seeds,
        "steps_per_second": steps / seconds if seconds else None,
        **rl_metrics.summary(table, config),
    }
    if primary:
        results.write_json(out / "summary.json", summary)
        if table:
            rl_metrics.plot(table, config, out / "learning_curve.png")
    return summary


def _check_processes(config: rl_config.RLConfig) -> None:
    """Under ``jax.distributed`` the run must use every process's devices (each process
    running a program of its own would train the same run twice)."""
    processes, count = jax.process_count(), jax.device_count()
    if processes > 1 and config.devices not in (-1, count):
        raise ConfigError(
            f"devices: {config.devices}; a run over {processes} processes splits its envs over "
            f"every process's devices: pass --devices -1 (here {count})"
        )


def _agreed(stop: bool) -> bool:
    """Process 0's ``stop`` on every process: all stop after the same call (a Ctrl-C reaches
    each process at its own moment)."""
    if jax.process_count() == 1:
        return stop
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(stop)))


def _shared_dir(make: Callable[[], pathlib.Path]) -> pathlib.Path:
    """``make()`` (a new run's directory), made by process 0; every process gets its path."""
    if jax.process_count() == 1:
        return make()
    from jax.experimental import multihost_utils

    path, error = "", None
    if jax.process_index() == 0:
        try:
            path = str(make().absolute())
        except results.ResultsError as raised:
            error = raised
    data = np.zeros(4096, np.uint8)
    encoded = path.encode()
    data[: len(encoded)] = np.frombuffer(encoded, np.uint8)
    shared = bytes(np.asarray(multihost_utils.broadcast_one_to_all(data))).rstrip(b"\0")
    if error is not None:
        raise error
    if not shared:
        raise results.ResultsError("process 0 could not make the run's directory (its error)")
    return pathlib.Path(shared.decode())


def run(
    config: rl_config.RLConfig,
    root: str | pathlib.Path = "results/rl",
    name: str | None = None,
    overwrite: bool = False,
    chunk: int | None = None,
    tensorboard: bool = False,
    seeds: int = 1,
) -> pathlib.Path:
    """Train ``config`` into a new run directory under ``root`` (named ``name``, or
    ``<algo>_<env>_seed<S>`` numbered past earlier runs); print the summary; the directory."""
    if chunk is not None and chunk < 1:  # before the run's directory is made
        raise ConfigError(f"checkpoint_every: must be at least 1, got {chunk}")
    if seeds < 1:
        raise ConfigError(f"seeds: must be at least 1, got {seeds}")
    _check_processes(config)
    default = f"{config.algo}_{config.env}_seed{config.seed}"
    if seeds > 1:
        default += f"-{config.seed + seeds - 1}"
    out = _shared_dir(
        lambda: results.run_dir(
            root, name or default, explicit=name is not None, overwrite=overwrite
        )
    )
    _report(train(config, out, chunk, tensorboard=tensorboard, seeds=seeds), out)
    return out


def _started(folder: pathlib.Path) -> dict[str, Any]:
    path = folder / RUN_FILE
    if not path.is_file():
        raise results.ResultsError(f"{folder}: not a training run's directory (no {RUN_FILE})")
    return json.loads(path.read_text())


def resume(folder: str | pathlib.Path, tensorboard: bool = False) -> pathlib.Path:
    """Continue the run in ``folder`` from its latest checkpoint, with its config, chunk and
    seeds, to its last iteration; print the summary; the directory."""
    folder = pathlib.Path(folder)
    started = _started(folder)
    if checkpoints.latest(folder / "checkpoints") is None:
        raise results.ResultsError(f"{folder}: no checkpoint to resume from")
    config = rl_config.from_dict(started["config"])
    seeds = started.get("seeds", 1)
    _report(train(config, folder, started["chunk"], True, tensorboard, seeds), folder)
    return folder


def evaluate_run(folder: str | pathlib.Path, episodes: int = 10, seed: int = 0) -> dict:
    """Evaluate the latest checkpoint of the run in ``folder`` with the deterministic policy
    (:func:`tempo_jax.algorithms.evaluation.evaluate`), each trained seed's parameters; write
    ``evaluation.json`` there and return its content."""
    folder = pathlib.Path(folder)
    started = _started(folder)
    config = rl_config.from_dict(started["config"])
    seeds = started.get("seeds", 1)
    try:
        state = checkpoints.restore(folder / "checkpoints", _state_shape(config, seeds))
    except FileNotFoundError:
        raise results.ResultsError(f"{folder}: no checkpoint to evaluate") from None
    key = jax.random.PRNGKey(seed)
    evaluate = evaluation.evaluator(config, episodes)  # compiled once for every seed
    per_seed = {}
    for s in range(seeds):
        params = state.params
        if seeds > 1:
            params = jax.tree_util.tree_map(lambda x, s=s: x[s], params)
        found = evaluate(params, key)
        per_seed[config.seed + s] = [float(r) for r in found]
    flat = np.array([r for found in per_seed.values() for r in found])
    report = {
        "iteration": training.iterations_done(state),
        "episodes": episodes,
        "seed": seed,
        "mean_return": float(flat.mean()),
        "std_return": float(flat.std()),
    }
    if seeds == 1:
        report["returns"] = next(iter(per_seed.values()))
    else:
        report["returns_per_trained_seed"] = per_seed
    results.write_json(folder / "evaluation.json", report)
    return report


def _report(summary: dict[str, Any], out: pathlib.Path) -> None:
    if not is_primary():
        return
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    if summary["interrupted"]:
        print(f"stopped after {summary['iterations_done']} iterations; continue with")
        print(f"  tempo-jax train {out} --resume")
    print(f"wrote {out}/metrics.csv, summary.json, learning_curve.png and checkpoints/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="ppo_cartpole", help="a shipped name or a path")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--seeds", type=int, default=1, help="seeds side by side (jax.vmap)")
    parser.add_argument("--out", default="results/rl")
    parser.add_argument("--run", help="the run's directory name (default: numbered)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--checkpoint-every", type=int, help="iterations per call and checkpoint")
    args = parser.parse_args()
    tj.enable_compilation_cache()  # a second run skips XLA's compile
    overrides = {
        k: v for k, v in (("iterations", args.iterations), ("seed", args.seed)) if v is not None
    }
    try:
        config = rl_config.load(args.config, **overrides)
        run(config, args.out, args.run, args.overwrite, args.checkpoint_every, seeds=args.seeds)
    except (ConfigError, results.ResultsError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
