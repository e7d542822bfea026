"""Hyper-parameters of the GPT-2-style and Llama-3.2-style decoders: ``DecoderConfig`` and its
presets, and conversion from / to a Hugging Face Llama ``config.json`` dict."""

from __future__ import annotations

import dataclasses
from typing import Any

ARCHS = ("gpt2", "llama")


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

    def __post_init__(self) -> None:
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


def _rope_scaling_from_hf(d: dict[str, Any] | None) -> RopeScaling | None:
    if d is None:
        return None
    kind = d.get("rope_type", d.get("type"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise ValueError(f"unsupported rope_scaling type {kind!r}; only 'llama3' is known")
    return RopeScaling(
        factor=float(d["factor"]),
        low_freq_factor=float(d["low_freq_factor"]),
        high_freq_factor=float(d["high_freq_factor"]),
        original_max_len=int(d["original_max_position_embeddings"]),
    )


def config_from_hf(d: dict[str, Any]) -> DecoderConfig:
    """The ``DecoderConfig`` of a Hugging Face Llama ``config.json`` dict."""
    if d.get("model_type", "llama") != "llama":
        raise ValueError(f"expected a Llama config, got model_type {d['model_type']!r}")
    heads = int(d["num_attention_heads"])
    return DecoderConfig(
        arch="llama",
        vocab=int(d["vocab_size"]),
        dim=int(d["hidden_size"]),
        layers=int(d["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or d["hidden_size"] // heads),
        hidden=int(d["intermediate_size"]),
        max_len=int(d["max_position_embeddings"]),
        norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        rope_theta=float(d.get("rope_theta", 10000.0)),
        rope_scaling=_rope_scaling_from_hf(d.get("rope_scaling")),
    )


def config_to_hf(cfg: DecoderConfig) -> dict[str, Any]:
    """A Hugging Face Llama ``config.json`` dict for a Llama ``cfg`` (inverse of
    :func:`config_from_hf`)."""
    if cfg.arch != "llama":
        raise ValueError(f"only Llama configs have a Hugging Face Llama form, got {cfg.arch!r}")
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
