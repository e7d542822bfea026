"""Hugging Face checkpoints written by hand, the oracles of the loader tests: ``config.json``
dicts and tensors with the names and layouts transformers uses (``[out, in]`` Llama
projections, ``[in, out]`` GPT-2 ``Conv1D`` weights with q, k, v concatenated in ``c_attn``),
written with ``safetensors.numpy.save_file``, never through :mod:`models.pretrained`."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from tempo_jax.models.config import DecoderConfig


def llama_config(cfg: DecoderConfig) -> dict[str, Any]:
    """A ``LlamaForCausalLM`` ``config.json`` (transformers 4 spelling) for ``cfg``."""
    s = cfg.rope_scaling
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "vocab_size": cfg.vocab,
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.hidden,
        "max_position_embeddings": cfg.max_len,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None
        if s is None
        else {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_len,
        },
        "torch_dtype": "float32",
    }


def gpt2_config(cfg: DecoderConfig) -> dict[str, Any]:
    """A ``GPT2LMHeadModel`` ``config.json`` for ``cfg``."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": cfg.vocab,
        "n_embd": cfg.dim,
        "n_layer": cfg.layers,
        "n_head": cfg.heads,
        "n_inner": cfg.hidden,
        "n_positions": cfg.max_len,
        "n_ctx": cfg.max_len,
        "layer_norm_epsilon": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


def _np(params: dict) -> dict:
    return {k: _np(v) if isinstance(v, dict) else np.asarray(v) for k, v in params.items()}


def llama_tensors(cfg: DecoderConfig, params: dict) -> dict[str, np.ndarray]:
    """``LlamaForCausalLM`` tensors: ``[out, in]`` projections under ``model.``."""
    p = _np(params)
    lp = p["layers"]
    out = {
        "model.embed_tokens.weight": p["embed"],
        "model.norm.weight": p["final_norm"]["scale"],
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = p["lm_head"].T
    for i in range(cfg.layers):
        pre = f"model.layers.{i}."
        out[pre + "input_layernorm.weight"] = lp["attn_norm"]["scale"][i]
        out[pre + "post_attention_layernorm.weight"] = lp["mlp_norm"]["scale"][i]
        for hf, ours in [("q", "wq"), ("k", "wk"), ("v", "wv"), ("o", "wo")]:
            out[pre + f"self_attn.{hf}_proj.weight"] = lp[ours][i].T
        for hf, ours in [("gate", "w_gate"), ("up", "w_up"), ("down", "w_down")]:
            out[pre + f"mlp.{hf}_proj.weight"] = lp[ours][i].T
    return {name: np.ascontiguousarray(a) for name, a in out.items()}


def gpt2_tensors(
    cfg: DecoderConfig, params: dict, prefix: str = "transformer.", buffers: bool = False
) -> dict[str, np.ndarray]:
    """GPT-2 tensors: ``[in, out]`` ``Conv1D`` weights, ``c_attn`` = q | k | v along ``out``.
    ``prefix=""`` and ``buffers=True`` give the original files' layout (``GPT2Model`` names and
    the causal-mask buffers ``attn.bias`` / ``attn.masked_bias``)."""
    p = _np(params)
    lp = p["layers"]
    out = {
        prefix + "wte.weight": p["embed"],
        prefix + "wpe.weight": p["pos"],
        prefix + "ln_f.weight": p["final_norm"]["scale"],
        prefix + "ln_f.bias": p["final_norm"]["bias"],
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = p["lm_head"].T
    for i in range(cfg.layers):
        pre = f"{prefix}h.{i}."
        for hf, norm in [("ln_1", "attn_norm"), ("ln_2", "mlp_norm")]:
            out[pre + f"{hf}.weight"] = lp[norm]["scale"][i]
            out[pre + f"{hf}.bias"] = lp[norm]["bias"][i]
        out[pre + "attn.c_attn.weight"] = np.concatenate([lp[w][i] for w in ("wq", "wk", "wv")], 1)
        out[pre + "attn.c_attn.bias"] = np.concatenate([lp[b][i] for b in ("bq", "bk", "bv")], 0)
        out[pre + "attn.c_proj.weight"] = lp["wo"][i]
        out[pre + "attn.c_proj.bias"] = lp["bo"][i]
        out[pre + "mlp.c_fc.weight"] = lp["w_fc"][i]
        out[pre + "mlp.c_fc.bias"] = lp["b_fc"][i]
        out[pre + "mlp.c_proj.weight"] = lp["w_proj"][i]
        out[pre + "mlp.c_proj.bias"] = lp["b_proj"][i]
        if buffers:
            n = cfg.max_len
            out[pre + "attn.bias"] = np.tril(np.ones((n, n), np.float32))[None, None]
            out[pre + "attn.masked_bias"] = np.asarray(-1e4, np.float32)
    return {name: np.ascontiguousarray(a) for name, a in out.items()}


def write(
    folder: pathlib.Path,
    hf_config: dict[str, Any],
    tensors: dict[str, np.ndarray],
    shards: list[list[str]] | None = None,
) -> pathlib.Path:
    """``config.json`` and ``model.safetensors`` in ``folder``, or, with ``shards`` (tensor
    names per shard), ``model-0000i-of-0000n.safetensors`` and the index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config))
    if shards is None:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder
    weight_map = {}
    for i, names in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in names}, str(folder / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(names, file)
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder
