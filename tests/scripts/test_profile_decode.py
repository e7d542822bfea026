"""The decode profiler: leaf events and op kinds from hand-built traces, then one real trace of
the tiny config (the figures come from ``python -m tempo_jax.scripts.profile_decode``)."""

from __future__ import annotations

import dataclasses
import os
import pathlib

import pytest
import yaml

from tempo_jax.scripts import profile_decode

CONFIG = pathlib.Path(__file__).parents[2] / "configs" / "bench" / "decode_tiny.yaml"


@dataclasses.dataclass
class Ev:
    name: str
    start_ns: float
    duration_ns: float


def test_leaves_are_the_events_holding_no_other() -> None:
    # a loop holding a conditional holding two kernels, then a kernel after the loop; the
    # second kernel ends exactly where the next one starts (touching, not nested)
    events = [
        Ev("while.3", 0, 100),
        Ev("cond.7", 10, 50),
        Ev("dot.75", 10, 20),
        Ev("fusion.2", 30, 20),
        Ev("copy_add_fusion.16", 70, 10),
        Ev("ynn_fusion.33", 100, 5),
    ]
    names = [e.name for e in profile_decode.leaves(reversed(events))]
    assert names == ["dot.75", "fusion.2", "copy_add_fusion.16", "ynn_fusion.33"]


def test_a_zero_length_event_at_a_parents_start_leaves_the_parent_a_parent() -> None:
    events = [Ev("cond.1", 0, 10), Ev("dot.1", 0, 0), Ev("dot.2", 5, 5)]
    assert [e.name for e in profile_decode.leaves(events)] == ["dot.1", "dot.2"]


def test_kinds_drop_numeric_suffixes_and_other_threads() -> None:
    assert profile_decode.op_kind("dot.75") == "dot"
    assert profile_decode.op_kind("wrapped_reduce-window.5.1") == "wrapped_reduce-window"
    assert profile_decode.op_kind("ynn_fusion") == "ynn_fusion"
    lines = [
        ("tf_XLAEigen/1", [Ev("dot.1", 0, 2000), Ev("dot.2", 3000, 1000)]),
        # the runtime's own events inside a kernel (a pool wait, a completion marker) and
        # around it (the executor) are not kernels and leave the kernel a leaf
        (
            "tf_XLAEigen/2",
            [
                Ev("ThunkExecutor::Execute", 0, 10000),
                Ev("cond.4", 0, 9000),
                Ev("ynn_fusion.3", 100, 500),
                Ev("SlinkyThreadPool::Await", 200, 100),
                Ev("end: ynn_fusion", 590, 5),
            ],
        ),
        ("python", [Ev("dot.9", 0, 10**9)]),  # not an executor thread
    ]
    kinds = profile_decode.kernel_kinds(lines)
    assert set(kinds) == {"dot", "ynn_fusion"}
    assert kinds["dot"].count == 2 and kinds["dot"].seconds == pytest.approx(3e-6)
    assert kinds["ynn_fusion"].count == 1 and kinds["ynn_fusion"].seconds == pytest.approx(5e-7)


def test_a_real_trace_counts_kernels_within_the_wall_time() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    rows = profile_decode.profile(config, ["tempo_jax", "scan"], "causal", 32, 16)
    assert {r["system"] for r in rows} == {"tempo_jax", "scan"}
    for system in ("tempo_jax", "scan"):
        mine = [r for r in rows if r["system"] == system]
        leaf = sum(r["seconds_per_token"] for r in mine)
        wall = mine[0]["wall_seconds_per_token"]
        assert all(r["kernels_per_token"] > 0 and r["seconds_per_token"] >= 0 for r in mine)
        # the kernels run on the executor's threads, at most one per core at a time
        assert 0 < leaf <= wall * (os.cpu_count() or 1)
    assert "leaf total" in profile_decode.table(rows)
