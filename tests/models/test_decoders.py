"""The hand-written JAX decoders (padded, scan, tiled, and prefill: the prompt in one masked
pass) against the flax module: logits to 1e-5 and identical greedy tokens, identical samples
across decoders, and early stopping."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tempo_jax.models import config
from tempo_jax.models.baselines import padded, prefill, scan, tiled
from tempo_jax.models.baselines.tiled import TiledAttention
from tempo_jax.models.params import init_params
from tempo_jax.models.sampling import sample, step_key
from tests.models.reference import flax_logits

CONFIGS = {
    "gpt2": config.tiny_gpt2(),
    "gpt2-window": dataclasses.replace(config.tiny_gpt2(), window=5),
    "llama": config.tiny_llama(),
    "llama-window": dataclasses.replace(config.tiny_llama(), window=5),
}
DECODERS = {
    "padded": padded.generate,
    "scan": scan.generate,
    "tiled": functools.partial(tiled.generate, block=4),  # P = 9 spans three tiles
    "prefill": prefill.generate,
}
PROMPT, STEPS = 9, 6
_sample = jax.jit(sample, static_argnums=(2, 3))


@functools.cache
def _setup(name: str, batch: int = 2, prompt: int = PROMPT) -> tuple:
    cfg = CONFIGS[name]
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = np.random.default_rng(1).integers(0, cfg.vocab, (batch, prompt))
    return cfg, params, jnp.asarray(tokens, jnp.int32)


def _check_against_flax(cfg: config.DecoderConfig, params: dict, out: dict) -> np.ndarray:
    """Logits of every position run equal the flax forward on the produced tokens."""
    tokens, run = out["tokens"], int(out["steps_run"])
    want = flax_logits(cfg, params, tokens)
    np.testing.assert_allclose(out["logits"][:, :run], want[:, :run], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["logits"][:, run:], 0.0)
    return np.asarray(want)


@pytest.mark.parametrize("decoder", list(DECODERS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_decode_matches_flax(name: str, decoder: str) -> None:
    cfg, params, prompt = _setup(name)
    out = DECODERS[decoder](cfg, params, prompt, STEPS)
    total = PROMPT + STEPS
    assert out["tokens"].shape == (2, total) and out["tokens"].dtype == jnp.int32
    assert out["logits"].shape == (2, total - 1, cfg.vocab) and out["logits"].dtype == jnp.float32
    np.testing.assert_array_equal(out["tokens"][:, :PROMPT], prompt)
    np.testing.assert_array_equal(out["length"], [total, total])
    assert int(out["steps_run"]) == total - 1
    want = _check_against_flax(cfg, params, out)
    np.testing.assert_array_equal(out["tokens"][:, PROMPT:], want[:, PROMPT - 1 : -1].argmax(-1))


def test_sampled_tokens_agree_across_decoders() -> None:
    cfg, params, prompt = _setup("llama-window")
    key, kw = jax.random.PRNGKey(7), {"temperature": 0.8, "top_p": 0.9}
    outs = [generate(cfg, params, prompt, STEPS, key=key, **kw) for generate in DECODERS.values()]
    for out in outs[1:]:
        np.testing.assert_array_equal(out["tokens"], outs[0]["tokens"])
    want = _check_against_flax(cfg, params, outs[0])
    for p in range(PROMPT, PROMPT + STEPS):  # the token at p is drawn with step_key(key, p)
        drawn = _sample(jnp.asarray(want[:, p - 1]), step_key(key, p), 0.8, 0.9)
        np.testing.assert_array_equal(outs[0]["tokens"][:, p], drawn)


def _stopped(free: np.ndarray, prompt: int, end: int) -> tuple[np.ndarray, list[int]]:
    """The tokens of a free greedy run once ``end`` stops each row, and the lengths."""
    tokens, lengths = free.copy(), []
    for row in tokens:
        hits = np.flatnonzero(row[prompt:] == end)
        stop = prompt + int(hits[0]) if hits.size else len(row)
        row[stop:] = end
        lengths.append(min(stop + 1, len(row)))
    return tokens, lengths


def test_end_token_stops_each_row_and_the_loop() -> None:
    cfg, params, prompt = _setup("llama", prompt=5)
    steps, total = 10, 5 + 10
    free = np.asarray(scan.generate(cfg, params, prompt, steps)["tokens"])
    end = int(free[0, 5 + 2])  # row 0 emits it by position 7; row 1 perhaps never
    twins = jnp.stack([prompt[0], prompt[0]])  # both rows stop together: the loop ends early
    free_twins = np.stack([free[0], free[0]])
    for decoder, generate in DECODERS.items():
        for batch, unstopped in [(prompt, free), (twins, free_twins)]:
            out = generate(cfg, params, batch, steps, end_token=end)
            tokens, lengths = _stopped(unstopped, 5, end)
            np.testing.assert_array_equal(out["tokens"], tokens, err_msg=decoder)
            np.testing.assert_array_equal(out["length"], lengths, err_msg=decoder)
            assert int(out["steps_run"]) == max(lengths) - 1, decoder  # positions fed
            _check_against_flax(cfg, params, out)
        assert max(lengths) - 1 <= 7 < total - 1, decoder  # the twins stopped early


def test_tiled_attention_visits_live_tiles_only() -> None:
    attention, cfg = TiledAttention(block=4), CONFIGS["llama-window"]
    bounds = [tuple(int(b) for b in attention.bounds(cfg, jnp.int32(p))) for p in range(12)]
    want = [(max(0, p - 4) // 4, p // 4 + 1) for p in range(12)]
    assert bounds == want
    causal = [int(attention.bounds(CONFIGS["llama"], jnp.int32(p))[0]) for p in range(12)]
    assert causal == [0] * 12


def test_generate_rejects_bad_arguments() -> None:
    cfg, params, prompt = _setup("gpt2")
    with pytest.raises(ValueError, match="exceeds max_len"):
        scan.generate(cfg, params, prompt, cfg.max_len)
    with pytest.raises(ValueError, match="needs a key"):
        padded.generate(cfg, params, prompt, 2, temperature=1.0)
    with pytest.raises(ValueError, match=r"\[B, P\]"):
        tiled.generate(cfg, params, prompt[0], 2)
