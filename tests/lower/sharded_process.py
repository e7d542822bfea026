"""One of two processes running the same sharded program over a global mesh (one CPU device
each, collectives over gloo), started by ``tests/lower/test_sharding.py``:
``python -m tests.lower.sharded_process PROCESS_ID PORT``. Each process passes its half of the
rows (``jax.make_array_from_process_local_data``); process 0 prints how far the gathered
result is from the one-process run."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np


def main(pid: int, port: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
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
    if pid == 0:
        want = recurrence().compile({"B": B, "T": T})(u=u)
        found = {
            "processes": jax.process_count(),
            "devices": jax.device_count(),
            "x": float(np.max(np.abs(x - np.asarray(want["x"])))),
            "mean": float(np.max(np.abs(mean - np.asarray(want["mean"])))),
            "spec": str(out["x"].sharding.spec),
        }
        print(json.dumps(found), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
