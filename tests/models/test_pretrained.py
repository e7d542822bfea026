"""Local Hugging Face checkpoints: ``config.json`` in both transformers spellings against
hand-written expectations, save/load round trips (single file, sharded, bf16 / fp16),
hand-written HF-layout checkpoints of Llama and GPT-2 against the flax twin, and every loader
error with its message."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tempo_jax.models import config
from tempo_jax.models.config import CheckpointError, RopeScaling, config_from_hf
from tempo_jax.models.params import init_params
from tempo_jax.models.pretrained import load_pretrained, save_pretrained
from tests.models import hf_checkpoints as hf
from tests.models.reference import flax_logits

TINY = {
    "llama": config.tiny_llama(),
    "llama-tied": dataclasses.replace(config.tiny_llama(), tie_embeddings=True),
    "gpt2": dataclasses.replace(config.tiny_gpt2(), eos_token_ids=(0,), bos_token_id=0),
    "gpt2-untied": dataclasses.replace(config.tiny_gpt2(), tie_embeddings=False),
}


def _params(name: str, dtype: jnp.dtype = jnp.float32) -> dict:
    return init_params(TINY[name], jax.random.PRNGKey(0), dtype)


def _assert_trees_equal(got: dict, want: dict) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def _tokens(cfg: config.DecoderConfig) -> jax.Array:
    return jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab, (2, 10)), jnp.int32)


# --- config.json -----------------------------------------------------------------------------

# Llama-3.2-1B-Instruct's config.json as transformers 4 writes it
LLAMA32_1B_TRANSFORMERS_4 = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}
# the same model as transformers 5 writes it: rope_parameters, dtype
LLAMA32_1B_TRANSFORMERS_5 = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "dtype": "bfloat16",
    "eos_token_id": [128001, 128008, 128009],
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_parameters": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "rope_type": "llama3",
    },
    "tie_word_embeddings": True,
    "transformers_version": "5.0.0",
    "use_cache": True,
    "vocab_size": 128256,
}
# openai-community/gpt2's config.json
GPT2_SMALL = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 50256,
    "embd_pdrop": 0.1,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "n_positions": 1024,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}


@pytest.mark.parametrize("spelling", [LLAMA32_1B_TRANSFORMERS_4, LLAMA32_1B_TRANSFORMERS_5])
def test_llama32_config_in_both_transformers_spellings(spelling: dict) -> None:
    cfg = config_from_hf(spelling)
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == RopeScaling(
        factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_len=8192
    )
    assert cfg.eos_token_ids == (128001, 128008, 128009) and cfg.bos_token_id == 128000
    want = dataclasses.replace(
        config.llama32_1b(), eos_token_ids=(128001, 128008, 128009), bos_token_id=128000
    )
    assert cfg == want
    assert config_from_hf(config.config_to_hf(cfg)) == cfg


def test_transformers5_default_rope_keeps_its_theta() -> None:
    """``rope_type: "default"`` with a theta: the theta counts, no scaling (was 10000)."""
    d = dict(LLAMA32_1B_TRANSFORMERS_5, eos_token_id=128001)
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    cfg = config_from_hf(d)
    assert (cfg.rope_theta, cfg.rope_scaling, cfg.eos_token_ids) == (500000.0, None, (128001,))
    del d["rope_parameters"]["rope_theta"]  # no theta anywhere: transformers' default
    assert config_from_hf(d).rope_theta == 10000.0


def test_gpt2_config() -> None:
    cfg = config_from_hf(GPT2_SMALL)
    assert cfg == dataclasses.replace(
        config.gpt2_small(), eos_token_ids=(50256,), bos_token_id=50256
    )
    assert (cfg.hidden, cfg.head_dim, cfg.kv_heads, cfg.tie_embeddings) == (3072, 64, 12, True)
    assert config_from_hf(config.config_to_hf(cfg)) == cfg
    pytorch_tanh = config_from_hf(GPT2_SMALL | {"activation_function": "gelu_pytorch_tanh"})
    assert pytorch_tanh == cfg


# --- save_pretrained / load_pretrained round trips -------------------------------------------


@pytest.mark.parametrize("max_shard_bytes", [None, 8192])
@pytest.mark.parametrize("name", list(TINY))
def test_round_trip(tmp_path: pathlib.Path, name: str, max_shard_bytes: int | None) -> None:
    cfg, params = TINY[name], _params(name)
    save_pretrained(tmp_path, cfg, params, max_shard_bytes=max_shard_bytes)
    weights = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    if max_shard_bytes is None:
        assert weights == ["model.safetensors"]
    else:
        n = len(weights)
        assert n > 2 and weights == [
            f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)
        ]
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        stored = {t: f for f in weights for t in load_file(str(tmp_path / f))}
        assert index["weight_map"] == stored
    got_cfg, got = load_pretrained(tmp_path)
    assert got_cfg == cfg
    _assert_trees_equal(got, params)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_files(tmp_path: pathlib.Path, dtype: jnp.dtype) -> None:
    cfg, params = TINY["llama"], _params("llama", dtype)
    save_pretrained(tmp_path, cfg, params)
    assert (
        json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == jnp.dtype(dtype).name
    )
    assert load_file(str(tmp_path / "model.safetensors"))["model.norm.weight"].dtype == dtype
    _assert_trees_equal(load_pretrained(tmp_path)[1], params)
    as_f32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    _assert_trees_equal(load_pretrained(tmp_path, dtype=jnp.float32)[1], as_f32)


def test_save_writes_the_hugging_face_layout(tmp_path: pathlib.Path) -> None:
    """The saved tensors are exactly the hand-written HF ones (names, layouts, no tied head)."""
    for name, tensors in [("llama", hf.llama_tensors), ("gpt2-untied", hf.gpt2_tensors)]:
        cfg, params = TINY[name], _params(name)
        save_pretrained(tmp_path / name, cfg, params)
        saved = load_file(str(tmp_path / name / "model.safetensors"))
        want = tensors(cfg, params)
        assert saved.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(saved[key], want[key])


def test_save_replaces_earlier_weights(tmp_path: pathlib.Path) -> None:
    cfg, params = TINY["gpt2"], _params("gpt2")
    save_pretrained(tmp_path, cfg, params, max_shard_bytes=8192)
    save_pretrained(tmp_path, cfg, params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    with pytest.raises(ValueError, match="window=5 has no field"):
        save_pretrained(tmp_path, dataclasses.replace(cfg, window=5), params)


# --- hand-written Hugging Face checkpoints ---------------------------------------------------


def test_hand_written_sharded_llama_matches_flax(tmp_path: pathlib.Path) -> None:
    cfg, params = TINY["llama"], _params("llama")
    tensors = hf.llama_tensors(cfg, params)
    tensors["model.layers.1.self_attn.rotary_emb.inv_freq"] = np.zeros(6, np.float32)  # skipped
    names = list(tensors)
    hf_config = hf.llama_config(cfg)
    hf_config["rope_parameters"] = hf_config.pop("rope_scaling") | {"rope_theta": cfg.rope_theta}
    del hf_config["rope_theta"]  # transformers 5 spelling
    hf.write(tmp_path, hf_config, tensors, shards=[names[:7], names[7:]])
    got_cfg, got = load_pretrained(tmp_path)
    assert got_cfg == cfg
    _assert_trees_equal(got, params)
    tokens = _tokens(cfg)
    np.testing.assert_array_equal(flax_logits(cfg, got, tokens), flax_logits(cfg, params, tokens))


@pytest.mark.parametrize("original", [False, True], ids=["GPT2LMHeadModel", "original-gpt2"])
def test_hand_written_gpt2_matches_flax(tmp_path: pathlib.Path, original: bool) -> None:
    cfg, params = TINY["gpt2"], _params("gpt2")
    prefix = "" if original else "transformer."
    tensors = hf.gpt2_tensors(cfg, params, prefix=prefix, buffers=original)
    hf.write(tmp_path, hf.gpt2_config(cfg) | {"eos_token_id": 0, "bos_token_id": 0}, tensors)
    got_cfg, got = load_pretrained(tmp_path)
    assert got_cfg == cfg
    _assert_trees_equal(got, params)
    tokens = _tokens(cfg)
    np.testing.assert_array_equal(flax_logits(cfg, got, tokens), flax_logits(cfg, params, tokens))


def test_tied_head_stored_as_an_exact_copy_is_accepted(tmp_path: pathlib.Path) -> None:
    cfg, params = TINY["llama-tied"], _params("llama-tied")
    tensors = hf.llama_tensors(cfg, params) | {"lm_head.weight": np.asarray(params["embed"])}
    hf.write(tmp_path, hf.llama_config(cfg), tensors)
    _assert_trees_equal(load_pretrained(tmp_path)[1], params)


# --- errors ----------------------------------------------------------------------------------


def _llama_checkpoint(folder: pathlib.Path, name: str = "llama", **write) -> tuple:
    cfg, params = TINY[name], _params(name)
    tensors = hf.llama_tensors(cfg, params)
    hf.write(folder, hf.llama_config(cfg), tensors, **write)
    return cfg, tensors


def _bad_llama_config(change: dict) -> dict:
    d = hf.llama_config(TINY["llama"])
    for key, value in change.items():
        if value is None:
            del d[key]
        else:
            d[key] = value
    return d


_YARN = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
_CONFIG_ERRORS = {
    "attention_bias": ({"attention_bias": True}, r"attention_bias = True is not supported"),
    "mlp_bias": ({"mlp_bias": True}, r"mlp_bias = True is not supported"),
    "hidden_act": ({"hidden_act": "gelu"}, r"hidden_act = 'gelu' is not supported"),
    "yarn": (
        {"rope_parameters": _YARN, "rope_scaling": None, "rope_theta": None},
        r"rope_parameters.rope_type = 'yarn' is not supported \(supported: 'default', 'llama3'\)",
    ),
    "linear": (
        {"rope_scaling": {"type": "linear", "factor": 2.0}},
        r"rope_scaling.rope_type = 'linear' is not supported",
    ),
    "partial-rotary": (
        {"rope_scaling": {"rope_type": "default", "partial_rotary_factor": 0.5}},
        r"partial_rotary_factor = 0.5 is not supported",
    ),
    "llama3-no-factor": (
        {"rope_scaling": {"rope_type": "llama3", "low_freq_factor": 1.0}},
        r"required field 'rope_scaling.factor' is missing",
    ),
    "theta-disagrees": (
        {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}, "rope_scaling": None},
        r"rope_parameters.rope_theta = 500000.0 disagrees with rope_theta = 10000.0",
    ),
    "model_type": ({"model_type": "mistral"}, r"model_type = 'mistral' is not supported"),
    "no-model_type": ({"model_type": None}, r"required field 'model_type' is missing"),
    "no-layers": ({"num_hidden_layers": None}, r"required field 'num_hidden_layers' is missing"),
    "layers-type": ({"num_hidden_layers": "2"}, r"num_hidden_layers must be int, got '2'"),
    "eos-type": ({"eos_token_id": [1, "2"]}, r"eos_token_id must be an integer or a list"),
    "eos-range": ({"eos_token_id": 128}, r"token ids must be integers in \[0, vocab=128\)"),
    "heads": ({"num_attention_heads": 3}, r"heads \(3\) must be a multiple of kv_heads \(2\)"),
}


@pytest.mark.parametrize("case", list(_CONFIG_ERRORS))
def test_llama_config_errors_name_file_field_and_value(tmp_path: pathlib.Path, case: str) -> None:
    change, message = _CONFIG_ERRORS[case]
    cfg = TINY["llama"]
    hf.write(tmp_path, _bad_llama_config(change), hf.llama_tensors(cfg, _params("llama")))
    with pytest.raises(CheckpointError, match=f"{re.escape(str(tmp_path))}/config.json: {message}"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"activation_function": "gelu"}, r"activation_function = 'gelu' is not supported"),
        ({"activation_function": "relu"}, r"activation_function = 'relu' is not supported"),
        ({"scale_attn_by_inverse_layer_idx": True}, r"scale_attn_by_inverse_layer_idx = True"),
        ({"scale_attn_weights": False}, r"scale_attn_weights = False is not supported"),
        ({"n_head": 5}, r"n_embd = 32 is not a multiple of n_head = 5"),
        ({"n_embd": None}, r"required field 'n_embd' is missing"),
    ],
)
def test_gpt2_config_errors(change: dict, message: str) -> None:
    d = {k: v for k, v in (hf.gpt2_config(TINY["gpt2"]) | change).items() if v is not None}
    with pytest.raises(CheckpointError, match=f"config.json: {message}"):
        config_from_hf(d)


def test_missing_or_unreadable_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"config.json: no such file"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json: not a readable JSON file"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf.llama_config(TINY["llama"])))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    want = r"no model.safetensors or model.safetensors.index.json \(found pytorch_model.bin"
    with pytest.raises(CheckpointError, match=want):
        load_pretrained(tmp_path)


def test_truncated_shard_is_named(tmp_path: pathlib.Path) -> None:
    cfg, tensors = _llama_checkpoint(tmp_path, shards=None)
    names = list(tensors)
    hf.write(tmp_path / "sharded", hf.llama_config(cfg), tensors, shards=[names[:5], names[5:]])
    shard = tmp_path / "sharded" / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=f"{re.escape(str(shard))}: not a readable"):
        load_pretrained(tmp_path / "sharded")
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match=f"{re.escape(str(single))}: not a readable"):
        load_pretrained(tmp_path)


def test_tensor_shape_and_missing_tensor_errors(tmp_path: pathlib.Path) -> None:
    cfg, tensors = _llama_checkpoint(tmp_path)
    name = "model.layers.1.self_attn.k_proj.weight"
    kv = cfg.kv_heads * cfg.head_dim
    hf.write(tmp_path, hf.llama_config(cfg), tensors | {name: tensors[name][:-1].copy()})
    want = rf"tensor {name}: expected shape \({kv}, {cfg.dim}\), found \({kv - 1}, {cfg.dim}\)"
    with pytest.raises(CheckpointError, match=want + r" \(in .*model.safetensors\)"):
        load_pretrained(tmp_path)
    del tensors[name]
    hf.write(tmp_path, hf.llama_config(cfg), tensors)
    want = (
        rf"tensor {name} is missing \(expected shape \({kv}, {cfg.dim}\)\) from .*model.safetensors"
    )
    with pytest.raises(CheckpointError, match=want):
        load_pretrained(tmp_path)


def test_gpt2_c_attn_of_the_wrong_width(tmp_path: pathlib.Path) -> None:
    cfg, params = TINY["gpt2"], _params("gpt2")
    tensors = hf.gpt2_tensors(cfg, params)
    name = "transformer.h.0.attn.c_attn.weight"
    tensors[name] = tensors[name][:, : 2 * cfg.dim].copy()  # q and k only
    hf.write(tmp_path, hf.gpt2_config(cfg), tensors)
    with pytest.raises(
        CheckpointError, match=rf"{name}: expected shape \(32, 96\), found \(32, 64\)"
    ):
        load_pretrained(tmp_path)


def test_every_tensor_is_used(tmp_path: pathlib.Path) -> None:
    cfg, tensors = _llama_checkpoint(tmp_path, name="llama-tied")
    extra = {"model.layers.0.self_attn.q_proj.bias": np.zeros(cfg.heads * cfg.head_dim, np.float32)}
    hf.write(tmp_path, hf.llama_config(cfg), tensors | extra)
    want = r"tensor model.layers.0.self_attn.q_proj.bias in .*model.safetensors is not a parameter"
    with pytest.raises(CheckpointError, match=want):
        load_pretrained(tmp_path)
    head = {"lm_head.weight": np.ones((cfg.vocab, cfg.dim), np.float32)}
    hf.write(tmp_path, hf.llama_config(cfg), tensors | head)
    want = r"tensor lm_head.weight in .*model.safetensors differs from the token embedding, but "
    with pytest.raises(CheckpointError, match=want + "the config says tie_word_embeddings: true"):
        load_pretrained(tmp_path)
    hf.write(tmp_path, hf.llama_config(cfg) | {"num_hidden_layers": 1}, tensors)
    want = r"model.layers.1.\S+ in .* belongs to layer 1, but the config says num_hidden_layers = 1"
    with pytest.raises(CheckpointError, match=want):
        load_pretrained(tmp_path)
    ints = tensors | {"model.norm.weight": np.ones(cfg.dim, np.int32)}
    hf.write(tmp_path, hf.llama_config(cfg), ints)
    with pytest.raises(CheckpointError, match=r"model.norm.weight in .* has dtype I32"):
        load_pretrained(tmp_path)


def test_gpt2_buffers_beyond_the_config_layers(tmp_path: pathlib.Path) -> None:
    cfg, params = TINY["gpt2"], _params("gpt2")
    tensors = hf.gpt2_tensors(cfg, params, prefix="", buffers=True)
    hf.write(tmp_path, hf.gpt2_config(cfg) | {"n_layer": 1}, tensors)
    with pytest.raises(
        CheckpointError,
        match=r"tensor h.1.\S+ in .* belongs to layer 1, but the config says n_layer = 1",
    ):
        load_pretrained(tmp_path)


def test_shard_and_index_errors(tmp_path: pathlib.Path) -> None:
    cfg = TINY["llama"]
    tensors = hf.llama_tensors(cfg, _params("llama"))
    names = list(tensors)
    first, second = (
        tmp_path / "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    )
    dup = f"tensor {names[5]} is in both {re.escape(str(first))} and .*{second}"
    hf.write(tmp_path, hf.llama_config(cfg), tensors, shards=[names[:5], names[5:]])
    save_file({n: tensors[n] for n in names[:6]}, str(first))  # names[5] in both shards
    with pytest.raises(CheckpointError, match=dup):
        load_pretrained(tmp_path)
    save_file({n: tensors[n] for n in names[:4]}, str(first))  # names[4] nowhere
    want = rf"index.json: lists tensor {names[4]} in model-00001-of-00002.safetensors, which does"
    with pytest.raises(CheckpointError, match=want):
        load_pretrained(tmp_path)
    save_file({n: tensors[n] for n in names[:5]} | {"stray": tensors[names[0]]}, str(first))
    with pytest.raises(
        CheckpointError, match=r"tensor stray in .*00001-of-00002.safetensors is not listed"
    ):
        load_pretrained(tmp_path)
    (tmp_path / second).unlink()
    with pytest.raises(
        CheckpointError, match=rf"index.json: lists shard {second}, which is not in"
    ):
        load_pretrained(tmp_path)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"holds both model.safetensors and model.safetensors"
    ):
        load_pretrained(tmp_path)


def test_save_checks_params_against_the_config(tmp_path: pathlib.Path) -> None:
    params = _params("llama")
    with pytest.raises(ValueError, match=r"params has \['lm_head'\], which cfg does not use"):
        save_pretrained(tmp_path, TINY["llama-tied"], params)
    wide = dataclasses.replace(TINY["llama"], dim=50)
    with pytest.raises(ValueError, match=r"params\['embed'\]: expected shape \(128, 50\)"):
        save_pretrained(tmp_path, wide, params)
    assert not any(tmp_path.iterdir())  # nothing written
