"""Benchmark: LLM decoding with tempo_jax against the three hand-written JAX decoders.

Every point of a sweep decodes the same prompt (``prompt_len`` tokens, 1 by default, then new
tokens up to ``seq_len`` positions in all) greedily with the same weights
(``init_params(cfg, PRNGKey(0))``), once per system, side by side in one run:

- ``tempo_jax``: :class:`models.tempo.TempoDecoder`, one compiled tempo_jax program; the
  compiler tiles the attention's growing range ``k[0:t+1]`` into tiles of ``block`` rows;
- ``padded``: a Python loop calling one jitted step per token, masked attention over the whole
  cache (:mod:`models.baselines.padded`);
- ``scan``: the same step in one jitted ``lax.while_loop`` (:mod:`models.baselines.scan`);
- ``tiled``: one jitted ``lax.while_loop`` visiting only live cache tiles of ``block`` rows
  (:mod:`models.baselines.tiled`).

The jitted systems return the tokens only: the per-position logits ``[B, T, V]`` are not part
of decoding (at the paper's sizes they would take 210 GB), and XLA drops their buffer. Each
system is compiled and called once, then timed over ``repeats`` calls (the median);
``seconds_per_token`` is a decode's time divided by ``seq_len``. Before timing, the smallest
``seq_len`` of each attention kind checks that tempo_jax's tokens equal the scan decoder's.

``bytes_per_token`` is the memory a position has to read: the weights (the position table one
row) and, on average over the ``seq_len`` positions, the key and value rows the system reads,
``rows * layers * batch * kv_heads * head_dim * 2 * 4`` bytes: ``padded`` and ``scan`` read the
whole cache (``seq_len`` rows); ``tiled`` and ``tempo_jax`` the tiles holding the live rows
(``0 .. pos``, or the last ``window`` of them), whole tiles; with a window, tempo_jax keeps the
last ``window`` rows only, a cycle of tiles of at most ``block`` rows, and reads the tiles of it
that hold rows of the window (all of them once ``window`` positions are in). ``bandwidth_gbs``
is that over the time per token, next to the machine's copy bandwidth (a jitted in-place
``x + 1`` over 256 MB, bytes read and written) in the header.

``cache_copies`` counts the buffers of at least one layer's cache of elements (``seq_len - 1``
rows) that the compiled HLO fills by a ``copy`` or ``transpose``: 0 when the cache is updated
in place and read as laid out (``tempo_jax`` warns otherwise). Weight- and logits-shaped
buffers, fills of a broadcast (a zero cache) and copies fused into a loop fusion (not stored)
are not counted; ``cache_copy_shapes`` lists the shapes found. For ``padded``, ``temp_bytes``,
``compile_seconds`` and the copies are its step's (the cache is the step's argument, not a
temporary).

A config's ``prefill`` section adds the prompt sweep of :mod:`scripts.bench_prefill` (a
long prompt fed as one block by tempo_jax, one position per step by scan and tiled), its rows
under ``"prefill"``.

Rows go to ``results/decode/<config stem>.json``: ``{"machine", "copy_bandwidth_gbs",
"prefill": [...], "rows": [{model, sweep, system, attn, batch, seq_len, block,
seconds_per_token, temp_bytes, compile_seconds, bytes_per_token, bandwidth_gbs, cache_copies,
ratio_vs_scan, ratio_vs_tiled}]}``, with plots ``<stem>_seq_len.png`` (ms per token against
``seq_len``, one panel per attention kind) and ``<stem>_block.png`` (against the tile size).

    python -m tempo_jax.scripts.bench_decode [--config configs/bench/decode_cpu_small.yaml]
        [--only seq_len|block|prefill] [--systems tempo_jax,scan,tiled,padded,prefill]
        [--out results/decode]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import tempo_jax as tj
from tempo_jax.configs import ConfigError, find, read
from tempo_jax.models import tempo
from tempo_jax.models.baselines import padded, scan, tiled
from tempo_jax.models.baselines.decode_loop import Sampling, init_state
from tempo_jax.models.config import DecoderConfig
from tempo_jax.models.params import Params, init_params, param_shapes
from tempo_jax.scripts import results, timing

SYSTEMS = ("tempo_jax", "scan", "tiled", "padded")
BLOCK_FREE = ("padded", "scan")  # their work does not depend on the tile size
SWEEPS = ("seq_len", "block")
FLOAT_BYTES = 4  # float32 weights and caches


class TokenMismatch(RuntimeError):
    """tempo_jax and the scan decoder produced different greedy tokens."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One decode shape: attention kind (``causal`` or ``window``), positions, tile size."""

    attn: str
    seq_len: int
    block: int


