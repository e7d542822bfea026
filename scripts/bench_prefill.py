"""The prefill part of the decode benchmark: a long prompt, then a few new tokens.

tempo_jax's decoder feeds the prompt as one block of positions (every prompt position at once,
attention in block-causal query blocks) and then one position per step; the ``scan`` and
``tiled`` decoders of :mod:`scripts.bench_decode` feed the prompt one position per step, as
they feed new tokens; ``prefill`` (:mod:`models.baselines.prefill`) is the hand-written
parallel prefill: the prompt in one vectorised masked pass, then scan's loop. Each point
decodes the same seeded prompt of ``prompt_len`` tokens and ``new_tokens`` greedy tokens with
every system, side by side in one run: compiled once, called once (every system's tokens must
equal scan's), then timed over ``repeats`` calls (the median).

A row: ``{system, attn, window, batch, prompt_len, new_tokens, block, seconds,
prompt_tokens_per_second, temp_bytes, compile_seconds, speedup_vs_scan}``; ``seconds`` is the
whole call (prompt and new tokens) and ``speedup_vs_scan`` scan's seconds over the system's.
The config's ``prefill`` section::

    prefill:
      attn: [causal]          # or window (the config's window)
      prompt_len: [256, 1024]
      new_tokens: 8
      systems: [tempo_jax, prefill, scan, tiled]
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tempo_jax.models.baselines import prefill, scan
from tempo_jax.models.params import init_params

from . import bench_decode

SYSTEMS = ("tempo_jax", "prefill", "scan", "tiled")


def sweep(config: dict[str, Any], systems: list[str] | None = None) -> list[dict[str, Any]]:
    """Every point of the config's ``prefill`` section, every system of ``systems`` that is
    one of :data:`SYSTEMS` (default: the section's ``systems``, else all)."""
    section = config["prefill"]
    systems = [s for s in (systems or section.get("systems", SYSTEMS)) if s in SYSTEMS]
    attns = section.get("attn", ["causal"])
    attns = [attns] if isinstance(attns, str) else attns
    new = int(section.get("new_tokens", 8))
    block = int(section.get("block", config["block"]))
    rows = []
    for attn in attns:
        for prompt_len in section["prompt_len"]:
            print(f"prefill: {attn} prompt_len={prompt_len} new_tokens={new}")
            found = point(config, attn, int(prompt_len), new, block, systems)
            for row in found:
                print(
                    f"  {row['system']:>9}: {row['seconds'] * 1e3:9.1f} ms "
                    f"{row['prompt_tokens_per_second']:9.0f} prompt tokens/s"
                )
            rows.extend(found)
    return rows


def point(
    config: dict[str, Any], attn: str, prompt_len: int, new: int, block: int, systems: list[str]
) -> list[dict[str, Any]]:
    """One prompt length: every system compiled, checked against scan, and timed."""
    total = prompt_len + new
    cfg = bench_decode.model_config(config["model"], attn, config.get("window", 512), total)
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = np.random.default_rng(1).integers(0, cfg.vocab, (config["batch"], prompt_len))
    prompt = jnp.asarray(tokens, jnp.int32)
    built = {s: _build(s, cfg, params, prompt, new, block) for s in systems}
    want = np.asarray(scan.generate(cfg, params, prompt, new)["tokens"])
    for system, b in built.items():
        got = np.asarray(b.tokens(b.run()))
        if not np.array_equal(got, want):
            raise bench_decode.TokenMismatch(
                f"{system}'s greedy tokens differ from the scan decoder's at prompt_len="
                f"{prompt_len}; not timing a wrong decoder."
            )
    rows = []
    for system, b in built.items():
        seconds = bench_decode.time_calls(b.run, config.get("repeats", 3))
        rows.append(
            {
                "system": system,
                "attn": attn,
                "window": cfg.window,
                "batch": prompt.shape[0],
                "prompt_len": prompt_len,
                "new_tokens": new,
                "block": block,
                "seconds": seconds,
                "prompt_tokens_per_second": prompt_len * prompt.shape[0] / seconds,
                "temp_bytes": b.temp_bytes,
                "compile_seconds": b.compile_seconds,
            }
        )
    scan_seconds = {r["prompt_len"]: r["seconds"] for r in rows if r["system"] == "scan"}
    for row in rows:
        base = scan_seconds.get(row["prompt_len"])
        row["speedup_vs_scan"] = None if base is None else base / row["seconds"]
    return rows


def _build(
    system: str, cfg: Any, params: Any, prompt: jax.Array, new: int, block: int
) -> bench_decode.Built:
    """``system`` compiled for one point (``prefill`` here, the others by bench_decode)."""
    if system != "prefill":
        return bench_decode.build(system, cfg, params, prompt, new, block)
    start = time.perf_counter()
    fn = jax.jit(lambda p, pr: prefill.generate(cfg, p, pr, new)["tokens"])
    compiled = fn.lower(params, prompt).compile()
    return bench_decode.Built(
        lambda: compiled(params, prompt),
        time.perf_counter() - start,
        compiled.memory_analysis().temp_size_in_bytes,
        None,
    )


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a text table."""
    head = (
        f"{'attn':>6} {'prompt':>6} {'new':>4} {'system':>9} {'ms':>9} {'prompt tok/s':>12} "
        f"{'temp MB':>8} {'compile':>7} {'x scan':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        speedup = "-" if r["speedup_vs_scan"] is None else f"{r['speedup_vs_scan']:7.2f}"
        temp = "-" if r["temp_bytes"] is None else f"{r['temp_bytes'] / 2**20:8.1f}"
        lines.append(
            f"{r['attn']:>6} {r['prompt_len']:>6} {r['new_tokens']:>4} {r['system']:>9} "
            f"{r['seconds'] * 1e3:9.1f} {r['prompt_tokens_per_second']:12.0f} {temp:>8} "
            f"{r['compile_seconds']:7.2f} {speedup:>7}"
        )
    return "\n".join(lines)
