"""Under a device memory budget, nests computed at once run as loops where that lowers the
planned peak (:mod:`tempo_jax._lower.nest_budget`).

Oracles: plain NumPy for the values; XLA's ``memory_analysis()`` for what the program holds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import tempo_jax as tj
from tests.lower.test_transients import GAMMA, returns_suffix

T, D = 256, 32


def _suffix_returns(r: np.ndarray) -> np.ndarray:
    g = np.zeros_like(r)
    acc = np.zeros(r.shape[1], r.dtype)
    for t in range(r.shape[0] - 1, -1, -1):
        acc = r[t] + GAMMA * acc
        g[t] = acc
    return g


def _compile(budget: int | None) -> tj.Compiled:
    program, bounds = returns_suffix(T, D)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tj.MemoryBudgetWarning)
        return program.compile(bounds, memory_budget=budget)


def _xla_bytes(compiled: tj.Compiled) -> int:
    analysis = compiled.lower().compile().memory_analysis()
    return analysis.temp_size_in_bytes + analysis.output_size_in_bytes


def test_a_budget_runs_a_nest_that_gathers_too_much_as_a_loop() -> None:
    """Every point's suffix ``r[t:T]`` at once is a ``(T, T, D)`` gather of 8 MiB; under a
    1 MiB budget the points run one per iteration: XLA holds 125 times less, the values are
    the same."""
    at_once, looped = _compile(None), _compile(1 << 20)
    assert not at_once._buffer_plan().refused and looped._buffer_plan().refused
    assert at_once.memory().peak_device_bytes > T * T * D * 4
    assert looped.memory().peak_device_bytes <= 1 << 20
    assert _xla_bytes(looped) <= 1 << 20 < T * T * D * 4 <= _xla_bytes(at_once)
    r = np.random.default_rng(0).normal(size=(T, D)).astype(np.float32)
    want = _suffix_returns(r)
    for compiled in (at_once, looped):
        np.testing.assert_allclose(compiled(r=r)["g"], want, rtol=1e-5, atol=1e-5)
    assert not at_once.memory().loops
    (line,) = looped.memory().loops
    assert "loop over t" in line and f"under the memory budget: {line}" in looped.explain()


def test_a_budget_the_nest_meets_leaves_it_at_once() -> None:
    assert not _compile(T * T * D * 8)._buffer_plan().refused


def test_a_budget_no_loop_can_meet_keeps_what_lowered_the_peak_and_warns() -> None:
    """Below the output itself no schedule fits: the nest still runs as a loop (the peak is
    lower so), and the warning names the budget."""
    program, bounds = returns_suffix(T, D)
    with pytest.warns(tj.MemoryBudgetWarning):
        compiled = program.compile(bounds, memory_budget=1024)
    assert compiled._buffer_plan().refused
    assert compiled.memory().peak_device_bytes < _compile(None).memory().peak_device_bytes
