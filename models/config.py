"""Hyper-parameters of the GPT-2-style and Llama-3.2-style decoders: ``DecoderConfig`` and its
presets, and conversion from / to a Hugging Face ``config.json`` dict (Llama and GPT-2, in
both the transformers 4 and 5 spellings)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

ARCHS = ("gpt2", "llama")


class CheckpointError(ValueError):
    """A Hugging Face config or checkpoint that cannot be loaded as it is. The message names the
    file, the field or tensor, and the value found."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 RoPE frequency scaling (Hugging Face ``rope_type: "llama3"``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_len: int


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """One decoder-only transformer. ``arch`` picks GPT-2 (LayerNorm, learned positions, GELU
    MLP, biases) or Llama (RMSNorm, RoPE, SwiGLU MLP, no biases).

    ``window``: sliding-window attention, position ``t`` attends to positions
    ``max(0, t - window + 1) .. t``; ``None`` is plain causal attention.
    ``eos_token_ids`` / ``bos_token_id``: the end-of-sequence tokens (any of them ends a row) and
    the beginning-of-sequence token, as a checkpoint's ``config.json`` names them; empty / ``None``
    when unknown.
    """

    arch: str
    vocab: int
    dim: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    max_len: int
    norm_eps: float
    tie_embeddings: bool
    window: int | None = None
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))  # hashable
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        for name in ("vocab", "dim", "layers", "heads", "kv_heads", "head_dim", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_len < 1:
            raise ValueError(f"max_len must be positive, got {self.max_len}")
        if self.heads % self.kv_heads:
            raise ValueError(
                f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})"
            )
        if self.arch == "llama" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be None or at least 1, got {self.window}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")
        named = (*self.eos_token_ids, *(() if self.bos_token_id is None else (self.bos_token_id,)))
        for token in named:
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < self.vocab:
                raise ValueError(
                    f"token ids must be integers in [0, vocab={self.vocab}), got {token!r} "
                    f"(eos_token_ids={self.eos_token_ids}, bos_token_id={self.bos_token_id})"
                )

    @property
    def groups(self) -> int:
        """Query heads served by each key/value head."""
        return self.heads // self.kv_heads


def tiny_gpt2() -> DecoderConfig:
    """A two-layer GPT-2 for tests (tied embeddings)."""
    return DecoderConfig(
        arch="gpt2",
        vocab=96,
        dim=32,
        layers=2,
        heads=4,
        kv_heads=4,
        head_dim=8,
        hidden=128,
        max_len=64,
        norm_eps=1e-5,
        tie_embeddings=True,
    )


def tiny_llama() -> DecoderConfig:
    """A two-layer Llama for tests: grouped-query attention, an untied head, and a RoPE scaling
    whose thresholds fall inside its few frequencies."""
    return DecoderConfig(
        arch="llama",
        vocab=128,
        dim=48,
        layers=2,
        heads=4,
        kv_heads=2,
        head_dim=12,
        hidden=96,
        max_len=64,
        norm_eps=1e-5,
        tie_embeddings=False,
        rope_theta=10000.0,
        rope_scaling=RopeScaling(4.0, 1.0, 4.0, 32),
    )


def gpt2_small() -> DecoderConfig:
    """GPT-2 small (124M); shorten ``max_len`` with ``dataclasses.replace`` if wanted."""
    return DecoderConfig(
        arch="gpt2",
        vocab=50257,
        dim=768,
        layers=12,
        heads=12,
        kv_heads=12,
        head_dim=64,
        hidden=3072,
        max_len=1024,
        norm_eps=1e-5,
        tie_embeddings=True,
    )


def _llama32(dim: int, layers: int, heads: int, head_dim: int) -> DecoderConfig:
    return DecoderConfig(
        arch="llama",
        vocab=128256,
        dim=dim,
        layers=layers,
        heads=heads,
        kv_heads=8,
        head_dim=head_dim,
        hidden=8192,
        max_len=131072,
        norm_eps=1e-5,
        tie_embeddings=True,
        rope_theta=500000.0,
        rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192),
    )


