"""Decoder weights in the Hugging Face safetensors layouts of Llama and GPT-2, to and from
:mod:`models.params`.

Llama (``LlamaForCausalLM``): ``torch.nn.Linear`` stores a projection as ``[out, in]`` and the
stacked layout as ``[in, out]``, so projections are transposed on the way in and out. RoPE
uses the same first-half / second-half pairing as Hugging Face, so query and key weights need
no permutation.

GPT-2 (``GPT2LMHeadModel``): ``Conv1D`` stores ``[in, out]`` like the stacked layout, and
``attn.c_attn`` holds the q, k and v projections concatenated along ``out``. Names carry a
``transformer.`` prefix when saved from ``GPT2LMHeadModel`` and none in the original files,
which also hold the causal-mask buffers ``h.{i}.attn.bias`` / ``h.{i}.attn.masked_bias``.

Loading is strict: every tensor in the files is a parameter of the model ``cfg`` describes or
one of those known buffers, every parameter is there with its shape, and a name in two files
is an error (:class:`CheckpointError`, naming the tensor and the file).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from .config import CheckpointError, DecoderConfig, config_to_hf, load_config
from .params import Params, param_shapes

# Hugging Face name -> (stacked-layout leaves, space-separated and concatenated along the last
# axis, and whether Hugging Face stores the tensor transposed)
_LLAMA_GLOBAL = {
    "model.embed_tokens.weight": ("embed", False),
    "model.norm.weight": ("final_norm.scale", False),
}
_LLAMA_LAYER = {  # inside model.layers.{i}.
    "input_layernorm.weight": ("attn_norm.scale", False),
    "self_attn.q_proj.weight": ("wq", True),
    "self_attn.k_proj.weight": ("wk", True),
    "self_attn.v_proj.weight": ("wv", True),
    "self_attn.o_proj.weight": ("wo", True),
    "post_attention_layernorm.weight": ("mlp_norm.scale", False),
    "mlp.gate_proj.weight": ("w_gate", True),
    "mlp.up_proj.weight": ("w_up", True),
    "mlp.down_proj.weight": ("w_down", True),
}
_LLAMA_BUFFERS = ("self_attn.rotary_emb.inv_freq",)  # in old files; recomputed from the config
_GPT2_GLOBAL = {  # after the prefix
    "wte.weight": ("embed", False),
    "wpe.weight": ("pos", False),
    "ln_f.weight": ("final_norm.scale", False),
    "ln_f.bias": ("final_norm.bias", False),
}
_GPT2_LAYER = {  # inside {prefix}h.{i}.
    "ln_1.weight": ("attn_norm.scale", False),
    "ln_1.bias": ("attn_norm.bias", False),
    "attn.c_attn.weight": ("wq wk wv", False),
    "attn.c_attn.bias": ("bq bk bv", False),
    "attn.c_proj.weight": ("wo", False),
    "attn.c_proj.bias": ("bo", False),
    "ln_2.weight": ("mlp_norm.scale", False),
    "ln_2.bias": ("mlp_norm.bias", False),
    "mlp.c_fc.weight": ("w_fc", False),
    "mlp.c_fc.bias": ("b_fc", False),
    "mlp.c_proj.weight": ("w_proj", False),
    "mlp.c_proj.bias": ("b_proj", False),
}
_GPT2_BUFFERS = ("attn.bias", "attn.masked_bias")  # causal masks in the original files
_HEAD = "lm_head.weight"  # [V, D], never prefixed
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


@dataclasses.dataclass(frozen=True)
class _Slot:
    """One Hugging Face tensor: the stacked-layout leaves it holds (concatenated along their
    last axis), whether it is stored transposed, and its layer (``None``: not per layer)."""

    leaves: tuple[tuple[str, ...], ...]
    transposed: bool
    layer: int | None


@dataclasses.dataclass(frozen=True)
class _Layout:
    tensors: dict[str, _Slot]
    buffers: frozenset[str]  # known non-parameter tensors, skipped
    layer_prefix: str  # per-layer names start with f"{layer_prefix}{i}."


def _slots(table: dict[str, tuple[str, bool]], pre: str, layer: int | None) -> dict[str, _Slot]:
    return {
        pre + name: _Slot(tuple(tuple(p.split(".")) for p in leaves.split()), transposed, layer)
        for name, (leaves, transposed) in table.items()
    }


def _layout(cfg: DecoderConfig, prefix: str = "transformer.") -> _Layout:
    """Every Hugging Face tensor of ``cfg``'s model (GPT-2 names after ``prefix``)."""
    if cfg.arch == "llama":
        glob, table, buffers = _LLAMA_GLOBAL, _LLAMA_LAYER, _LLAMA_BUFFERS
        layer_prefix = "model.layers."
    else:
        glob = {prefix + name: leaves for name, leaves in _GPT2_GLOBAL.items()}
        table, buffers, layer_prefix = _GPT2_LAYER, _GPT2_BUFFERS, f"{prefix}h."
    tensors = _slots(glob, "", None)
    if not cfg.tie_embeddings:
        tensors |= _slots({_HEAD: ("lm_head", True)}, "", None)
    for i in range(cfg.layers):
        tensors |= _slots(table, f"{layer_prefix}{i}.", i)
    skipped = {f"{layer_prefix}{i}.{name}" for i in range(cfg.layers) for name in buffers}
    return _Layout(tensors, frozenset(skipped), layer_prefix)


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _leaf_shapes(cfg: DecoderConfig, slot: _Slot) -> list[tuple[int, ...]]:
    """The stacked-layout shape of each leaf of ``slot``, without the layer axis."""
    shapes = param_shapes(cfg)
    if slot.layer is None:
        return [_get(shapes, path) for path in slot.leaves]
    return [_get(shapes["layers"], path)[1:] for path in slot.leaves]


