"""``TempoModel.generate_hf``: a ragged batch decodes each prompt as the scan decoder does
alone (tokens, sampled tokens with the row's key, and logits at the real positions), for GPT-2
and Llama; masks, top-k, lists of end tokens, input checks, and no logits array in the
compiled program unless asked for."""

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
from tempo_jax.models.params import init_params
from tempo_jax.models.sampling import sample, top_k_mask
from tempo_jax.models.tempo import TempoDecoder, TempoModel, build_program

CONFIGS = {
    "gpt2": config.tiny_gpt2(),
    "llama": config.tiny_llama(),
    "llama-window": dataclasses.replace(config.tiny_llama(), window=4),
}
LENGTHS, NEW, BLOCK = (3, 7, 5), 5, 4  # P = 7: the rows' real tokens start in different tiles
P = max(LENGTHS)


@functools.cache
def _setup(name: str) -> tuple:
    cfg = CONFIGS[name]
    params = init_params(cfg, jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    prompts = tuple(tuple(int(i) for i in rng.integers(0, cfg.vocab, n)) for n in LENGTHS)
    return cfg, params, TempoModel(cfg, params), prompts


def _left_padded(prompts: tuple, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(prompts), P), pad)
    mask = np.zeros((len(prompts), P), int)
    for b, row in enumerate(prompts):
        ids[b, P - len(row) :], mask[b, P - len(row) :] = row, 1
    return ids, mask