def llama32_1b() -> DecoderConfig:
    """Llama-3.2-1B."""
    return _llama32(dim=2048, layers=16, heads=32, head_dim=64)


def llama32_3b() -> DecoderConfig:
    """Llama-3.2-3B."""
    return _llama32(dim=3072, layers=28, heads=24, head_dim=128)


# --- Hugging Face config.json ----------------------------------------------------------------

_REQUIRED = object()
_DEFAULT_ROPE_THETA = 10000.0  # transformers' LlamaConfig default
_ROPE_TYPES = ("default", "llama3")


def _is(value: Any, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)


def _field(
    d: dict[str, Any],
    name: str,
    kind: type,
    source: str,
    default: Any = _REQUIRED,
    label: str | None = None,
) -> Any:
    """``d[name]`` as ``kind``; a missing or null field is ``default``, or an error naming it."""
    value, label = d.get(name), label or name
    if value is None:
        if default is _REQUIRED:
            raise CheckpointError(f"{source}: required field {label!r} is missing")
        return default
    if not _is(value, kind):
        raise CheckpointError(f"{source}: {label} must be {kind.__name__}, got {value!r}")
    return kind(value)


def _honour(
    d: dict[str, Any], name: str, default: Any, supported: tuple[Any, ...], source: str, why: str
) -> None:
    """Refuse a field whose value the decoders cannot honour (a missing field is ``default``)."""
    value = d.get(name)
    value = default if value is None else value
    if not any(_is(value, type(ok)) and value == ok for ok in supported):
        allowed = ", ".join(repr(ok) for ok in supported)
        raise CheckpointError(
            f"{source}: {name} = {value!r} is not supported: {why} (supported: {allowed})"
        )


def _rope_scaling(d: Any, label: str, source: str) -> RopeScaling | None:
    """The scaling of a ``rope_scaling`` (transformers 4) or ``rope_parameters``
    (transformers 5) object; ``None`` for ``rope_type: "default"``."""
    if d is None:
        return None
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: {label} must be an object, got {d!r}")
    _honour(d, "partial_rotary_factor", 1.0, (1.0,), source, "RoPE rotates the whole head")
    kind = d.get("rope_type", d.get("type"))
    if kind not in _ROPE_TYPES:
        allowed = ", ".join(repr(k) for k in _ROPE_TYPES)
        raise CheckpointError(
            f"{source}: {label}.rope_type = {kind!r} is not supported (supported: {allowed})"
        )
    if kind == "default":
        return None
    return RopeScaling(
        factor=_field(d, "factor", float, source, label=f"{label}.factor"),
        low_freq_factor=_field(
            d, "low_freq_factor", float, source, label=f"{label}.low_freq_factor"
        ),
        high_freq_factor=_field(
            d, "high_freq_factor", float, source, label=f"{label}.high_freq_factor"
        ),
        original_max_len=_field(
            d,
            "original_max_position_embeddings",
            int,
            source,
            label=f"{label}.original_max_position_embeddings",
        ),
    )


def _llama_rope(d: dict[str, Any], source: str) -> tuple[float, RopeScaling | None]:
    """``(theta, scaling)`` from top-level ``rope_theta`` / ``rope_scaling`` (transformers 4) or
    ``rope_parameters`` (transformers 5); both spellings present must agree."""
    theta = _field(d, "rope_theta", float, source, None)
    scaling = _rope_scaling(d.get("rope_scaling"), "rope_scaling", source)
    _honour(d, "partial_rotary_factor", 1.0, (1.0,), source, "RoPE rotates the whole head")
    new = d.get("rope_parameters")
    if new is None:
        return (_DEFAULT_ROPE_THETA if theta is None else theta), scaling
    new_scaling = _rope_scaling(new, "rope_parameters", source)
    new_theta = _field(new, "rope_theta", float, source, theta, label="rope_parameters.rope_theta")
    if theta is not None and new_theta != theta:
        raise CheckpointError(
            f"{source}: rope_parameters.rope_theta = {new_theta} disagrees with rope_theta = "
            f"{theta}; keep one of them"
        )
    if d.get("rope_scaling") is not None and new_scaling != scaling:
        raise CheckpointError(
            f"{source}: rope_parameters = {new!r} disagrees with rope_scaling = "
            f"{d['rope_scaling']!r}; keep one of them"
        )
    return (_DEFAULT_ROPE_THETA if new_theta is None else new_theta), new_scaling