def _hf_shape(cfg: DecoderConfig, slot: _Slot) -> tuple[int, ...]:
    shapes = _leaf_shapes(cfg, slot)
    shape = (*shapes[0][:-1], sum(s[-1] for s in shapes))
    return shape[::-1] if slot.transposed else shape


def _check_params(cfg: DecoderConfig, params: Params) -> None:
    is_shape = lambda node: isinstance(node, tuple)  # noqa: E731
    want = dict(jax.tree_util.tree_flatten_with_path(param_shapes(cfg), is_leaf=is_shape)[0])
    got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    if missing := sorted(want.keys() - got.keys(), key=str):
        raise ValueError(
            f"params has no {jax.tree_util.keystr(missing[0])} (cfg.arch={cfg.arch!r})"
        )
    if extra := sorted(got.keys() - want.keys(), key=str):
        raise ValueError(f"params has {jax.tree_util.keystr(extra[0])}, which cfg does not use")
    for path, shape in want.items():
        if tuple(np.shape(got[path])) != shape:
            raise ValueError(
                f"params{jax.tree_util.keystr(path)}: expected shape {shape}, "
                f"got {np.shape(got[path])}"
            )


def hf_tensors(cfg: DecoderConfig, params: Params) -> dict[str, np.ndarray]:
    """``params`` as Hugging Face tensors by name, as ``save_pretrained`` of transformers
    writes them (GPT-2 with the ``transformer.`` prefix; no tied head)."""
    _check_params(cfg, params)
    host = jax.tree.map(np.asarray, params)
    out = {}
    for name, slot in _layout(cfg).tensors.items():
        tree = host if slot.layer is None else host["layers"]
        parts = [_get(tree, path) for path in slot.leaves]
        if slot.layer is not None:
            parts = [part[slot.layer] for part in parts]
        a = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
        out[name] = np.ascontiguousarray(a.T if slot.transposed else a)
    return out


def write_tensors(path: str | pathlib.Path, tensors: dict[str, np.ndarray]) -> None:
    """One safetensors file, with the ``{"format": "pt"}`` metadata transformers expects."""
    save_file(tensors, str(path), metadata={"format": "pt"})


class Shards:
    """The tensors of one or more safetensors files by name. Headers are read up front (a name
    in two files is an error), data when asked for; errors name the file."""

    def __init__(self, files: Sequence[str | pathlib.Path]):
        self.file: dict[str, pathlib.Path] = {}
        self._handles: dict[pathlib.Path, Any] = {}
        for f in map(pathlib.Path, files):
            try:
                handle = safe_open(str(f), framework="numpy")
            except FileNotFoundError:
                raise CheckpointError(f"{f}: no such file") from None
            except (OSError, SafetensorError) as e:
                raise CheckpointError(
                    f"{f}: not a readable safetensors file ({e}); is it truncated or corrupt?"
                ) from None
            self._handles[f] = handle
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                if name in self.file:
                    raise CheckpointError(f"tensor {name} is in both {self.file[name]} and {f}")
                self.file[name] = f

    def __contains__(self, name: str) -> bool:
        return name in self.file

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self.file[name]].get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        """The safetensors dtype code, e.g. ``"BF16"``."""
        return self._handles[self.file[name]].get_slice(name).get_dtype()

    def load(self, name: str) -> np.ndarray:
        f = self.file[name]
        try:
            return self._handles[f].get_tensor(name)
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"{f}: cannot read tensor {name} ({e})") from None


def _gpt2_prefix(names: Iterable[str]) -> str:
    return "transformer." if any(n.startswith("transformer.") for n in names) else ""


def _files_of(shards: Shards) -> str:
    return ", ".join(sorted({str(f) for f in shards.file.values()})) or "the checkpoint"


def _extra_tensor_error(cfg: DecoderConfig, layout: _Layout, shards: Shards, name: str) -> str:
    where = f"tensor {name} in {shards.file[name]}"
    layer = re.fullmatch(re.escape(layout.layer_prefix) + r"(\d+)\..+", name)
    if layer and int(layer.group(1)) >= cfg.layers:
        field = "num_hidden_layers" if cfg.arch == "llama" else "n_layer"
        return (
            f"{where} belongs to layer {layer.group(1)}, but the config says {field} = "
            f"{cfg.layers}; the weights do not match their config"
        )
    return f"{where} is not a parameter of a Hugging Face {cfg.arch} model with this config"


