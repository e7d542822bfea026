"""The per-token math of the GPT-2 and Llama decoders as pure JAX functions.

Every function works on any leading batch shape ``...``: one token ``[D]``, a batch ``[B, D]``
or sequences ``[B, S, D]``. ``p`` / ``lp`` are slices of the layout of :mod:`models.params`
(``lp`` one layer's weights, e.g. ``params.layer(params, l)``). Norms and softmax run in
float32; results come back in the input dtype (logits always in float32).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from .config import DecoderConfig, RopeScaling
from .params import Params

MASKED = -1e30  # score of a row that must not be attended to (finite: no inf - inf)


def norm(cfg: DecoderConfig, p: Params, x: jax.Array) -> jax.Array:
    """LayerNorm (scale and bias) for GPT-2, RMSNorm (scale) for Llama, over the last axis."""
    h = x.astype(jnp.float32)
    if cfg.arch == "gpt2":
        h = h - jnp.mean(h, axis=-1, keepdims=True)
    h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + cfg.norm_eps)
    h = h.astype(x.dtype) * p["scale"]
    return h + p["bias"] if cfg.arch == "gpt2" else h


def rope_inv_freq(cfg: DecoderConfig) -> np.ndarray:
    """The ``head_dim / 2`` RoPE inverse frequencies, float32, with Llama-3 scaling when
    ``cfg.rope_scaling`` is set."""
    return _inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)


@functools.lru_cache(maxsize=32)
def _inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling is not None:
        inv = _llama3_scaled(inv, scaling)
    inv = inv.astype(np.float32)
    inv.setflags(write=False)
    return inv


def _llama3_scaled(inv: np.ndarray, s: RopeScaling) -> np.ndarray:
    """Long wavelengths divided by ``factor``, short ones kept, the band between blended."""
    low_freq_wavelen = s.original_max_len / s.low_freq_factor
    high_freq_wavelen = s.original_max_len / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_freq_wavelen, inv / s.factor, inv)
    smooth = (s.original_max_len / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(medium, smoothed, scaled)


def _rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, pos: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate ``x`` ``[..., n_heads, hd]`` to positions ``pos`` (broadcastable to
    ``x.shape[:-2]``), first-half / second-half pairing ("rotate_half")."""
    angle = jnp.asarray(pos, jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angle = jnp.concatenate([angle, angle], axis=-1)[..., None, :]
    h = x.astype(jnp.float32)
    return (h * jnp.cos(angle) + _rotate_half(h) * jnp.sin(angle)).astype(x.dtype)


def _linear(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    y = x @ w
    return y if b is None else y + b


def _split_heads(x: jax.Array, n: int, head_dim: int) -> jax.Array:
    return x.reshape(*x.shape[:-1], n, head_dim)


def qkv(
    cfg: DecoderConfig, lp: Params, x: jax.Array, pos: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Queries ``[..., H, hd]``, keys and values ``[..., KV, hd]`` of the normed input ``x``
    ``[..., D]`` at positions ``pos`` (RoPE for Llama, biases for GPT-2)."""
    q = _split_heads(_linear(x, lp["wq"], lp.get("bq")), cfg.heads, cfg.head_dim)
    k = _split_heads(_linear(x, lp["wk"], lp.get("bk")), cfg.kv_heads, cfg.head_dim)
    v = _split_heads(_linear(x, lp["wv"], lp.get("bv")), cfg.kv_heads, cfg.head_dim)
    if cfg.arch == "llama":
        inv_freq = rope_inv_freq(cfg)
        q, k = apply_rope(q, pos, inv_freq), apply_rope(k, pos, inv_freq)
    return q, k, v


def scores(cfg: DecoderConfig, q: jax.Array, ks: jax.Array) -> jax.Array:
    """Scaled float32 scores ``[..., KV, G, S]`` of queries ``[..., H, hd]`` (heads grouped
    ``G = H / KV`` per key/value head) against keys ``[..., S, KV, hd]``."""
    grouped = q.reshape(*q.shape[:-2], cfg.kv_heads, cfg.groups, cfg.head_dim)
    s = jnp.einsum("...kgd,...skd->...kgs", grouped, ks, preferred_element_type=jnp.float32)
    return s * (1.0 / math.sqrt(cfg.head_dim))


def weighted_values(cfg: DecoderConfig, probs: jax.Array, vs: jax.Array) -> jax.Array:
    """``probs`` ``[..., KV, G, S]`` times values ``[..., S, KV, hd]``, as ``[..., H, hd]``."""
    o = jnp.einsum("...kgs,...skd->...kgd", probs.astype(vs.dtype), vs)
    return o.reshape(*o.shape[:-3], cfg.heads, cfg.head_dim)


def attend(
    cfg: DecoderConfig, q: jax.Array, ks: jax.Array, vs: jax.Array, valid: jax.Array
) -> jax.Array:
    """Grouped-query attention of ``q`` ``[..., H, hd]`` over the rows of ``ks`` / ``vs``
    ``[..., S, KV, hd]`` where ``valid`` ``[..., S]`` holds; ``[..., H, hd]``. A row with no
    valid entry gives zeros."""
    mask = valid[..., None, None, :]
    s = jnp.where(mask, scores(cfg, q, ks), MASKED)
    e = jnp.where(mask, jnp.exp(s - jnp.max(s, axis=-1, keepdims=True)), 0.0)
    # the largest valid entry contributes exp(0) = 1, so the clamp only acts on empty rows
    probs = e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), 1.0)
    return weighted_values(cfg, probs, vs)


def attend_rows(cfg: DecoderConfig, q: jax.Array, ks: jax.Array, vs: jax.Array) -> jax.Array:
    """Grouped-query attention of ``q`` ``[..., H, hd]`` over all ``S`` rows of ``ks`` / ``vs``
    ``[..., S, KV, hd]`` (no mask: the caller picks the rows); ``[..., H, hd]``."""
    s = scores(cfg, q, ks)
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    return weighted_values(cfg, e / jnp.sum(e, axis=-1, keepdims=True), vs)


def attn_out(cfg: DecoderConfig, lp: Params, o: jax.Array) -> jax.Array:
    """The output projection of attention heads ``o`` ``[..., H, hd]``, as ``[..., D]``."""
    flat = o.reshape(*o.shape[:-2], cfg.heads * cfg.head_dim)
    return _linear(flat, lp["wo"], lp.get("bo"))


def mlp(cfg: DecoderConfig, lp: Params, x: jax.Array) -> jax.Array:
    """GPT-2: ``proj(gelu_tanh(fc x))`` with biases; Llama: ``down(silu(gate x) * up x)``."""
    if cfg.arch == "gpt2":
        h = jax.nn.gelu(_linear(x, lp["w_fc"], lp["b_fc"]), approximate=True)
        return _linear(h, lp["w_proj"], lp["b_proj"])
    return (jax.nn.silu(x @ lp["w_gate"]) * (x @ lp["w_up"])) @ lp["w_down"]


def logits(cfg: DecoderConfig, params: Params, x: jax.Array) -> jax.Array:
    """Float32 next-token logits ``[..., V]``: the final norm, then the LM head (the transposed
    token embedding when ``cfg.tie_embeddings``)."""
    h = norm(cfg, params["final_norm"], x)
    head = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
    return (h @ head).astype(jnp.float32)


def embed(cfg: DecoderConfig, params: Params, tokens: jax.Array, pos: jax.Array) -> jax.Array:
    """Token embeddings ``[..., D]`` of ``tokens`` (plus the learned position embedding of
    ``pos``, broadcastable to ``tokens.shape``, for GPT-2)."""
    x = jnp.take(params["embed"], tokens, axis=0)
    if cfg.arch == "gpt2":
        x = x + jnp.take(params["pos"], pos, axis=0)
    return x
