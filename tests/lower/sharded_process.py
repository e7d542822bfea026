"""One of two processes running the same sharded program over a global mesh (one CPU device
each, collectives over gloo), started by ``tests/lower/test_sharding.py``:
``python -m tests.lower.sharded_process PROCESS_ID PORT [rows | ppo]``. ``rows``: each
process passes its half of the rows (``jax.make_array_from_process_local_data``); ``ppo``: a
PPO run with ``devices=-1`` (its envs split over both processes' devices). Process 0 prints
how far the result is from the one-process run."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np


def main(pid: int, port: str, part: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    found = rows(pid) if part == "rows" else ppo_run()
    if pid == 0:
        print(json.dumps({"processes": jax.process_count(), **found}), flush=True)


def rows(pid: int) -> dict:
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from tests.lower.sharded import B, T, recurrence

    mesh = Mesh(np.array(jax.devices()), ("data",))
    u = np.random.default_rng(0).normal(size=(B, T, 4)).astype(np.float32)
    half = B // 2
    rows = jax.make_array_from_process_local_data(
        NamedSharding(mesh, PartitionSpec("data")), u[pid * half : (pid + 1) * half]
    )
    out = recurrence().compile({"B": B, "T": T}, mesh=mesh, shard={"b": "data"})(u=rows)
    x = np.asarray(multihost_utils.process_allgather(out["x"], tiled=True))
    mean = np.asarray(out["mean"].addressable_data(0))
    want = recurrence().compile({"B": B, "T": T})(u=u)
    return {
        "devices": jax.device_count(),
        "x": float(np.max(np.abs(x - np.asarray(want["x"])))),
        "mean": float(np.max(np.abs(mean - np.asarray(want["mean"])))),
        "spec": str(out["x"].sharding.spec),
    }


def ppo_run() -> dict:
    import dataclasses

    from tempo_jax.algorithms import ppo
    from tempo_jax.algorithms.config import RLConfig

    config = RLConfig(iterations=2, envs=8, steps=8, epochs=2, minibatches=2, devices=-1)
    out = ppo.make_train(config)()
    one = ppo.make_train(dataclasses.replace(config, devices=1))()
    return {
        "loss": float(np.max(np.abs(np.asarray(out["loss"]) - np.asarray(one["loss"])))),
        "mean_return": float(
            np.nanmax(np.abs(np.asarray(out["mean_return"]) - np.asarray(one["mean_return"])))
        ),
        "spec": str(out["state"].obs.sharding.spec),
    }


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "rows")
