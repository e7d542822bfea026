"""Llama weights in the Hugging Face safetensors layout, to and from :mod:`models.params`.

Hugging Face stores a projection as ``[out, in]`` (``torch.nn.Linear``); the stacked layout
stores ``[in, out]``, so projections are transposed on the way in and out. RoPE uses the same
first-half / second-half pairing as Hugging Face, so query and key weights need no
permutation.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from .config import DecoderConfig, config_from_hf, config_to_hf
from .params import Params, param_shapes

# Hugging Face name inside ``model.layers.{i}.`` -> (stacked-layout path, transposed)
_LAYER_TENSORS: dict[str, tuple[tuple[str, ...], bool]] = {
    "input_layernorm.weight": (("attn_norm", "scale"), False),
    "self_attn.q_proj.weight": (("wq",), True),
    "self_attn.k_proj.weight": (("wk",), True),
    "self_attn.v_proj.weight": (("wv",), True),
    "self_attn.o_proj.weight": (("wo",), True),
    "post_attention_layernorm.weight": (("mlp_norm", "scale"), False),
    "mlp.gate_proj.weight": (("w_gate",), True),
    "mlp.up_proj.weight": (("w_up",), True),
    "mlp.down_proj.weight": (("w_down",), True),
}


def _global_tensors(cfg: DecoderConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
    out = {
        "model.embed_tokens.weight": (("embed",), False),
        "model.norm.weight": (("final_norm", "scale"), False),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = (("lm_head",), True)
    return out


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _hf_shape(shape: tuple[int, ...], transposed: bool) -> tuple[int, ...]:
    return shape[::-1] if transposed else shape


def _check_llama(cfg: DecoderConfig) -> None:
    if cfg.arch != "llama":
        raise ValueError(f"the Hugging Face Llama layout needs a Llama config, got {cfg.arch!r}")


def _hf_tensors(cfg: DecoderConfig, params: Params) -> Iterator[tuple[str, np.ndarray]]:
    for name, (path, transposed) in _global_tensors(cfg).items():
        a = np.asarray(_get(params, path))
        yield name, a.T if transposed else a
    for i in range(cfg.layers):
        for name, (path, transposed) in _LAYER_TENSORS.items():
            a = np.asarray(_get(params["layers"], path)[i])
            yield f"model.layers.{i}.{name}", a.T if transposed else a


def save_hf_llama(path: str | pathlib.Path, cfg: DecoderConfig, params: Params) -> None:
    """Write ``params`` to the safetensors file ``path`` with Hugging Face Llama names, and the
    Hugging Face ``config.json`` of ``cfg`` next to it."""
    _check_llama(cfg)
    path = pathlib.Path(path)
    tensors = {name: np.ascontiguousarray(a) for name, a in _hf_tensors(cfg, params)}
    save_file(tensors, str(path))
    (path.parent / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2))


def _read_tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"no .safetensors file in {path}")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors |= load_file(str(f))
    return tensors


def _fetch(
    tensors: dict[str, np.ndarray], name: str, shape: tuple[int, ...], transposed: bool
) -> np.ndarray:
    want = _hf_shape(shape, transposed)
    if name not in tensors:
        raise ValueError(f"tensor {name} is missing (expected shape {want})")
    found = tensors[name]
    if found.shape != want:
        raise ValueError(f"tensor {name}: expected shape {want}, found {found.shape}")
    return found.T if transposed else found


def load_hf_llama(
    path: str | pathlib.Path, cfg: DecoderConfig | None = None, dtype: Any = None
) -> tuple[DecoderConfig, Params]:
    """``(cfg, params)`` of a Hugging Face Llama checkpoint: ``path`` is one safetensors file
    or a folder of (sharded) ones. Without ``cfg``, the ``config.json`` beside them is read.
    ``dtype`` casts every weight (``None``: the file's dtype)."""
    path = pathlib.Path(path)
    if cfg is None:
        folder = path if path.is_dir() else path.parent
        cfg = config_from_hf(json.loads((folder / "config.json").read_text()))
    _check_llama(cfg)
    tensors, shapes = _read_tensors(path), param_shapes(cfg)
    params: Params = {}
    for name, (p, transposed) in _global_tensors(cfg).items():
        _set(params, p, _fetch(tensors, name, _get(shapes, p), transposed))
    for name, (p, transposed) in _LAYER_TENSORS.items():
        shape = _get(shapes["layers"], p)[1:]
        per_layer = [
            _fetch(tensors, f"model.layers.{i}.{name}", shape, transposed)
            for i in range(cfg.layers)
        ]
        _set(params, ("layers", *p), np.stack(per_layer))
    return cfg, jax.tree.map(lambda a: jnp.asarray(a, dtype=dtype), params)
