"""Timing systems side by side: rounds in which each takes its turn."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def set_precision(config: dict[str, Any]) -> None:
    """Apply a benchmark config's ``matmul_precision`` (JAX's ``jax_default_matmul_precision``:
    ``highest`` keeps float32 products in float32 on a GPU, where the default rounds their
    inputs to TF32, enough to change a greedy decode's tokens between two exact decoders)."""
    if "matmul_precision" in config:
        jax.config.update("jax_default_matmul_precision", config["matmul_precision"])


def timed(fn: Callable[[], Any]) -> float:
    """Seconds of one call of ``fn``, its results ready."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
    """The median seconds of ``repeats`` calls of ``run`` (already called once: compiled)."""
    return statistics.median(timed(run) for _ in range(repeats))


def interleaved(
    runs: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of each of ``runs`` per round, the systems taking turns within a round (the
    first one alternating), so that a slow spell of the machine hits all of them. ``warmup``
    rounds run first, untimed: the first call after the others' compiles runs up to 2.5x
    slower (the LM's first round read 2.2x to 2.6x where the others read 1.1x to 1.5x)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for _ in range(warmup):
        for name in order:
            timed(runs[name])
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            times[name].append(timed(runs[name]))
    return times
