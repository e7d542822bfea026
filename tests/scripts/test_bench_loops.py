"""The loop benchmark's workloads agree with their lax.scan baselines (not a timing test)."""

from __future__ import annotations

import json

from tempo_jax.scripts import bench_loops


def test_workloads_agree_and_rows_are_complete(tmp_path) -> None:
    config = {
        "steps": 12,
        "repeats": 1,
        "workloads": {
            "running_sum": {},
            "ema": {"width": 8, "decay": 0.5},
            "rnn": {"layers": 2, "hidden": 4},
            "rnn_grad": {"layers": 2, "hidden": 4},
            "batched_rnn": {"batch": 3, "hidden": 4, "steps": 5},
            "causal_attention": {"heads": 2, "width": 4, "steps": 40},
        },
    }
    rows = bench_loops.run(config)  # asserts agreement of tempo_jax and lax.scan per workload
    assert {(r["name"], r["system"]) for r in rows} == {
        (n, s) for n in config["workloads"] for s in ("lax.scan", "tempo_jax")
    } | {
        ("batched_rnn", "tempo_jax, vectorisation off"),
        ("causal_attention", "tempo_jax, tiling off"),
    }
    assert all(r["ratio_vs_scan"] > 0 for r in rows)
    bench_loops.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
    json.dumps(rows)
