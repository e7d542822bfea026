"""Where a decoded token's time goes: each system's compiled kernels, by kind, per token.

Builds one point of a decode config the way :mod:`scripts.bench_decode` does (same weights,
prompt and compilation), calls each system once to warm it, then traces one more call with
``jax.profiler`` and reads the trace back with :class:`jax.profiler.ProfileData`. Every *leaf*
HLO-op event of the executor's threads (one with no other op event inside it on its thread: a
kernel, not the loop or conditional around it; the runtime's own events are left out) is
counted under its op kind, the HLO name
without its numeric suffix (``dot.75`` and ``dot.78`` are both ``dot``; ``ynn_fusion`` is a
YNNPACK kernel, the weight products among them).

Per kind: milliseconds per token (the kind's summed kernel time over ``seq_len``), kernels per
token and microseconds per kernel. ``leaf total`` is the sum over kinds; ``wall`` is the
traced call's time per token. Rows go to
``results/decode/profile_<config stem>_<attn>_<seq_len>.json``.

    python -m tempo_jax.scripts.profile_decode [--config configs/bench/decode_cpu_long.yaml]
        [--attn causal|window] [--seq-len N] [--block N] [--systems tempo_jax,scan]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import tempfile
import time
from collections.abc import Iterable
from typing import Any, Protocol

import jax

from tempo_jax.configs import read
from tempo_jax.scripts.bench_decode import SYSTEMS, build, point_inputs

EXECUTOR_THREAD = "XLAEigen"  # the XLA CPU executor's threads; the kernels run on them
# Runtime events, not HLO ops: the executor's and thread pools' own spans (``ThunkExecutor::
# Execute``, ``SlinkyThreadPool::Await`` inside a YNNPACK kernel) and completion markers
# (``end: dot``). They are dropped before looking for leaves, so a kernel holding one is a leaf.
_RUNTIME = re.compile(r"::|^end: ")
_SUFFIX = re.compile(r"(\.\d+)+$")


class Event(Protocol):
    name: str
    start_ns: float
    duration_ns: float


@dataclasses.dataclass
class Kind:
    """One op kind's kernels in a trace: how many, and their summed time."""

    count: int = 0
    seconds: float = 0.0


def op_kind(name: str) -> str:
    """An event's op kind: its name without the numeric suffix (``dot.75`` -> ``dot``)."""
    return _SUFFIX.sub("", name)


def leaves(events: Iterable[Event]) -> list[Event]:
    """The events of one thread that hold no other event of it (by time: an event holds the
    events that start before it ends; the thread's events nest)."""
    ordered = sorted(events, key=lambda e: (e.start_ns, -e.duration_ns))
    out = []
    for i, event in enumerate(ordered):
        end = event.start_ns + event.duration_ns
        nxt = ordered[i + 1] if i + 1 < len(ordered) else None
        if nxt is None or nxt.start_ns >= end:
            out.append(event)
    return out


def kernel_kinds(lines: Iterable[tuple[str, Iterable[Event]]]) -> dict[str, Kind]:
    """Leaf HLO-op events of the executor threads (``(thread name, events)`` pairs), by op
    kind; runtime events are dropped first."""
    kinds: dict[str, Kind] = {}
    for thread, events in lines:
        if EXECUTOR_THREAD not in thread:
            continue
        ops = [e for e in events if not _RUNTIME.search(e.name)]
        for event in leaves(ops):
            kind = kinds.setdefault(op_kind(event.name), Kind())
            kind.count += 1
            kind.seconds += event.duration_ns * 1e-9
    return kinds


def trace_kinds(run: Any) -> tuple[dict[str, Kind], float]:
    """Trace one call of ``run`` (already warm): its kernels by kind and its wall seconds."""
    with tempfile.TemporaryDirectory() as logdir:
        jax.profiler.start_trace(logdir)
        start = time.perf_counter()
        jax.block_until_ready(run())
        wall = time.perf_counter() - start
        jax.profiler.stop_trace()
        (path,) = pathlib.Path(logdir).rglob("*.xplane.pb")
        data = jax.profiler.ProfileData.from_file(str(path))
    lines = [(line.name, list(line.events)) for plane in data.planes for line in plane.lines]
    return kernel_kinds(lines), wall


def profile(
    config: dict[str, Any], systems: list[str], attn: str, seq_len: int, block: int
) -> list[dict[str, Any]]:
    """One row per system and op kind of the point ``(attn, seq_len, block)``."""
    cfg, params, prompt = point_inputs(config, attn, seq_len)
    batch, prompt_len = prompt.shape
    rows = []
    for system in systems:
        built = build(system, cfg, params, prompt, seq_len - prompt_len, block)
        jax.block_until_ready(built.run())
        kinds, wall = trace_kinds(built.run)
        point = {"system": system, "attn": attn, "batch": batch, "seq_len": seq_len}
        point |= {"block": block, "wall_seconds_per_token": wall / seq_len}
        for name, kind in sorted(kinds.items(), key=lambda item: -item[1].seconds):
            rows.append(
                point
                | {
                    "kind": name,
                    "seconds_per_token": kind.seconds / seq_len,
                    "kernels_per_token": kind.count / seq_len,
                }
            )
    return rows


def table(rows: list[dict[str, Any]], top: int = 8) -> str:
    """Per system: its ``top`` kinds by time, the leaf total and the wall time, per token."""
    lines = []
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == system]
        leaf = sum(r["seconds_per_token"] for r in mine)
        count = sum(r["kernels_per_token"] for r in mine)
        wall = mine[0]["wall_seconds_per_token"]
        lines.append(f"{system}: wall {wall * 1e3:.2f} ms/token")
        lines.append(f"  {'kind':32s} {'ms/token':>9s} {'kernels':>8s} {'us each':>8s}")
        for r in mine[:top]:
            each = r["seconds_per_token"] / r["kernels_per_token"] * 1e6
            lines.append(
                f"  {r['kind'][:32]:32s} {r['seconds_per_token'] * 1e3:9.3f} "
                f"{r['kernels_per_token']:8.1f} {each:8.1f}"
            )
        lines.append(f"  {'leaf total':32s} {leaf * 1e3:9.3f} {count:8.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bench/decode_cpu_long.yaml")
    parser.add_argument("--attn", default="causal", choices=("causal", "window"))
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--block", type=int, help="tile size (default: the config's)")
    parser.add_argument("--systems", default="tempo_jax,scan", help=",".join(SYSTEMS))
    parser.add_argument("--out", default="results/decode")
    args = parser.parse_args()
    path = pathlib.Path(args.config)
    config = read(path, kind="bench")
    block = args.block or config["block"]
    rows = profile(config, args.systems.split(","), args.attn, args.seq_len, block)
    print(table(rows))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"profile_{path.stem}_{args.attn}_{args.seq_len}.json"
    target.write_text(json.dumps({"config": args.config, "rows": rows}, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
