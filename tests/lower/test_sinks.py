"""Sinks: host callbacks once per point, the same from the interpreter and compiled code."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj


def _recurrence(log: list[Any]) -> tj.Program:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[0] = 1.0
        x[t + 1] = x[t] * 0.5 + 1.0
        tj.sink(x * 2.0, lambda v, pt: log.append((pt["t"], float(v))))
        p.output("x", x[0 : t.bound])
    return p


def test_sink_is_called_once_per_point_in_order() -> None:
    interpreted: list[Any] = []
    compiled: list[Any] = []
    tj.reference.run(_recurrence(interpreted), bounds={"T": 6})
    _recurrence(compiled).compile(bounds={"T": 6})()
    jax.effects_barrier()
    want = []
    value = 1.0
    for k in range(6):
        want.append((k, 2 * value))
        value = value * 0.5 + 1.0
    assert interpreted == want
    assert compiled == want


def test_sink_in_nested_loops_follows_the_schedule() -> None:
    def build(log: list[Any]) -> tj.Program:
        with tj.Program() as p:
            i, t = p.dims("i t")
            x = tj.input("x", (), jnp.float32, domain=(i, t))
            acc = tj.placeholder((), jnp.float32, domain=(i, t))
            acc[i, 0] = x[i, 0]
            acc[i, t + 1] = acc[i, t] + x[i, t + 1]
            tj.sink(acc, lambda v, pt: log.append((pt["i"], pt["t"], float(v))))
            p.output("acc", acc)
        return p

    xs = np.arange(12, dtype=np.float32).reshape(3, 4)
    interpreted: list[Any] = []
    compiled: list[Any] = []
    tj.reference.run(build(interpreted), bounds={"I": 3, "T": 4}, inputs={"x": xs})
    program = build(compiled)
    runnable = program.compile(bounds={"I": 3, "T": 4})
    runnable(x=xs)
    jax.effects_barrier()
    cumulative = xs.cumsum(axis=1)
    want = [(a, b, float(cumulative[a, b])) for a in range(3) for b in range(4)]
    assert interpreted == want
    assert compiled == want  # the schedule: i outer, t inner
    assert "for i in" in runnable.schedule and "    for t in" in runnable.schedule


def test_sink_reading_an_undefined_point_fails_at_compile_time() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[t >= 1] = 1.0
        tj.sink(x, lambda v, pt: None)
        p.output("y", x[t.bound - 1])
    with pytest.raises(tj.UndefinedPointError, match=r"no branch defines it at t=0"):
        p.compile(bounds={"T": 3})
    with pytest.raises(tj.UndefinedPointError, match=r"no branch defines it at t=0"):
        tj.reference.run(p, bounds={"T": 3})


def test_sink_needs_a_tensor() -> None:
    with tj.Program(), pytest.raises(tj.TempoError, match=r"takes a recurrent tensor"):
        tj.sink(3.0, print)


class _Logged(Exception):
    pass


def _failing_sink(calls: list[int], failing: set[int]) -> tj.Program:
    def log(value: Any, point: dict[str, int]) -> None:
        calls.append(point["t"])
        if point["t"] in failing:
            raise _Logged(f"cannot log {float(value)}")

    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[0] = 1.0
        x[t + 1] = x[t] * 0.5 + 1.0
        tj.sink(x, log)
        p.output("x", x[0 : t.bound])
    return p


NOTE = r"raised by the sink `sink log` at test_sinks\.py:\d+: `tj\.sink\(x, log\)`, called for t=2"


def test_a_sink_that_raises_raises_the_users_exception() -> None:
    """Compiled, the user's own exception comes out of the call (not JAX's INTERNAL error),
    with its traceback and a note naming the sink's line and point, as from the interpreter."""
    for run in (
        lambda p: tj.reference.run(p, bounds={"T": 5}),
        lambda p: p.compile(bounds={"T": 5})(),
    ):
        calls: list[int] = []
        with pytest.raises(_Logged, match=r"cannot log 1\.75") as info:
            run(_failing_sink(calls, {2}))
        assert re.fullmatch(NOTE, "\n".join(info.value.__notes__))
        assert info.traceback[-1].name == "log"  # raised where the user's function raised it
        assert calls == [0, 1, 2]  # no sink call after the failing one


def test_a_compiled_program_runs_again_after_a_sink_raised() -> None:
    calls: list[int] = []
    failing = {2}
    compiled = _failing_sink(calls, failing).compile(bounds={"T": 4})
    with pytest.raises(_Logged):
        compiled()
    failing.clear()
    compiled()
    jax.effects_barrier()
    assert calls == [0, 1, 2, 0, 1, 2, 3]
