"""Several processes of one JAX cluster: start them on this machine (``tempo-jax launch``), or
join one started by another launcher.

``tempo-jax launch --processes N [--port P] COMMAND ...`` runs ``tempo-jax COMMAND ...`` as
``N`` processes on this machine, joined by :func:`jax.distributed.initialize` (process 0 is
the coordinator, on ``localhost:P``; a free port by default). Each process sees every
process's devices in :func:`jax.devices`, so ``--devices -1`` splits the work over all of them
(on CPU the processes talk over gloo). Process 0 prints and writes the run's files; the others
print nothing but errors. The launch ends with the first process that fails (the others are
stopped) or when all are done, and exits with that code. Ctrl-C reaches every process (a
training run stops after the call in progress, on every process at the same call); a second
one stops them at once.

On several hosts, start ``tempo-jax COMMAND ...`` on each with these variables set (what
``launch`` sets for its processes):

- ``TEMPO_JAX_COORDINATOR``: ``host:port`` of process 0;
- ``TEMPO_JAX_NUM_PROCESSES``: how many processes;
- ``TEMPO_JAX_PROCESS_ID``: this process's number, ``0`` to ``N - 1``.

:func:`initialize_from_env` (called by the ``tempo-jax`` command before any other) joins the
cluster they describe.

    tempo-jax launch --processes 2 train ppo_cartpole --devices -1 --run two
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

COORDINATOR = "TEMPO_JAX_COORDINATOR"
NUM_PROCESSES = "TEMPO_JAX_NUM_PROCESSES"
PROCESS_ID = "TEMPO_JAX_PROCESS_ID"


def initialize_from_env() -> bool:
    """Join the JAX cluster the environment describes (module docstring); False when it
    describes none. On CPU, the processes' collectives go over gloo."""
    address = os.environ.get(COORDINATOR)
    if not address:
        return False
    try:
        count, me = int(os.environ[NUM_PROCESSES]), int(os.environ[PROCESS_ID])
    except (KeyError, ValueError) as error:
        raise SystemExit(
            f"tempo-jax: error: {COORDINATOR} is set, so {NUM_PROCESSES} and {PROCESS_ID} must "
            f"be integers too ({error})"
        ) from None
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(address, num_processes=count, process_id=me)
    return True


def is_primary() -> bool:
    """Whether this process writes a run's files and prints its progress: process 0 (the only
    one without ``jax.distributed``)."""
    import jax

    return jax.process_index() == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def launch(processes: int, command: Sequence[str], port: int | None = None) -> int:
    """Run ``tempo-jax *command`` as ``processes`` processes of one cluster on this machine
    (module docstring); the exit code: the first failure's, else 0."""
    if processes < 1:
        raise ValueError(f"--processes must be at least 1, got {processes}")
    if not command:
        raise ValueError("give the command to run, e.g. launch --processes 2 train ppo_cartpole")
    address = f"localhost:{port or _free_port()}"
    argv = [sys.executable, "-m", "tempo_jax.scripts.cli", *command]
    procs = []
    for me in range(processes):
        env = {**os.environ, COORDINATOR: address, NUM_PROCESSES: str(processes)}
        env[PROCESS_ID] = str(me)
        quiet = subprocess.DEVNULL if me else None  # process 0 prints; the others, errors only
        procs.append(subprocess.Popen(argv, env=env, stdout=quiet))
    interrupted = False
    try:
        while True:
            try:
                codes = [p.poll() for p in procs]
                failed = [c for c in codes if c not in (None, 0)]
                if failed or all(c == 0 for c in codes):
                    break
                time.sleep(0.2)
            except KeyboardInterrupt:  # the processes got it too: a run stops after its chunk
                if interrupted:
                    raise  # a second Ctrl-C: stop them now
                interrupted = True
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
    return failed[0] if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tempo-jax launch", description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--port", type=int, default=None, help="the coordinator's (default: free)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="a tempo-jax command")
    args = parser.parse_args(argv)
    try:
        return launch(args.processes, args.command, args.port)
    except ValueError as error:
        print(f"tempo-jax launch: error: {error}", file=sys.stderr)
        return 2
