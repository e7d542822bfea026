"""The plain decoder pieces: configs, RoPE, attention, the flax modules against a reference
built from ``models.layers``, the parameter round trips, safetensors I/O and sampling."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from tempo_jax.models import config, layers, sampling
from tempo_jax.models.flax import GPT2, Llama, from_params, to_params
from tempo_jax.models.params import init_params, layer, param_shapes
from tempo_jax.models.safetensors_io import load_hf_llama, save_hf_llama
from tests.models.reference import flax_logits, reference_logits

CONFIGS = {
    "gpt2": config.tiny_gpt2(),
    "gpt2-window": dataclasses.replace(config.tiny_gpt2(), window=5),
    "llama": config.tiny_llama(),
    "llama-window": dataclasses.replace(config.tiny_llama(), window=5),
}
_attend = jax.jit(layers.attend, static_argnums=0)
_attend_rows = jax.jit(layers.attend_rows, static_argnums=0)
_rope = jax.jit(layers.apply_rope)


def _tokens(cfg: config.DecoderConfig, shape: tuple[int, int], seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab, shape), jnp.int32)


def _normal(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


def _assert_trees_equal(got: dict, want: dict) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- configs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arch": "bert"}, "arch"),
        ({"kv_heads": 3}, "multiple of kv_heads"),
        ({"head_dim": 7}, "even head_dim"),
        ({"window": 0}, "window"),
        ({"norm_eps": 0.0}, "norm_eps"),
    ],
)
def test_config_validation(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(config.tiny_llama(), **change)


def test_llama32_presets_match_hugging_face_configs() -> None:
    hf_1b = {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
    }
    assert config.config_from_hf(hf_1b) == config.llama32_1b()
    hf_3b = hf_1b | {"hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24}
    del hf_3b["head_dim"]  # defaults to hidden_size / heads
    assert config.config_from_hf(hf_3b) == config.llama32_3b()
    for cfg in (config.llama32_1b(), config.tiny_llama()):
        assert config.config_from_hf(config.config_to_hf(cfg)) == cfg


# --- RoPE and attention ----------------------------------------------------------------------


def _numpy_llama3_inv_freq(cfg: config.DecoderConfig) -> np.ndarray:
    s = cfg.rope_scaling
    out = []
    for i in range(0, cfg.head_dim, 2):
        freq = 1.0 / cfg.rope_theta ** (i / cfg.head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < s.original_max_len / s.high_freq_factor:
            out.append(freq)
        elif wavelen > s.original_max_len / s.low_freq_factor:
            out.append(freq / s.factor)
        else:
            smooth = (s.original_max_len / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor
            )
            out.append((1 - smooth) * freq / s.factor + smooth * freq)
    return np.array(out)


@pytest.mark.parametrize("make", [config.tiny_llama, config.llama32_1b, config.llama32_3b])
def test_rope_inv_freq_matches_llama3_formula(make) -> None:
    cfg = make()
    got = layers.rope_inv_freq(cfg)
    assert got.shape == (cfg.head_dim // 2,) and got.dtype == np.float32
    np.testing.assert_allclose(got, _numpy_llama3_inv_freq(cfg), rtol=1e-6)
    plain = 1.0 / cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2) / cfg.head_dim)
    ratio = got / plain  # 1 (short), 1 / factor (long), and blended values in between
    assert np.isclose(ratio, 1).any() and np.isclose(ratio, 1 / cfg.rope_scaling.factor).any()
    assert ((ratio < 0.999) & (ratio > 1.001 / cfg.rope_scaling.factor)).any()


def test_apply_rope_rotates() -> None:
    cfg = config.tiny_llama()
    inv_freq = layers.rope_inv_freq(cfg)
    x = jnp.asarray(_normal(5, cfg.heads, cfg.head_dim))
    pos = jnp.array([0, 1, 7, 30, 63])
    y = _rope(x, pos, inv_freq)
    np.testing.assert_allclose(y[0], x[0], rtol=0, atol=0)
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    assert not np.allclose(y[1:], x[1:], atol=1e-3)
    # scores depend on the relative position only
    q, k = x[1, 0], x[2, 0]

    def score(m: int, n: int) -> jax.Array:
        rq = _rope(q[None], jnp.array(m), inv_freq)[0]
        return rq @ _rope(k[None], jnp.array(n), inv_freq)[0]

    np.testing.assert_allclose(score(9, 4), score(25, 20), rtol=1e-4)


def test_attend_masks_rows_and_groups_heads() -> None:
    cfg = config.tiny_llama()
    q = jnp.asarray(_normal(2, cfg.heads, cfg.head_dim))
    ks, vs = jnp.asarray(_normal(2, 2, 6, cfg.kv_heads, cfg.head_dim))
    valid = jnp.array([[True, False, True, True, False, False], [False] * 6])
    got = _attend(cfg, q, ks, vs, valid)
    want = _attend_rows(cfg, q[0], ks[0, jnp.array([0, 2, 3])], vs[0, jnp.array([0, 2, 3])])
    np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[1], 0.0)  # a fully masked row: zeros, no NaN
    # head h reads key/value head h // groups
    h = cfg.heads - 1
    s = ks[0, :, h // cfg.groups] @ q[0, h] / math.sqrt(cfg.head_dim)
    one = jax.nn.softmax(s) @ vs[0, :, h // cfg.groups]
    np.testing.assert_allclose(_attend_rows(cfg, q[0], ks[0], vs[0])[h], one, rtol=1e-5)


# --- flax modules and the parameter layout ---------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_flax_forward_matches_layers_reference(name: str) -> None:
    cfg = CONFIGS[name]
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = _tokens(cfg, (2, 10))
    got = flax_logits(cfg, params, tokens)
    assert got.shape == (2, 10, cfg.vocab) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, reference_logits(cfg, params, tokens), rtol=1e-5, atol=1e-5)


def test_window_changes_only_far_positions() -> None:
    cfg, windowed = CONFIGS["llama"], CONFIGS["llama-window"]
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = _tokens(cfg, (1, 12))
    a, b = flax_logits(cfg, params, tokens), flax_logits(windowed, params, tokens)
    np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[:, 5:], b[:, 5:], atol=1e-3)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_params_round_trip(name: str) -> None:
    cfg = CONFIGS[name]
    params = init_params(cfg, jax.random.PRNGKey(0))
    assert jax.tree.map(jnp.shape, params) == param_shapes(cfg)
    _assert_trees_equal(to_params(from_params(cfg, params)), params)
    cls = GPT2 if cfg.arch == "gpt2" else Llama
    fresh = jax.eval_shape(lambda: to_params(cls(cfg)))  # a freshly initialised module
    assert jax.tree.map(jnp.shape, fresh) == param_shapes(cfg)
    sliced = layer(params, 1)
    np.testing.assert_array_equal(sliced["wq"], params["layers"]["wq"][1])


def test_from_params_rejects_wrong_shapes() -> None:
    cfg = CONFIGS["llama"]
    params = init_params(cfg, jax.random.PRNGKey(0))
    params["final_norm"]["scale"] = jnp.ones(cfg.dim + 1)
    with pytest.raises(ValueError, match="final_norm"):
        from_params(cfg, params)
    with pytest.raises(ValueError, match="needs arch 'gpt2'"):
        GPT2(cfg)


# --- safetensors -----------------------------------------------------------------------------


def test_safetensors_round_trip(tmp_path) -> None:
    for cfg in (CONFIGS["llama"], dataclasses.replace(CONFIGS["llama"], tie_embeddings=True)):
        params = init_params(cfg, jax.random.PRNGKey(0))
        save_hf_llama(tmp_path / "model.safetensors", cfg, params)
        got_cfg, got = load_hf_llama(tmp_path / "model.safetensors")
        assert got_cfg == cfg
        _assert_trees_equal(got, params)


def _hand_written_checkpoint(cfg: config.DecoderConfig, params: dict) -> dict[str, np.ndarray]:
    """Hugging Face names and ``[out, in]`` projections, written out by hand."""
    lp = {k: np.asarray(v) for k, v in params["layers"].items() if not isinstance(v, dict)}
    out = {
        "model.embed_tokens.weight": np.asarray(params["embed"]),
        "model.norm.weight": np.asarray(params["final_norm"]["scale"]),
        "lm_head.weight": np.asarray(params["lm_head"]).T.copy(),
    }
    for i in range(cfg.layers):
        pre = f"model.layers.{i}."
        out[pre + "input_layernorm.weight"] = np.asarray(params["layers"]["attn_norm"]["scale"][i])
        out[pre + "post_attention_layernorm.weight"] = np.asarray(
            params["layers"]["mlp_norm"]["scale"][i]
        )
        for hf, ours in [("q", "wq"), ("k", "wk"), ("v", "wv"), ("o", "wo")]:
            out[pre + f"self_attn.{hf}_proj.weight"] = lp[ours][i].T.copy()
        for hf, ours in [("gate", "w_gate"), ("up", "w_up"), ("down", "w_down")]:
            out[pre + f"mlp.{hf}_proj.weight"] = lp[ours][i].T.copy()
    return out


def test_load_hand_written_hugging_face_checkpoint(tmp_path) -> None:
    cfg = CONFIGS["llama"]
    params = init_params(cfg, jax.random.PRNGKey(0))
    tensors = _hand_written_checkpoint(cfg, params)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros(3, np.float32)  # ignored
    save_file(tensors, str(tmp_path / "model.safetensors"))
    hf = {
        "model_type": "llama",
        "vocab_size": cfg.vocab,
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.hidden,
        "max_position_embeddings": cfg.max_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": False,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(hf))
    got_cfg, got = load_hf_llama(tmp_path)  # a folder works as well as a file
    assert got_cfg == cfg
    tokens = _tokens(cfg, (2, 10))
    np.testing.assert_allclose(
        flax_logits(cfg, got, tokens), flax_logits(cfg, params, tokens), rtol=0, atol=0
    )


def test_load_names_bad_tensors(tmp_path) -> None:
    cfg = CONFIGS["llama"]
    tensors = _hand_written_checkpoint(cfg, init_params(cfg, jax.random.PRNGKey(0)))
    name = "model.layers.1.self_attn.k_proj.weight"
    tensors[name] = tensors[name][:-1].copy()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    kv = cfg.kv_heads * cfg.head_dim
    want = rf"{name}: expected shape \({kv}, {cfg.dim}\), found \({kv - 1}, {cfg.dim}\)"
    with pytest.raises(ValueError, match=want):
        load_hf_llama(tmp_path / "model.safetensors", cfg)
    del tensors[name]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=f"{name} is missing"):
        load_hf_llama(tmp_path / "model.safetensors", cfg)


# --- sampling --------------------------------------------------------------------------------


def test_sample_greedy_and_top_p_limits() -> None:
    logits = jnp.asarray(3.0 * _normal(4, 50))
    greedy = jnp.argmax(logits, axis=-1)
    np.testing.assert_array_equal(sampling.sample(logits, jax.random.PRNGKey(9), 0.0, 1.0), greedy)
    for i in range(5):
        key = sampling.step_key(jax.random.PRNGKey(3), i)
        tiny = sampling.sample(logits, key, 1.0, 1e-6)
        np.testing.assert_array_equal(tiny, greedy)
        full = sampling.sample(logits, key, 1.0, 1.0)
        np.testing.assert_array_equal(full, jax.random.categorical(key, logits, axis=-1))
        hot = sampling.sample(logits, key, 2.0, 1.0)
        np.testing.assert_array_equal(hot, jax.random.categorical(key, logits / 2.0, axis=-1))


def test_top_p_keeps_the_smallest_nucleus() -> None:
    logits = jnp.log(jnp.array([0.05, 0.5, 0.15, 0.3]))
    for top_p, kept in [(0.4, [1]), (0.75, [1, 3]), (0.85, [1, 2, 3]), (0.99, [0, 1, 2, 3])]:
        masked = sampling.top_p_mask(logits, top_p)
        assert np.flatnonzero(np.isfinite(masked)).tolist() == kept
    draws = jax.vmap(lambda k: sampling.sample(logits, k, 1.0, 0.75))(
        jax.random.split(jax.random.PRNGKey(0), 2000)
    )
    freq = np.bincount(np.asarray(draws), minlength=4) / 2000
    np.testing.assert_allclose(freq, [0, 0.5 / 0.8, 0, 0.3 / 0.8], atol=0.04)
    assert sampling.step_key(jax.random.PRNGKey(1), 5).shape == jax.random.PRNGKey(1).shape
