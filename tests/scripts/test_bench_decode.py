"""The decoding benchmark end to end on its tiny config: rows, checks, plots (not a timing test:
the figures come from ``python -m tempo_jax.scripts.bench_decode``)."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax.numpy as jnp
import pytest
import yaml

from tempo_jax.configs import read
from tempo_jax.models.config import tiny_gpt2
from tempo_jax.scripts import bench_decode, bench_prefill

CONFIG = pathlib.Path(__file__).parents[2] / "configs" / "bench" / "decode_tiny.yaml"
FIELDS = {
    "model",
    "system",
    "attn",
    "batch",
    "seq_len",
    "block",
    "seconds_per_token",
    "temp_bytes",
    "compile_seconds",
    "bytes_per_token",
    "bandwidth_gbs",
    "cache_copies",
    "ratio_vs_scan",
    "ratio_vs_tiled",
}


@pytest.mark.slow
def test_the_tiny_sweep_times_every_system_at_every_point(tmp_path) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    bench_decode.run(config, tmp_path, "decode_tiny")
    result = json.loads((tmp_path / "decode_tiny.json").read_text())
    assert result["copy_bandwidth_gbs"] > 0 and result["machine"]["device"]
    rows = result["rows"]
    points = {(r["sweep"], r["attn"], r["seq_len"], r["block"]) for r in rows}
    assert points == {
        ("seq_len", attn, seq_len, 16) for attn in ("causal", "window") for seq_len in (32, 64)
    } | {("block", "causal", 32, block) for block in (8, 16)}
    for point in points:
        systems = [
            r["system"] for r in rows if (r["sweep"], r["attn"], r["seq_len"], r["block"]) == point
        ]
        padded = ["padded"] if point[2] <= config["padded_max_seq_len"] else []
        assert systems == ["tempo_jax", "scan", "tiled", *padded]
    for row in rows:
        assert set(row) >= FIELDS and row["model"] == "gpt2-2x32" and row["batch"] == 2
        assert row["seconds_per_token"] > 0 and row["bandwidth_gbs"] > 0
        assert row["compile_seconds"] > 0 and row["temp_bytes"] > 0
        assert row["ratio_vs_scan"] > 0 and row["ratio_vs_tiled"] > 0
    assert all(r["ratio_vs_scan"] == 1.0 for r in rows if r["system"] == "scan")
    assert all(r["cache_copies"] == 0 for r in rows if r["system"] == "tempo_jax")
    by = {(r["sweep"], r["attn"], r["seq_len"], r["block"], r["system"]): r for r in rows}
    # scan reads the whole cache at every position, the tiled decoders only live tiles
    tempo, scan = (
        by["seq_len", "window", 64, 16, "tempo_jax"],
        by["seq_len", "window", 64, 16, "scan"],
    )
    assert tempo["bytes_per_token"] < scan["bytes_per_token"]
    for name in ("seq_len", "block"):
        assert (tmp_path / f"decode_tiny_{name}.png").stat().st_size > 0
    prefill = {(r["attn"], r["prompt_len"], r["system"]) for r in result["prefill"]}
    assert prefill == {
        (attn, n, system)
        for attn in ("causal", "window")
        for n in (24, 40)
        for system in ("tempo_jax", "prefill", "scan", "tiled")
    }


def test_tiles_round_the_rows_read_up() -> None:
    cfg = tiny_gpt2()  # causal
    assert bench_decode.kv_rows_read("scan", cfg, 8, 4) == 8
    assert bench_decode.kv_rows_read("tiled", cfg, 8, 4) == 6  # 4 rows, then 8
    window = dataclasses.replace(cfg, window=3)
    # positions 0..7 read rows max(0, p - 2)..p, in tiles [0] x 4, [0, 1] x 2, [1] x 2
    assert bench_decode.kv_rows_read("tiled", window, 8, 4) == 5
    # tempo_jax keeps the last 3 rows, one tile of 3 read at every position
    assert bench_decode.kv_rows_read("tempo_jax", window, 8, 4) == 3
    # the last 4 rows in tiles of 2: positions 0 and 1 fill the first tile only
    four = dataclasses.replace(cfg, window=4)
    assert bench_decode.kv_rows_read("tempo_jax", four, 8, 2) == (2 + 2 + 6 * 4) / 8
    assert bench_decode.kv_rows_read("padded", window, 8, 4) == 8


HLO = """\
%fused_computation.1 (param_0: f32[2,4,31,8]) -> f32[2,4,16,8] {
  %param_0 = f32[2,4,31,8]{3,2,1,0} parameter(0)
  %transpose.1 = f32[31,2,4,8]{3,2,1,0} transpose(%param_0), dimensions={2,0,1,3}
  ROOT %slice.1 = f32[2,4,16,8]{3,2,1,0} slice(%param_0), slice={[0:2], [0:4], [0:16], [0:8]}
}