def _token_fields(d: dict[str, Any], source: str) -> dict[str, Any]:
    eos = d.get("eos_token_id")
    eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
    if not all(_is(token, int) for token in eos):
        raise CheckpointError(
            f"{source}: eos_token_id must be an integer or a list of integers, "
            f"got {d['eos_token_id']!r}"
        )
    bos = _field(d, "bos_token_id", int, source, None)
    return {"eos_token_ids": tuple(dict.fromkeys(eos)), "bos_token_id": bos}


def _llama_fields(d: dict[str, Any], source: str) -> dict[str, Any]:
    _honour(d, "hidden_act", "silu", ("silu",), source, "the Llama MLP is SwiGLU with SiLU")
    _honour(d, "attention_bias", False, (False,), source, "Llama attention has no biases")
    _honour(d, "mlp_bias", False, (False,), source, "the Llama MLP has no biases")
    dim, heads = (
        _field(d, "hidden_size", int, source),
        _field(d, "num_attention_heads", int, source),
    )
    if d.get("head_dim") is None and heads > 0 and dim % heads:
        raise CheckpointError(
            f"{source}: hidden_size = {dim} is not a multiple of num_attention_heads = {heads}; "
            "give head_dim"
        )
    theta, scaling = _llama_rope(d, source)
    return {
        "arch": "llama",
        "vocab": _field(d, "vocab_size", int, source),
        "dim": dim,
        "layers": _field(d, "num_hidden_layers", int, source),
        "heads": heads,
        "kv_heads": _field(d, "num_key_value_heads", int, source, heads),
        "head_dim": _field(d, "head_dim", int, source, dim // heads if heads > 0 else 0),
        "hidden": _field(d, "intermediate_size", int, source),
        "max_len": _field(d, "max_position_embeddings", int, source),
        "norm_eps": _field(d, "rms_norm_eps", float, source, 1e-6),
        "tie_embeddings": _field(d, "tie_word_embeddings", bool, source, False),
        "rope_theta": theta,
        "rope_scaling": scaling,
    }


def _gpt2_fields(d: dict[str, Any], source: str) -> dict[str, Any]:
    gelu_tanh = ("gelu_new", "gelu_pytorch_tanh")
    why = "the GPT-2 MLP uses the tanh approximation of GELU"
    _honour(d, "activation_function", "gelu_new", gelu_tanh, source, why)
    why = "attention scores are always scaled by 1/sqrt(head_dim)"
    _honour(d, "scale_attn_weights", True, (True,), source, why)
    _honour(d, "scale_attn_by_inverse_layer_idx", False, (False,), source, why)
    _honour(d, "add_cross_attention", False, (False,), source, "the decoder has no cross-attention")
    dim, heads = _field(d, "n_embd", int, source), _field(d, "n_head", int, source)
    if heads > 0 and dim % heads:
        raise CheckpointError(f"{source}: n_embd = {dim} is not a multiple of n_head = {heads}")
    return {
        "arch": "gpt2",
        "vocab": _field(d, "vocab_size", int, source),
        "dim": dim,
        "layers": _field(d, "n_layer", int, source),
        "heads": heads,
        "kv_heads": heads,
        "head_dim": dim // heads if heads > 0 else 0,
        "hidden": _field(d, "n_inner", int, source, 4 * dim),
        "max_len": _field(d, "n_positions", int, source),
        "norm_eps": _field(d, "layer_norm_epsilon", float, source, 1e-5),
        "tie_embeddings": _field(d, "tie_word_embeddings", bool, source, True),
    }


_FROM_HF = {"gpt2": _gpt2_fields, "llama": _llama_fields}


def config_from_hf(d: dict[str, Any], source: str = "config.json") -> DecoderConfig:
    """The ``DecoderConfig`` of a Hugging Face Llama or GPT-2 ``config.json`` dict, in the
    transformers 4 (``rope_theta``, ``rope_scaling``) or 5 (``rope_parameters``) spelling.

    A field the decoders cannot honour (``attention_bias: true``, ``rope_type: "yarn"``, ...)
    or a missing required field raises :class:`CheckpointError` naming ``source``, the field
    and its value. A missing ``eos_token_id`` / ``bos_token_id`` leaves them unknown::

        cfg = config_from_hf(json.loads(pathlib.Path("Llama-3.2-1B/config.json").read_text()))
    """
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(d).__name__}")
    model_type = _field(d, "model_type", str, source)
    if model_type not in _FROM_HF:
        allowed = ", ".join(repr(k) for k in _FROM_HF)
        raise CheckpointError(
            f"{source}: model_type = {model_type!r} is not supported (supported: {allowed})"
        )
    fields = _FROM_HF[model_type](d, source) | _token_fields(d, source)
    try:
        return DecoderConfig(**fields)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _llama_to_hf(cfg: DecoderConfig) -> dict[str, Any]:
    scaling = cfg.rope_scaling
    return {
        "architectures": ["LlamaForCausalLM"],
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
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_theta": cfg.rope_theta,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "rope_scaling": None
        if scaling is None
        else {
            "rope_type": "llama3",
            "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_max_len,
        },
    }