def _check_names(cfg: DecoderConfig, layout: _Layout, shards: Shards) -> None:
    tied_head = {_HEAD} if cfg.tie_embeddings else set()
    for name in shards.file:
        if name not in layout.tensors and name not in layout.buffers and name not in tied_head:
            raise CheckpointError(_extra_tensor_error(cfg, layout, shards, name))
    missing = [name for name in layout.tensors if name not in shards]
    if missing:
        name, slot = missing[0], layout.tensors[missing[0]]
        others = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(
            f"tensor {name} is missing (expected shape {_hf_shape(cfg, slot)}){others} "
            f"from {_files_of(shards)}"
        )


def _fetch(shards: Shards, name: str, want: tuple[int, ...]) -> np.ndarray:
    found, dtype = shards.shape(name), shards.dtype(name)
    if found != want:
        raise CheckpointError(
            f"tensor {name}: expected shape {want}, found {found} (in {shards.file[name]})"
        )
    if dtype not in _FLOAT_DTYPES:
        raise CheckpointError(
            f"tensor {name} in {shards.file[name]} has dtype {dtype}; weights must be one of "
            f"{', '.join(_FLOAT_DTYPES)}"
        )
    return shards.load(name)


def _check_tied_head(shards: Shards, embed: np.ndarray) -> None:
    """A head stored next to tied embeddings is accepted only as an exact copy of them."""
    if _HEAD in shards and not (
        shards.shape(_HEAD) == embed.shape and np.array_equal(shards.load(_HEAD), embed)
    ):
        raise CheckpointError(
            f"tensor {_HEAD} in {shards.file[_HEAD]} differs from the token embedding, but the "
            "config says tie_word_embeddings: true; set it to false to use the separate head"
        )


def params_from_hf(cfg: DecoderConfig, shards: Shards) -> Params:
    """The stacked-layout parameters (NumPy, the files' dtypes) of ``cfg``'s model in
    ``shards``; every tensor there must be used (see the module docstring)."""
    prefix = _gpt2_prefix(shards.file) if cfg.arch == "gpt2" else ""
    layout = _layout(cfg, prefix)
    _check_names(cfg, layout, shards)
    params: Params = {}
    stacked: dict[tuple[str, ...], list[np.ndarray]] = {}
    for name, slot in layout.tensors.items():
        a = _fetch(shards, name, _hf_shape(cfg, slot))
        a = a.T if slot.transposed else a
        ends = np.cumsum([s[-1] for s in _leaf_shapes(cfg, slot)])[:-1]
        for path, part in zip(slot.leaves, np.split(a, ends, axis=-1), strict=True):
            if slot.layer is None:
                _set(params, path, part)
            else:
                stacked.setdefault(path, []).append(part)
    for path, parts in stacked.items():
        _set(params, ("layers", *path), np.stack(parts))
    if cfg.tie_embeddings:
        _check_tied_head(shards, params["embed"])
    return params


# --- Llama-only entry points (a safetensors file or a folder of them) ------------------------


def _check_llama(cfg: DecoderConfig) -> None:
    if cfg.arch != "llama":
        raise ValueError(f"the Hugging Face Llama layout needs a Llama config, got {cfg.arch!r}")


def save_hf_llama(path: str | pathlib.Path, cfg: DecoderConfig, params: Params) -> None:
    """Write ``params`` to the safetensors file ``path`` with Hugging Face Llama names, and the
    Hugging Face ``config.json`` of ``cfg`` next to it (see also
    :func:`models.pretrained.save_pretrained`)."""
    _check_llama(cfg)
    path = pathlib.Path(path)
    hf = config_to_hf(cfg, jnp.dtype(params["embed"].dtype).name)
    write_tensors(path, hf_tensors(cfg, params))
    (path.parent / "config.json").write_text(json.dumps(hf, indent=2) + "\n")


def load_hf_llama(
    path: str | pathlib.Path, cfg: DecoderConfig | None = None, dtype: Any = None
) -> tuple[DecoderConfig, Params]:
    """``(cfg, params)`` of a Hugging Face Llama checkpoint: ``path`` is one safetensors file
    or a folder of (sharded) ones. Without ``cfg``, the ``config.json`` beside them is read.
    ``dtype`` casts every weight (``None``: the file's dtype). See also
    :func:`models.pretrained.load_pretrained`."""
    path = pathlib.Path(path)
    if cfg is None:
        cfg = load_config((path if path.is_dir() else path.parent) / "config.json")
    _check_llama(cfg)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise CheckpointError(f"{path}: no .safetensors file")
    params = params_from_hf(cfg, Shards(files))
    return cfg, jax.tree.map(lambda a: jnp.asarray(a, dtype=dtype), params)