%fused_computation.2 (param_0.1: f32[2,4,31,8]) -> f32[31,2,4,8] {
  %param_0.1 = f32[2,4,31,8]{3,2,1,0} parameter(0)
  ROOT %transpose.2 = f32[31,2,4,8]{3,2,1,0} transpose(%param_0.1), dimensions={2,0,1,3}
}

ENTRY %main.3 (Arg_0.1: f32[2,4,31,8]) -> f32[2,4,31,8] {
  %Arg_0.1 = f32[2,4,31,8]{3,2,1,0} parameter(0)
  %constant.1 = f32[] constant(0)
  %broadcast.1 = f32[2,4,31,8]{3,2,1,0} broadcast(%constant.1), dimensions={}
  %copy.1 = f32[2,4,31,8]{3,2,1,0} copy(%broadcast.1)
  %tile = f32[2,4,16,8]{3,2,1,0} fusion(%Arg_0.1), kind=kLoop, calls=%fused_computation.1
  %moved = f32[31,2,4,8]{3,2,1,0} fusion(%Arg_0.1), kind=kLoop, calls=%fused_computation.2
  %copy.2 = f32[2,4,16,8]{3,2,1,0} copy(%tile)
  ROOT %copy.3 = f32[2,4,31,8]{1,0,2,3} copy(%Arg_0.1)
}
"""


def test_cache_copies_are_stored_copies_of_cache_size() -> None:
    # counted: the fusion whose root is a transpose, and the copy of the argument; not: the
    # transpose fused into a slice, the fill of a broadcast, the tile-sized copy
    assert bench_decode.large_copies(HLO, 31 * 2 * 4 * 8, set()) == [(31, 2, 4, 8), (2, 4, 31, 8)]
    assert bench_decode.large_copies(HLO, 31 * 2 * 4 * 8, {(2, 4, 8, 31)}) == []


def test_a_token_mismatch_aborts_before_timing(monkeypatch) -> None:
    config = yaml.safe_load(CONFIG.read_text())

    def build(system, cfg, params, prompt, steps, block):
        tokens = jnp.full((prompt.shape[0], steps + 1), system == "tempo_jax", jnp.int32)
        return bench_decode.Built(lambda: tokens, 0.0, None, None)

    monkeypatch.setattr(bench_decode, "build", build)
    with pytest.raises(bench_decode.TokenMismatch, match="differ from the scan decoder's"):
        bench_decode.sweep(config, systems=["tempo_jax", "scan"])


def test_the_prefill_sweep_checks_tokens_and_times_each_system() -> None:
    """A prompt fed as one block (tempo_jax) and per position (scan): the same tokens, both
    timed, the speed-up against scan recorded."""
    config = yaml.safe_load(CONFIG.read_text())
    config["prefill"] = {"attn": "window", "prompt_len": [24], "new_tokens": 3}
    rows = bench_prefill.sweep(config, ["tempo_jax", "prefill", "scan"])
    assert [(r["system"], r["prompt_len"], r["window"]) for r in rows] == [
        ("tempo_jax", 24, 16),
        ("prefill", 24, 16),
        ("scan", 24, 16),
    ]
    for row in rows:
        assert row["seconds"] > 0 and row["compile_seconds"] > 0 and row["temp_bytes"] > 0
        assert row["prompt_tokens_per_second"] == pytest.approx(24 * 2 / row["seconds"])
    assert rows[2]["speedup_vs_scan"] == 1.0 and rows[0]["speedup_vs_scan"] > 0
    assert "x scan" in bench_prefill.table(rows)


def test_the_gpu_config_reads_and_configures_every_point() -> None:
    """``decode_gpu_paper.yaml`` runs only where a GPU is lent: each of its points must make a
    model config (GPT-2 small at the point's length and attention) before device time is
    spent."""
    config = read("bench/decode_gpu_paper")
    found = bench_decode.points(config)
    assert len(found) == 2 * 6 + 4  # two attentions x six lengths, then four tile sizes
    for _, point in found:
        cfg = bench_decode.model_config(
            config["model"], point.attn, config["window"], point.seq_len
        )
        assert (cfg.layers, cfg.dim, cfg.vocab, cfg.max_len) == (12, 768, 50257, point.seq_len)
        assert cfg.window == (config["window"] if point.attn == "window" else None)
        assert point.block in (256, 512, 1024, 2048)
    assert set(config["systems"]) <= set(bench_decode.SYSTEMS)