def _gpt2_to_hf(cfg: DecoderConfig) -> dict[str, Any]:
    if cfg.kv_heads != cfg.heads or cfg.heads * cfg.head_dim != cfg.dim:
        raise ValueError(
            "a Hugging Face GPT-2 needs kv_heads == heads and heads * head_dim == dim, got "
            f"heads={cfg.heads}, kv_heads={cfg.kv_heads}, head_dim={cfg.head_dim}, dim={cfg.dim}"
        )
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab,
        "n_embd": cfg.dim,
        "n_layer": cfg.layers,
        "n_head": cfg.heads,
        "n_inner": cfg.hidden,
        "n_positions": cfg.max_len,
        "layer_norm_epsilon": cfg.norm_eps,
        "activation_function": "gelu_new",
        "tie_word_embeddings": cfg.tie_embeddings,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
    }


def config_to_hf(cfg: DecoderConfig, dtype: str | None = None) -> dict[str, Any]:
    """A Hugging Face ``config.json`` dict for ``cfg`` in the transformers 4 spelling, which
    transformers 5 reads too (inverse of :func:`config_from_hf`). Token ids that are unknown are
    written as ``null``, so transformers does not substitute its defaults; ``dtype`` (the
    weights' dtype, e.g. ``"bfloat16"``) is written as ``torch_dtype``."""
    if cfg.window is not None:
        raise ValueError(
            f"window={cfg.window} has no field in a Hugging Face Llama or GPT-2 config; "
            "save the config with window=None"
        )
    eos = cfg.eos_token_ids
    out = (_gpt2_to_hf if cfg.arch == "gpt2" else _llama_to_hf)(cfg) | {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": None if not eos else eos[0] if len(eos) == 1 else list(eos),
    }
    return out if dtype is None else out | {"torch_dtype": dtype}


def load_config(path: str | pathlib.Path) -> DecoderConfig:
    """The ``DecoderConfig`` of a Hugging Face ``config.json`` file (see :func:`config_from_hf`);
    errors name the file."""
    path = pathlib.Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file; a checkpoint needs its config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e})") from None
    return config_from_hf(d, str(path))