@pytest.mark.parametrize("name", ["gpt2", pytest.param("llama", marks=pytest.mark.slow)])
def test_ragged_batch_equals_each_prompt_decoded_alone(name: str) -> None:
    cfg, params, model, prompts = _setup(name)
    out = model.generate_hf(
        [list(p) for p in prompts], max_new_tokens=NEW, return_logits=True, block=BLOCK
    )
    ids, _ = _left_padded(prompts)
    assert out.sequences.shape == (3, P + NEW) and out.logits.shape == (3, P + NEW - 1, cfg.vocab)
    np.testing.assert_array_equal(out.sequences[:, :P], ids)
    np.testing.assert_array_equal(out.prompt_lengths, LENGTHS)
    np.testing.assert_array_equal(out.lengths, np.add(LENGTHS, NEW))
    for b, prompt in enumerate(prompts):
        alone = scan.generate(cfg, params, [prompt], NEW)
        np.testing.assert_array_equal(out.sequences[b, P:], alone["tokens"][0, len(prompt) :])
        real = out.logits[b, P - len(prompt) :]
        np.testing.assert_allclose(real, alone["logits"][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out.logits[b, : P - len(prompt)], 0.0)  # padding


@pytest.mark.slow
def test_sampled_rows_equal_each_prompt_sampled_alone_with_its_key() -> None:
    """Row ``b`` draws with ``key[b]`` at its own positions (a window too); one key is split."""
    cfg, params, model, prompts = _setup("llama-window")
    key, kw = jax.random.PRNGKey(7), {"temperature": 0.8, "top_p": 0.9}
    keys = jax.random.split(key, 3)
    out = model.generate_hf(
        prompts, max_new_tokens=NEW, do_sample=True, key=keys, block=BLOCK, **kw
    )
    for b, prompt in enumerate(prompts):
        alone = scan.generate(cfg, params, [prompt], NEW, key=keys[b], **kw)
        np.testing.assert_array_equal(out.sequences[b, P:], alone["tokens"][0, len(prompt) :])
    split = model.generate_hf(
        prompts, max_new_tokens=NEW, do_sample=True, key=key, block=BLOCK, **kw
    )
    np.testing.assert_array_equal(split.sequences, out.sequences)
    greedy = model.generate_hf(prompts, max_new_tokens=NEW, block=BLOCK)
    assert not np.array_equal(out.sequences, greedy.sequences)  # sampling did something


def test_a_padded_array_with_a_mask_equals_the_list() -> None:
    """Left padding as given, right padding moved to the left; padding may hold any value."""
    _, _, model, prompts = _setup("gpt2")
    want = model.generate_hf(prompts, max_new_tokens=NEW, block=BLOCK)
    ids, mask = _left_padded(prompts, pad=-1)
    left = model.generate_hf(jnp.asarray(ids), mask, max_new_tokens=NEW, block=BLOCK)
    np.testing.assert_array_equal(left.sequences[:, P:], want.sequences[:, P:])
    np.testing.assert_array_equal(left.sequences[:, :P], ids)  # the user's padding kept
    right = [list(p) + [5] * (P - len(p)) for p in prompts]
    right_mask = [[1] * len(p) + [0] * (P - len(p)) for p in prompts]
    moved = model.generate_hf(right, right_mask, max_new_tokens=NEW, block=BLOCK)
    np.testing.assert_array_equal(moved.sequences[:, P:], want.sequences[:, P:])
    np.testing.assert_array_equal(moved.sequences[:, :P], np.where(mask, ids, 5))
    np.testing.assert_array_equal(moved.lengths, want.lengths)


@pytest.mark.slow
def test_top_k_one_is_greedy_and_greedy_ignores_temperature() -> None:
    _, _, model, prompts = _setup("llama")
    greedy = model.generate_hf(prompts, max_new_tokens=NEW, block=BLOCK)
    top1 = model.generate_hf(
        prompts,
        max_new_tokens=NEW,
        do_sample=True,
        temperature=2.0,
        top_k=1,
        key=jax.random.PRNGKey(3),
        block=BLOCK,
    )
    np.testing.assert_array_equal(top1.sequences, greedy.sequences)
    ignored = model.generate_hf(
        prompts, max_new_tokens=NEW, temperature=0.3, top_k=3, top_p=0.5, block=BLOCK
    )
    np.testing.assert_array_equal(ignored.sequences, greedy.sequences)


def test_top_k_keeps_the_k_most_likely_tokens() -> None:
    logits = jnp.asarray([[0.5, 3.0, -1.0, 2.0, 1.0]])
    kept = np.isfinite(np.asarray(top_k_mask(logits, 2)))
    np.testing.assert_array_equal(kept, [[False, True, False, True, False]])
    draws = jax.vmap(lambda k: sample(logits, k, 5.0, 1.0, 2))(
        jax.random.split(jax.random.PRNGKey(0), 200)
    )
    assert set(np.unique(draws)) == {1, 3}


def test_a_list_of_end_tokens_stops_each_row() -> None:
    """Each row stops at its first end token (then emits the first one), independently; the
    loop stops once every row has. A ragged list is padded with the first end token."""
    _, _, model, prompts = _setup("llama")
    steps = 8
    free = np.asarray(model.generate_hf(prompts, max_new_tokens=steps, block=BLOCK).sequences)
    ends = [int(free[0, P + 3]), int(free[1, P + 2]), int(free[2, P + 1])]
    out = model.generate_hf(prompts, max_new_tokens=steps, eos_token_id=ends, block=BLOCK)
    want = free.copy()
    want[:, :P] = np.where(_left_padded(prompts)[1], free[:, :P], ends[0])
    news = []
    for b in range(3):
        hit = np.isin(free[b, P:], ends)
        news.append(int(np.argmax(hit)) + 1 if hit.any() else steps)
        want[b, P + news[b] :] = ends[0]
    np.testing.assert_array_equal(out.sequences, want)
    np.testing.assert_array_equal(out.lengths, np.add(LENGTHS, news))
    assert max(news) <= 4 and int(out.steps_run) == P - 1 + max(news)


def test_the_end_tokens_default_to_the_config() -> None:
    cfg, params, model, prompts = _setup("gpt2")
    free = np.asarray(model.generate_hf(prompts, max_new_tokens=NEW, block=BLOCK).sequences)
    end = int(free[0, P])
    eos_cfg = dataclasses.replace(cfg, eos_token_ids=(end,))
    out = TempoModel(eos_cfg, params).generate_hf(prompts, max_new_tokens=NEW, block=BLOCK)
    assert int(out.lengths[0]) == LENGTHS[0] + 1
    np.testing.assert_array_equal(out.sequences[0, P:], end)


def test_without_return_logits_no_logits_array_is_kept() -> None:
    """No float32 array over the positions and the vocabulary exists in the compiled program
    (the logits of one position only); with ``return_logits`` it does."""
    cfg, params, model, prompts = _setup("llama")
    ids, mask = _left_padded(prompts)

    def shapes(logits: bool) -> list[tuple[int, ...]]:
        dec = TempoDecoder(cfg, 3, P, NEW, ragged=True, logits=logits, block=BLOCK)
        inputs = dec.inputs(params, ids, mask=jnp.asarray(mask, bool))
        hlo = dec.compiled.lower(**inputs).compile().as_text()
        found = re.findall(r"f32\[([0-9,]+)\]", hlo)
        return [tuple(int(n) for n in s.split(",")) for s in set(found)]

    def over_positions(shape: tuple[int, ...]) -> bool:  # the prompt's positions, or the steps'
        return shape[-1] == cfg.vocab and bool({P, NEW - 1} & set(shape[:-1]))

    assert any(over_positions(s) for s in shapes(True))
    assert not any(over_positions(s) for s in shapes(False))
    assert model.generate_hf(prompts, max_new_tokens=NEW, block=BLOCK).logits is None


def test_ragged_program_equals_the_reference_interpreter() -> None:
    cfg = dataclasses.replace(config.tiny_llama(), layers=1, window=3)
    params = init_params(cfg, jax.random.PRNGKey(3))
    prompt, mask = jnp.asarray([[0, 5, 9], [4, 6, 8]]), jnp.asarray([[0, 1, 1], [1, 1, 1]], bool)
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    kw = {"temperature": 0.9, "top_k": 20, "end_token": (7, 11), "ragged": True}
    dec = TempoDecoder(cfg, 2, 3, 4, block=2, **kw)
    inputs = dec.inputs(params, prompt, keys, mask)
    ref = tj.reference.run(build_program(cfg, 2, 3, 4, **kw), dec.bounds, inputs)
    got = dec.compiled(**inputs)
    for name in ("first", "first_done", "tokens", "done"):
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    for name in ("prompt_logits", "logits"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)
    assert int(got["lengths"]["T"]) == int(ref["lengths"]["T"])


@pytest.mark.parametrize(
    ("ids", "kwargs", "message"),
    [
        ([[1, 2], [3, 1000]], {}, r"input_ids\[1\]\[1\] = 1000 is not a token id: .* < 128"),
        (np.asarray([[5, -1]]), {}, r"input_ids\[0\]\[1\] = -1 is not a token id"),
        ([[1, 2, 3], [4, 5.0]], {}, r"input_ids\[1\] must hold integer token ids, got dtype f"),
        (np.ones((2, 3), np.float32), {}, "integer token ids, got dtype float32"),
        (np.ones((2, 3), bool), {}, "booleans are not token ids"),
        ([1, 2, 3], {}, r"must be \[B, P\] .* got shape \(3,\)"),
        ([[1], []], {}, r"input_ids\[1\] must be a non-empty list"),
        ([[1, 2]], {"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1, got 0"),
        ([[1] * 60], {"max_new_tokens": 5}, "65 exceeds the model's max_len 64"),
        ([[1, 2], [3]], {"attention_mask": [[1, 1], [0, 1]]}, "attention_mask is only for"),
        ([[1, 2]], {"attention_mask": [[1, 1, 1]]}, r"attention_mask has shape \(1, 3\)"),
        ([[1, 2], [3, 4]], {"attention_mask": [[1, 1], [0, 0]]}, "row 1 has no real token"),
        ([[1, 2]], {"attention_mask": [[1, 2]]}, "must hold 1 .* and 0 .* only"),
        ([[1, 2]], {"eos_token_id": [2, 128]}, "eos_token_id 128 is not a token id"),
        ([[1, 2]], {"do_sample": True}, "do_sample=True needs a key"),
        ([[1, 2]], {"do_sample": True, "temperature": 0.0}, "needs temperature > 0"),
        ([[1, 2]], {"do_sample": True, "top_k": -1}, "top_k must be None or an integer >= 0"),
        (
            [[1, 2]],
            {"do_sample": True, "key": jnp.zeros((3, 2), jnp.uint32)},
            r"one PRNG key or one per row \(1\), got shape \(3, 2\)",
        ),
    ],
)
def test_bad_inputs_are_rejected(ids: object, kwargs: dict, message: str) -> None:
    _, _, model, _ = _setup("llama")
    kwargs = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        model.generate_hf(ids, **kwargs)
