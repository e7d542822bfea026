"""The tempo_jax decoder against the flax module (logits to 1e-5), the hand-written scan
decoder (identical tokens, greedy and sampled, and the same early stop), and the reference
interpreter; its compiled loop copies no cache and reads tiles as stored."""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax.models import config
from tempo_jax.models.baselines import scan
from tempo_jax.models.flax import GPT2, Llama, from_flax
from tempo_jax.models.params import init_params
from tempo_jax.models.tempo import TempoDecoder, build_program
from tests.models.reference import flax_logits

CONFIGS = {
    "gpt2": config.tiny_gpt2(),
    "gpt2-window": dataclasses.replace(config.tiny_gpt2(), window=5),
    "llama": config.tiny_llama(),
    "llama-window": dataclasses.replace(config.tiny_llama(), window=5),
}
PROMPT, STEPS, BLOCK = 9, 6, 4  # the prompt spans three tiles


@functools.cache
def _setup(name: str, batch: int = 2) -> tuple:
    cfg = CONFIGS[name]
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = np.random.default_rng(1).integers(0, cfg.vocab, (batch, PROMPT))
    return cfg, params, jnp.asarray(tokens, jnp.int32)


def _same(out: dict, want: dict) -> None:
    np.testing.assert_array_equal(out["tokens"], want["tokens"])
    np.testing.assert_array_equal(out["length"], want["length"])
    assert int(out["steps_run"]) == int(want["steps_run"])
    np.testing.assert_allclose(out["logits"], want["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name",
    [
        "gpt2",
        "llama-window",
        pytest.param("gpt2-window", marks=pytest.mark.slow),
        pytest.param("llama", marks=pytest.mark.slow),
    ],
)
def test_greedy_decode_matches_flax_and_scan(name: str) -> None:
    cfg, params, prompt = _setup(name)
    out = TempoDecoder(cfg, 2, PROMPT, STEPS, block=BLOCK).generate(params, prompt)
    _same(out, scan.generate(cfg, params, prompt, STEPS))
    want = flax_logits(cfg, params, out["tokens"])[:, :-1]
    np.testing.assert_allclose(out["logits"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["tokens"][:, PROMPT:], want[:, PROMPT - 1 :].argmax(-1))


def test_sampled_tokens_match_scan() -> None:
    cfg, params, prompt = _setup("llama-window")
    key, kw = jax.random.PRNGKey(7), {"temperature": 0.8, "top_p": 0.9}
    out = TempoDecoder(cfg, 2, PROMPT, STEPS, block=BLOCK, **kw).generate(params, prompt, key)
    _same(out, scan.generate(cfg, params, prompt, STEPS, key=key, **kw))
    greedy = TempoDecoder(cfg, 2, PROMPT, STEPS, block=BLOCK).generate(params, prompt)
    assert not np.array_equal(out["tokens"], greedy["tokens"])  # sampling did something


@pytest.mark.parametrize("name", ["gpt2", "llama-window"])
@pytest.mark.slow
def test_end_token_stops_the_loop_like_scan(name: str) -> None:
    cfg, params, prompt = _setup(name)
    steps = 20
    free = np.asarray(scan.generate(cfg, params, prompt, steps)["tokens"])
    end = int(free[0, PROMPT + 2])  # row 0 stops within 3 new tokens
    dec = TempoDecoder(cfg, 2, PROMPT, steps, block=BLOCK, end_token=end)
    out = dec.generate(params, prompt)
    want = scan.generate(cfg, params, prompt, steps, end_token=end)
    _same(out, want)
    assert int(out["steps_run"]) < PROMPT + steps - 1 or not (free[1, PROMPT:] == end).any()
    first = int(np.argmax(free[0, PROMPT:] == end))  # row 0's first end token
    assert int(out["length"][0]) == PROMPT + first + 1 <= PROMPT + 3


@pytest.mark.parametrize("arch", ["gpt2", pytest.param("llama-window", marks=pytest.mark.slow)])
def test_from_flax_module_logits_equal_its_forward(arch: str) -> None:
    cfg = CONFIGS[arch]
    module = (GPT2 if arch == "gpt2" else Llama)(cfg)
    prompt = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab, (3, 5)), jnp.int32)
    out = from_flax(module).generate(prompt, 7, block=4)
    want = module(out["tokens"])[:, :-1]
    np.testing.assert_allclose(out["logits"], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="GPT2 or Llama"):
        from_flax(object())


