"""The attention benchmark's systems agree and its rows are complete (not a timing test)."""

from __future__ import annotations

import json

from tempo_jax.scripts import bench_attention


def test_systems_agree_and_rows_are_complete(tmp_path) -> None:
    config = {"batch": 2, "width": 8, "steps": [40, 96], "grad_steps": [40], "repeats": 1}
    rows = bench_attention.run(config)  # asserts the systems agree
    systems = {"tempo_jax", *bench_attention.BASELINES}
    want = {("forward", n, s) for n in (40, 96) for s in systems}
    want |= {("gradient", 40, s) for s in systems}
    assert {(r["pass"], r["steps"], r["system"]) for r in rows} == want
    assert all(r["seconds_median"] > 0 and r["temp_bytes"] >= 0 for r in rows)
    bench_attention.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
    json.dumps(rows)