@dataclasses.dataclass
class Built:
    """A compiled system: ``run()`` decodes (the call timed), ``tokens(run())`` are its tokens
    ``[B, seq_len]``."""

    run: Callable[[], Any]
    compile_seconds: float
    temp_bytes: int | None
    hlo: str | None
    tokens: Callable[[Any], jax.Array] = lambda out: out


def model_config(model: dict[str, Any], attn: str, window: int, seq_len: int) -> DecoderConfig:
    """The ``DecoderConfig`` of ``model`` (a config's ``model`` section) for one point."""
    if attn not in ("causal", "window"):
        raise ValueError(f"attn must be causal or window, got {attn!r}")
    fields = {"norm_eps": 1e-5, "tie_embeddings": True, **model}
    return DecoderConfig(**fields, max_len=seq_len, window=window if attn == "window" else None)


def model_name(cfg: DecoderConfig) -> str:
    """A short name: ``gpt2-4x256`` (arch, layers, width)."""
    return f"{cfg.arch}-{cfg.layers}x{cfg.dim}"


def build(
    system: str, cfg: DecoderConfig, params: Params, prompt: jax.Array, steps: int, block: int
) -> Built:
    """Compile ``system`` for one point (timed: ``compile_seconds``)."""
    start = time.perf_counter()
    if system == "tempo_jax":
        cache_clear = getattr(getattr(tempo, "_compiled", None), "cache_clear", None)
        if cache_clear is not None:  # compile from scratch, not from an earlier point
            cache_clear()
        decoder = tempo.TempoDecoder(cfg, prompt.shape[0], prompt.shape[1], steps, block=block)
        inputs = decoder.inputs(params, prompt)
        fn = jax.jit(lambda i: decoder.result(decoder.compiled(**i), i["prompt"])["tokens"])
        compiled = fn.lower(inputs).compile()
        seconds = time.perf_counter() - start
        return Built(
            lambda: compiled(inputs),
            seconds,
            compiled.memory_analysis().temp_size_in_bytes,
            compiled.as_text(),
        )
    if system == "padded":  # the step's compilation; the loop runs it seq_len - 1 times
        sampling = Sampling()
        state = init_state(cfg, params, prompt, steps, prompt.shape[1] + steps, None)
        key = jax.random.PRNGKey(0)
        compiled = padded.step.lower(cfg, params, state, prompt, key, sampling).compile()
        seconds = time.perf_counter() - start
        return Built(
            lambda: padded.generate(cfg, params, prompt, steps)["tokens"],
            seconds,
            compiled.memory_analysis().temp_size_in_bytes,
            compiled.as_text(),
        )
    if system == "scan":
        fn = jax.jit(lambda p, pr: scan.generate(cfg, p, pr, steps)["tokens"])
    elif system == "tiled":
        fn = jax.jit(lambda p, pr: tiled.generate(cfg, p, pr, steps, block=block)["tokens"])
    else:
        raise ValueError(f"unknown system {system!r}; known: {', '.join(SYSTEMS)}")
    compiled = fn.lower(params, prompt).compile()
    seconds = time.perf_counter() - start
    return Built(
        lambda: compiled(params, prompt),
        seconds,
        compiled.memory_analysis().temp_size_in_bytes,
        compiled.as_text(),
    )


def time_calls(run: Callable[[], Any], repeats: int) -> float:
    """The median seconds of ``repeats`` calls of ``run`` (already called once)."""
    return timing.median_seconds(run, repeats)