def test_program_equals_the_reference_interpreter() -> None:
    cfg = dataclasses.replace(config.tiny_llama(), layers=1, window=3)
    params = init_params(cfg, jax.random.PRNGKey(3))
    prompt = jnp.asarray([[5, 9]], jnp.int32)
    dec = TempoDecoder(cfg, 1, 2, 4, block=2, end_token=7)
    inputs = dec.inputs(params, prompt)
    program = build_program(cfg, 1, 2, 4, end_token=7)
    ref = tj.reference.run(program, dec.bounds, inputs)
    got = dec.compiled(**inputs)
    assert set(got) == set(ref)
    for name in ("first", "first_done", "tokens", "done"):
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    for name in ("prompt_logits", "logits"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)
    assert int(got["lengths"]["T"]) == int(ref["lengths"]["T"])


def test_decode_loop_reads_cache_tiles_without_copies() -> None:
    """The KV buffers are stored one array per layer and tile, rows next to the head dim, and
    no copy as large as a tile is made: each tile is read as stored (a tile cut out of one
    array would be copied first), and updated in place."""
    cfg = dataclasses.replace(config.tiny_gpt2(), max_len=128)
    dec = TempoDecoder(cfg, 2, 1, 127, block=16)
    params = init_params(cfg, jax.random.PRNGKey(0))
    text = dec.compiled.lower(**dec.inputs(params, jnp.zeros((2, 1), jnp.int32))).compile()
    hlo = text.as_text()
    tile = 16 * 2 * cfg.kv_heads * cfg.head_dim  # rows x batch x heads x head dim
    assert f"f32[2,{cfg.kv_heads},16,{cfg.head_dim}]" in hlo  # (B, KV, block, hd)
    assert f"f32[{cfg.layers},2,{cfg.kv_heads},127,{cfg.head_dim}]" not in hlo  # no whole cache
    copies = r"= f32\[([0-9,]*)\]\{[0-9,]*\} (?:copy|transpose)\(%([\w.\-]+)\)"
    for shape, operand in re.findall(copies, hlo):
        if "broadcast" not in operand:  # a zero tile filled once, before the loop
            assert np.prod([int(n) for n in shape.split(",") if n]) < tile, shape


def test_window_decoder_keeps_the_last_window_rows_only() -> None:
    """With a window of 16 rows, each layer's keys and values are a cycle of 16 rows (one tile
    per layer), not the 127 positions: the decode's temporary memory is smaller than the
    causal decoder's by about the rows left out, and its tokens equal the scan decoder's."""
    causal = dataclasses.replace(config.tiny_gpt2(), max_len=128)
    window = dataclasses.replace(causal, window=16)
    params = init_params(causal, jax.random.PRNGKey(0))
    prompt = jnp.zeros((2, 1), jnp.int32)
    compiled = {}
    for cfg in (causal, window):
        dec = TempoDecoder(cfg, 2, 1, 127, block=16)
        compiled[cfg.window] = dec.compiled.lower(**dec.inputs(params, prompt)).compile()
    hlo = compiled[16].as_text()
    assert f"f32[2,{window.kv_heads},16,{window.head_dim}]" in hlo
    assert not re.search(rf"f32\[[0-9,]*,127,{window.head_dim}\]", hlo)  # no whole cache
    temp = {w: c.memory_analysis().temp_size_in_bytes for w, c in compiled.items()}
    rows = 2 * window.kv_heads * window.head_dim * 4  # bytes of a key row
    assert temp[None] - temp[16] >= 0.9 * (127 - 16) * rows * 2 * window.layers  # keys, values
    out = TempoDecoder(window, 2, 1, 127, block=16).generate(params, prompt)
    np.testing.assert_array_equal(
        out["tokens"], scan.generate(window, params, prompt, 127)["tokens"]
    )


@pytest.mark.parametrize("end", [None, 3])
def test_one_new_token_is_the_prompts_block_alone(end: int | None) -> None:
    """``steps == 1``: the program has no step loop (no ``t``); tokens, logits and the
    positions run equal the scan decoder's."""
    cfg, params, prompt = _setup("llama-window")
    out = TempoDecoder(cfg, 2, PROMPT, 1, block=BLOCK, end_token=end).generate(params, prompt)
    _same(out, scan.generate(cfg, params, prompt, 1, end_token=end))
