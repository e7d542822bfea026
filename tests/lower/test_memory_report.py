"""``Compiled.memory()`` / ``explain()``: the stored values of the buffer plan, as planned.

Oracles: the shapes follow from the program (a full buffer over ``T`` points, a window's
cycle of its rows), the bytes from the shapes, and the table lists every value.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax.models import config
from tempo_jax.models.tempo import TempoDecoder
from tests.lower.helpers import decaying


def _recurrence() -> tj.Program:
    with tj.Program() as p:
        (t,) = p.dims("t")
        a = tj.input("a", (3,), jnp.float32, domain=(t,))
        x = tj.placeholder((3,), jnp.float32, domain=(t,))  # declared here: the report's source
        x[0] = tj.zeros((3,), jnp.float32)
        x[t + 1] = x[t] * 0.5 + a[t]
        p.output("x", x)
        p.output("total", tj.lift(lambda v: v.sum(0))(x[0 : t.bound]))
    return p


def test_a_full_output_is_one_buffer_of_every_point() -> None:
    compiled = _recurrence().compile({"T": 10})
    report = compiled.memory()
    (full,) = [v for v in report.values if v.name == "x" and v.kind == "full"]
    assert full.shape == (10, 3) and full.bytes == 10 * 3 * 4 and full.dtype == "float32"
    assert full.memory_kind == "device" and "test_memory_report.py" in full.source
    assert report.device_bytes == sum(v.bytes for v in report.values)
    out = compiled(a=np.ones((10, 3), np.float32))  # the plan the report shows is the one run
    np.testing.assert_allclose(out["x"][-1], 2 * (1 - 0.5**9), rtol=1e-6)


def test_a_dynamic_bound_is_reported_at_its_largest_value() -> None:
    compiled = _recurrence().compile({"T": tj.dynamic(max=16)})
    (full,) = [v for v in compiled.memory().values if v.name == "x" and v.kind == "full"]
    assert full.shape == (16, 3)


@pytest.mark.parametrize("end_token", [None, 5])
def test_a_window_cache_is_a_cycle_of_its_rows(end_token: int | None) -> None:
    """The windowed decoder's keys and values: the last 16 rows of each layer, not 128; also
    when an end token stops the step loop (the cache row of step ``t`` is ``P + t``)."""
    cfg = dataclasses.replace(config.tiny_gpt2(), max_len=128, window=16)
    dec = TempoDecoder(cfg, 2, 9, 100, block=8, end_token=end_token)
    values = dec.compiled.memory().values
    cycles = [v for v in values if v.kind == "cyclic"]
    assert len(cycles) == 2  # keys and values
    for v in cycles:
        assert v.shape == (16, cfg.layers, 2, cfg.kv_heads, cfg.head_dim)
    text = dec.compiled.explain()
    assert text.startswith(dec.compiled.schedule)
    assert "cyclic" in text and "planned device bytes" in text
    assert all(v.name[:24] in text for v in values)
    assert "planned peak device bytes" in text


def _two_phases(width: int) -> tj.Program:
    """Two recurrences in turn, each stored whole for a range read after its loop: the first's
    buffer is freed before the second's loop runs. (Both reads are element-wise ops XLA fuses
    into their sums: a ``sin`` it keeps whole, as large as the buffer, an op's intermediate
    the plan does not count.)"""
    with tj.Program() as p:
        (t,) = p.dims("t")
        a = tj.input("a", (width,), jnp.float32, domain=(t,))
        x = decaying(a, width, 0.5)
        first = tj.lift(lambda v: v.sum(0), name="first")(tj.tanh(x[t])[0 : t.bound])
        y = decaying(a, width, 0.25, first)
        p.output("total", tj.lift(lambda v: v.sum(0), name="second")(tj.tanh(y[t])[0 : t.bound]))
    return p


def test_the_peak_counts_values_over_their_live_ranges() -> None:
    """The two buffers never live at once: the peak holds one of them, not both."""
    steps, width = 50, 400
    report = _two_phases(width).compile({"T": steps}).memory()
    buffer = steps * width * 4
    assert [v.bytes for v in report.values if v.kind == "full"] == [buffer, buffer]
    assert 2 * buffer < report.device_bytes < 2.2 * buffer  # x and y together
    assert buffer <= report.peak_device_bytes < 1.1 * buffer
    assert report.peak_at.startswith("S")


@pytest.mark.parametrize(
    ("program", "steps", "width"),
    [("recurrence", 100, 1000), ("recurrence", 400, 250), ("two_phases", 200, 2000)],
)
def test_the_planned_peak_agrees_with_xla_where_stored_values_dominate(
    program: str, steps: int, width: int
) -> None:
    """Programs whose memory is their stored values: the planned peak is within 10% of XLA's
    temporary and output bytes for the compiled executable."""
    if program == "recurrence":
        with tj.Program() as p:
            (t,) = p.dims("t")
            a = tj.input("a", (width,), jnp.float32, domain=(t,))
            x = decaying(a, width, 0.5)
            p.output("total", tj.lift(lambda v: v.sum(0))((tj.tanh(x[t]) * 2)[0 : t.bound]))
    else:
        p = _two_phases(width)
    compiled = p.compile({"T": steps})
    analysis = compiled.lower().compile().memory_analysis()
    xla = analysis.temp_size_in_bytes + analysis.output_size_in_bytes
    planned = compiled.memory().peak_device_bytes
    assert abs(planned - xla) <= 0.1 * xla, (planned, xla)