# A computation's first line, `%region_1.2 (p: f32[2]) -> f32[2] {` (`ENTRY %main ...`), and an
# instruction: `%copy.3 = f32[8,4,64]{2,1,0} copy(%x), ...` (a result may be a tuple:
# `(f32[2,3]{1,0}, u32[]) copy-start(%y)`), with `calls=%f` for a fusion's computation.
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s+(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((%?[\w.\-]*)")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_SHAPE = re.compile(r"\b[a-z]+\d*\[([\d,]*)\]")
_COPIES = ("copy", "copy-start", "transpose")
_FILLS = ("broadcast", "constant", "iota")  # a copy of one of these fills a buffer, copies none


@dataclasses.dataclass
class _Instruction:
    name: str
    shapes: list[tuple[int, ...]]
    opcode: str
    operand: str
    calls: str | None


def parse_hlo(hlo: str) -> tuple[dict[str, list[_Instruction]], dict[str, str]]:
    """The instructions of every computation of ``hlo`` (its text form), and the opcode of
    every computation's root."""
    computations: dict[str, list[_Instruction]] = {}
    roots: dict[str, str] = {}
    current: list[_Instruction] = []
    name = ""
    for line in hlo.splitlines():
        header = _COMPUTATION.match(line)
        if header is not None:
            name = header.group(1)
            current = computations.setdefault(name, [])
            continue
        match = _INSTRUCTION.match(line)
        if match is None:
            continue
        root, inst, result, opcode, operand = match.groups()
        shapes = [tuple(int(d) for d in dims.split(",") if d) for dims in _SHAPE.findall(result)]
        calls = _CALLS.search(line) if opcode == "fusion" else None
        current.append(
            _Instruction(inst, shapes, opcode, operand.lstrip("%"), calls and calls.group(1))
        )
        if root:
            roots[name] = opcode
    return computations, roots


def large_copies(hlo: str, elements: int, ignore: set[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The result shapes of the buffers ``hlo`` fills by a ``copy`` or ``transpose`` (one
    instruction, or a fusion whose root is one) with at least ``elements`` elements, except
    shapes whose sorted dims are in ``ignore`` and copies of a broadcast or constant (a fill,
    not a copy). A copy inside a fusion is not counted: it is fused into the fusion's loop,
    not stored."""
    computations, roots = parse_hlo(hlo)
    fused = {i.calls for body in computations.values() for i in body if i.calls is not None}
    found = []
    for name, body in computations.items():
        if name in fused:
            continue
        ops = {i.name: roots.get(i.calls, i.opcode) if i.calls else i.opcode for i in body}
        for inst in body:
            if ops[inst.name] not in _COPIES or ops.get(inst.operand) in _FILLS:
                continue
            for shape in inst.shapes:
                if math.prod(shape) >= elements and tuple(sorted(shape)) not in ignore:
                    found.append(shape)
                    break
    return found


def not_cache_shapes(cfg: DecoderConfig, batch: int, seq_len: int) -> set[tuple[int, ...]]:
    """Sorted dims of the large arrays that are not a cache: every weight (stacked and one
    layer's), the logits ``[T, B, V]`` and ``[T * B, V]``."""
    shapes: set[tuple[int, ...]] = set()
    for shape in jax.tree_util.tree_leaves(param_shapes(cfg), is_leaf=_is_shape):
        shapes |= {tuple(sorted(shape)), tuple(sorted(shape[1:]))}
    for rows in (seq_len - 1, seq_len):
        shapes |= {
            tuple(sorted((rows, batch, cfg.vocab))),
            tuple(sorted((rows * batch, cfg.vocab))),
        }
    return shapes


def _is_shape(node: Any) -> bool:
    return isinstance(node, tuple)


def cache_copies(hlo: str, cfg: DecoderConfig, batch: int, seq_len: int) -> list[tuple[int, ...]]:
    """The cache-sized copies and transposes of ``hlo`` (see the module docstring)."""
    elements = (seq_len - 1) * batch * cfg.kv_heads * cfg.head_dim
    return large_copies(hlo, elements, not_cache_shapes(cfg, batch, seq_len))


def kv_rows_read(system: str, cfg: DecoderConfig, seq_len: int, block: int) -> float:
    """Cache rows one position reads, on average over positions ``0 .. seq_len - 1``."""
    pos = np.arange(seq_len)
    if system in BLOCK_FREE:
        return float(seq_len)
    lo = np.zeros_like(pos) if cfg.window is None else np.maximum(pos - cfg.window + 1, 0)
    if system == "tempo_jax" and cfg.window is not None and cfg.window < seq_len:
        # a cycle of the last `window` rows in tiles of at most `block`: every tile holding a
        # row of the window (all of them once `window` positions are in)
        size = min(block, cfg.window)
        rows = -(-cfg.window // size) * size
        slot = pos[:, None] - np.mod(pos[:, None] - np.arange(rows)[None, :], rows)
        live = (slot >= lo[:, None]).reshape(seq_len, rows // size, size).any(axis=2)
        return float(np.mean(live.sum(axis=1) * size))
    if system in ("tiled", "tempo_jax"):
        return float(np.mean((pos // block + 1 - lo // block) * block))
    return float(np.mean(pos + 1 - lo))


def param_bytes_per_token(cfg: DecoderConfig, params: Params) -> int:
    """Weight bytes a position reads: all of them, but one row of the position table (and of
    an untied embedding)."""
    total = sum(int(x.nbytes) for x in jax.tree_util.tree_leaves(params))
    one_row = {"pos"} | (set() if cfg.tie_embeddings else {"embed"})
    for name in one_row & set(params):
        total -= int(params[name].nbytes) - cfg.dim * FLOAT_BYTES
    return total


def bytes_per_token(
    system: str, cfg: DecoderConfig, params: Params, batch: int, seq_len: int, block: int
) -> float:
    """Weights plus key and value rows read per position (see the module docstring)."""
    per_row = cfg.layers * batch * cfg.kv_heads * cfg.head_dim * 2 * FLOAT_BYTES
    rows = kv_rows_read(system, cfg, seq_len, block)
    return param_bytes_per_token(cfg, params) + rows * per_row


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """The machine's copy bandwidth in GB/s: a jitted ``x + 1`` over ``megabytes`` of float32,
    in place (the input donated: no fresh output buffer to fault in), bytes read plus written
    over the median time."""
    x = jnp.zeros(megabytes * 2**20 // FLOAT_BYTES, jnp.float32)
    add = jax.jit(lambda v: v + 1.0, donate_argnums=0).lower(x).compile()
    x = jax.block_until_ready(add(x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x = jax.block_until_ready(add(x))
        times.append(time.perf_counter() - start)
    return 2 * x.nbytes / statistics.median(times) / 1e9


def points(config: dict[str, Any], only: str | None = None) -> list[tuple[str, Point]]:
    """Every ``(sweep, point)`` of ``config``'s sweeps, in order."""
    found = []
    sweeps = config.get("sweeps", {})
    unknown = set(sweeps) - set(SWEEPS)
    if unknown:
        raise ValueError(f"unknown sweeps {sorted(unknown)}; known: {', '.join(SWEEPS)}")
    if only is not None and only not in (*SWEEPS, "prefill"):
        raise ValueError(f"--only must be one of {', '.join(SWEEPS)}, got {only!r}")
    for name in SWEEPS:
        if name not in sweeps or (only is not None and name != only):
            continue
        sweep = sweeps[name]
        attns = sweep.get("attn", ["causal"])
        attns = [attns] if isinstance(attns, str) else attns
        seq_lens = sweep["seq_len"] if name == "seq_len" else [sweep["seq_len"]]
        blocks = sweep["block"] if name == "block" else [sweep.get("block", config["block"])]
        for attn in attns:
            for seq_len in seq_lens:
                for block in blocks:
                    found.append((name, Point(attn, int(seq_len), int(block))))
    return found


def point_inputs(
    config: dict[str, Any], attn: str, seq_len: int
) -> tuple[DecoderConfig, Params, jax.Array]:
    """The model, weights (``init_params(cfg, PRNGKey(0))``) and prompt ``[batch, prompt_len]``
    (seeded) that every system decodes at the point ``(attn, seq_len)`` of ``config``."""
    cfg = model_config(config["model"], attn, config.get("window", 512), seq_len)
    params = init_params(cfg, jax.random.PRNGKey(0))
    shape = (config["batch"], config.get("prompt_len", 1))
    tokens = np.random.default_rng(1).integers(0, cfg.vocab, shape)
    return cfg, params, jnp.asarray(tokens, jnp.int32)


def bench_point(
    point: Point,
    config: dict[str, Any],
    systems: list[str],
    check: bool,
) -> list[dict[str, Any]]:
    """One point, every system in ``systems``: compiled and called once each (with the token
    check when ``check``), then timed."""
    cfg, params, prompt = point_inputs(config, point.attn, point.seq_len)
    batch, steps = prompt.shape[0], point.seq_len - prompt.shape[1]
    built, outputs = {}, {}
    for system in systems:
        built[system] = build(system, cfg, params, prompt, steps, point.block)
        outputs[system] = np.asarray(built[system].tokens(built[system].run()))
    if check and "tempo_jax" in outputs:
        want = outputs.get("scan")
        if want is None:
            want = np.asarray(scan.generate(cfg, params, prompt, steps)["tokens"])
        got = outputs["tempo_jax"]
        if got.shape != want.shape or not np.array_equal(got, want):
            wrong = np.argwhere(got != want) if got.shape == want.shape else []
            where = f" (first at [row, position] {wrong[0].tolist()})" if len(wrong) else ""
            raise TokenMismatch(
                f"tempo_jax's greedy tokens differ from the scan decoder's at {point}{where}: "
                f"shapes {got.shape} and {want.shape}; not timing a wrong decoder."
            )
    rows = []
    for system in systems:
        b = built.pop(system)
        seconds = time_calls(b.run, config.get("repeats", 3)) / point.seq_len
        nbytes = bytes_per_token(system, cfg, params, batch, point.seq_len, point.block)
        copies = None if b.hlo is None else cache_copies(b.hlo, cfg, batch, point.seq_len)
        rows.append(
            {
                "model": model_name(cfg),
                "system": system,
                "attn": point.attn,
                "window": cfg.window,
                "batch": batch,
                "seq_len": point.seq_len,
                "block": point.block,
                "seconds_per_token": seconds,
                "temp_bytes": b.temp_bytes,
                "compile_seconds": b.compile_seconds,
                "bytes_per_token": nbytes,
                "bandwidth_gbs": nbytes / seconds / 1e9,
                "cache_copies": None if copies is None else len(copies),
                "cache_copy_shapes": None if copies is None else [list(s) for s in copies],
            }
        )
        if system == "tempo_jax" and copies:
            print(
                f"WARNING: tempo_jax at {point}: {len(copies)} cache-sized copies or "
                f"transposes in the compiled HLO, shapes {copies}"
            )
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``ratio_vs_scan`` (scan at the same attention and seq_len) and ``ratio_vs_tiled`` (tiled
    at the same point too) of every row: seconds per token over theirs, None without one."""
    for ref, keys in (("scan", ("attn", "seq_len")), ("tiled", ("attn", "seq_len", "block"))):
        base = {tuple(r[k] for k in keys): r for r in rows if r["system"] == ref}
        for row in rows:
            other = base.get(tuple(row[k] for k in keys))
            ratio = None if other is None else row["seconds_per_token"] / other["seconds_per_token"]
            row[f"ratio_vs_{ref}"] = ratio


def sweep(
    config: dict[str, Any],
    only: str | None = None,
    systems: list[str] | None = None,
    progress: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every point of ``config`` (see :func:`points`) and every system; a (system, point)
    shared by two sweeps is measured once (``padded`` and ``scan`` do not depend on the tile
    size); ``padded`` is skipped above ``padded_max_seq_len``. ``progress`` is called with the
    rows so far after each point."""
    systems = [s for s in systems or config.get("systems", SYSTEMS) if s != "prefill"]
    unknown = set(systems) - set(SYSTEMS)  # `prefill` runs in the prefill sweep only
    if unknown:
        raise ValueError(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")
    padded_max = config.get("padded_max_seq_len")
    todo = points(config, only)
    smallest = {}
    for _, point in todo:
        smallest[point.attn] = min(smallest.get(point.attn, point.seq_len), point.seq_len)
    measured: dict[tuple, dict[str, Any]] = {}
    rows = []
    checked = set()
    for name, point in todo:

        def key(system: str, point: Point = point) -> tuple:
            block = None if system in BLOCK_FREE else point.block
            return (system, point.attn, point.seq_len, block)

        run = [
            s
            for s in systems
            if key(s) not in measured
            and not (s == "padded" and padded_max is not None and point.seq_len > padded_max)
        ]
        check = point.seq_len == smallest[point.attn] and point.attn not in checked
        print(f"{name}: {point.attn} seq_len={point.seq_len} block={point.block}")
        for row in bench_point(point, config, run, check) if run else []:
            measured[key(row["system"])] = row
        if check and "tempo_jax" in run:
            checked.add(point.attn)
        for system in systems:
            if key(system) in measured:
                row = {**measured[key(system)], "sweep": name, "block": point.block}
                rows.append(row)
                print(
                    f"  {system:>9}: {row['seconds_per_token'] * 1e3:9.3f} ms/token "
                    f"{row['bandwidth_gbs']:7.2f} GB/s  compile {row['compile_seconds']:6.2f} s"
                )
        if progress is not None:
            progress(rows)
    add_ratios(rows)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a text table, with the ratios to scan and to tiled side by side."""

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    head = (
        f"{'sweep':>7} {'attn':>6} {'seq':>6} {'block':>5} {'system':>9} {'ms/tok':>9} "
        f"{'GB/s':>7} {'temp MB':>8} {'compile':>7} {'copies':>6} {'x scan':>6} {'x tiled':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        temp = None if r["temp_bytes"] is None else r["temp_bytes"] / 2**20
        lines.append(
            f"{r['sweep']:>7} {r['attn']:>6} {r['seq_len']:>6} {r['block']:>5} "
            f"{r['system']:>9} {r['seconds_per_token'] * 1e3:9.3f} {r['bandwidth_gbs']:7.2f} "
            f"{fmt(temp, '8.1f')} {r['compile_seconds']:7.2f} "
            f"{fmt(r['cache_copies'], '>6')} {fmt(r['ratio_vs_scan'], '6.2f')} "
            f"{fmt(r['ratio_vs_tiled'], '7.2f')}"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], name: str, path: pathlib.Path) -> None:
    """Milliseconds per token per system: against ``seq_len`` (one panel per attention kind)
    for the ``seq_len`` sweep, against the tile size for the ``block`` sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["sweep"] == name]
    x = "seq_len" if name == "seq_len" else "block"
    panels = sorted({r["attn"] for r in rows}) if name == "seq_len" else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, attn in zip(axes[0], panels, strict=True):
        shown = [r for r in rows if attn in (None, r["attn"])]
        for system in SYSTEMS:
            found = sorted(
                (r[x], r["seconds_per_token"] * 1e3) for r in shown if r["system"] == system
            )
            if found:
                xs, ys = zip(*found, strict=True)
                ax.plot(xs, ys, marker="o", label=system)
        ticks = sorted({r[x] for r in shown})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("sequence length" if x == "seq_len" else "tile size (rows)")
        ax.set_ylabel("ms per token")
        first = shown[0]
        kind = f"window {first['window']}" if first["attn"] == "window" else first["attn"]
        at = "" if attn is not None else f", {first['seq_len']} positions"
        ax.set_title(f"{kind} attention{at}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Decoding {rows[0]['model']}, batch {rows[0]['batch']}: lower is better")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(
    config: dict[str, Any],
    out: pathlib.Path,
    stem: str,
    only: str | None = None,
    systems: list[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure the copy bandwidth and sweep; write ``<stem>.json`` and one PNG per sweep run
    into ``out``; return the JSON's contents."""
    from . import bench_prefill  # it builds on this module

    has = [name for name in SWEEPS if name in config.get("sweeps", {})]
    has += ["prefill"] if "prefill" in config else []
    if only is not None and only not in has:
        raise ConfigError(f"--only {only}: this config has no such sweep; it has: {', '.join(has)}")
    bandwidth = copy_bandwidth(config.get("copy_megabytes", 256))
    print(f"copy bandwidth: {bandwidth:.2f} GB/s")
    machine = {
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
    }
    head = {"machine": machine, **(meta or {}), "copy_bandwidth_gbs": bandwidth}

    def partial(rows: list[dict[str, Any]]) -> None:  # a run cut short keeps what it measured
        results.write_json(out / f"{stem}.partial.json", {**head, "rows": rows})

    rows = sweep(config, only, systems, partial) if only != "prefill" else []
    prefill = []
    if "prefill" in config and only in (None, "prefill"):
        prefill = bench_prefill.sweep(config, systems)
    result = {**head, "rows": rows, "prefill": prefill}
    results.write_json(out / f"{stem}.json", result)
    (out / f"{stem}.partial.json").unlink(missing_ok=True)
    for name in SWEEPS:
        if any(r["sweep"] == name for r in rows):
            plot(rows, name, out / f"{stem}_{name}.png")
    print(table(rows))
    if prefill:
        print(bench_prefill.table(prefill))
    print(f"wrote {out / f'{stem}.json'} and its plots")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bench/decode_cpu_small.yaml")
    parser.add_argument("--only", choices=(*SWEEPS, "prefill"), help="run one sweep")
    parser.add_argument("--systems", help=f"comma-separated, of {','.join(SYSTEMS)}")
    parser.add_argument("--out", default="results/decode")
    args = parser.parse_args()
    tj.enable_compilation_cache()  # a second run skips XLA's compile
    systems = args.systems.split(",") if args.systems else None
    try:
        path = find(args.config, kind="bench")
        config = read(path)
        timing.set_precision(config)
        run(config, pathlib.Path(args.out), path.stem, args.only, systems, {"config": args.config})
    except ConfigError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except TokenMismatch as error:
        sys.exit(f"bench_decode: {error}")


if __name__ == "__main__":
    main()
