"""GPT-2 and Llama as ``flax.nnx`` modules: the full-sequence forward pass, the reference the
decoders are checked against.

``GPT2(cfg)(tokens)`` / ``Llama(cfg)(tokens)`` map ``[B, S]`` tokens to ``[B, S, V]`` logits
with causal (or, with ``cfg.window``, sliding-window) attention. :func:`to_params` and
:func:`from_params` convert to and from the stacked layout of :mod:`models.params`;
:func:`from_flax` gives the tempo_jax decoder driven by a module's parameters::

    module = Llama(cfg)
    model = from_flax(module)
    out = model.generate(prompt, steps=32, temperature=0.8, key=jax.random.PRNGKey(0))
"""

from __future__ import annotations

import math
from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from . import layers
from .config import DecoderConfig
from .params import Params, layer

_init = nnx.initializers.normal(0.02)


def _dense(d_in: int, d_out: int, bias: bool, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=bias, kernel_init=_init, rngs=rngs)


class Norm(nnx.Module):
    """LayerNorm (GPT-2) or RMSNorm (Llama) over the last axis."""

    def __init__(self, cfg: DecoderConfig):
        self.cfg = cfg
        self.scale = nnx.Param(jnp.ones(cfg.dim))
        if cfg.arch == "gpt2":
            self.bias = nnx.Param(jnp.zeros(cfg.dim))

    def variables(self) -> dict[str, nnx.Param]:
        """The norm's parameters by their :mod:`models.params` names."""
        out = {"scale": self.scale}
        if self.cfg.arch == "gpt2":
            out["bias"] = self.bias
        return out

    def __call__(self, x: jax.Array) -> jax.Array:
        return layers.norm(self.cfg, {k: v[...] for k, v in self.variables().items()}, x)


class Attention(nnx.Module):
    """Multi-head (grouped-query when ``kv_heads < heads``) self-attention over a sequence."""

    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        bias, q, kv = cfg.arch == "gpt2", cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        self.q = _dense(cfg.dim, q, bias, rngs)
        self.k = _dense(cfg.dim, kv, bias, rngs)
        self.v = _dense(cfg.dim, kv, bias, rngs)
        self.o = _dense(q, cfg.dim, bias, rngs)

    def mask(self, length: int) -> jax.Array:
        """``[S, S]``: query ``i`` may see key ``j``."""
        i, j = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
        seen = j <= i
        return seen if self.cfg.window is None else seen & (j > i - self.cfg.window)

    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, (b, s, _) = self.cfg, x.shape
        q = self.q(x).reshape(b, s, cfg.heads, cfg.head_dim)
        k = self.k(x).reshape(b, s, cfg.kv_heads, cfg.head_dim)
        v = self.v(x).reshape(b, s, cfg.kv_heads, cfg.head_dim)
        if cfg.arch == "llama":
            inv_freq, pos = layers.rope_inv_freq(cfg), jnp.arange(s)
            q, k = layers.apply_rope(q, pos, inv_freq), layers.apply_rope(k, pos, inv_freq)
        q = q.reshape(b, s, cfg.kv_heads, cfg.groups, cfg.head_dim)  # head h reads kv h // G
        att = jnp.einsum("bikgd,bjkd->bkgij", q, k, preferred_element_type=jnp.float32)
        att = jnp.where(self.mask(s), att / math.sqrt(cfg.head_dim), -jnp.inf)
        att = jax.nn.softmax(att, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkgij,bjkd->bikgd", att, v)
        return self.o(out.reshape(b, s, cfg.heads * cfg.head_dim))


class MLP(nnx.Module):
    """GPT-2: ``proj(gelu_tanh(fc x))``; Llama: ``down(silu(gate x) * up x)``."""

    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        if cfg.arch == "gpt2":
            self.fc = _dense(cfg.dim, cfg.hidden, True, rngs)
            self.proj = _dense(cfg.hidden, cfg.dim, True, rngs)
        else:
            self.gate = _dense(cfg.dim, cfg.hidden, False, rngs)
            self.up = _dense(cfg.dim, cfg.hidden, False, rngs)
            self.down = _dense(cfg.hidden, cfg.dim, False, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.cfg.arch == "gpt2":
            return self.proj(jax.nn.gelu(self.fc(x), approximate=True))
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Block(nnx.Module):
    """One pre-norm transformer layer: ``x + attn(norm x)``, then ``x + mlp(norm x)``."""

    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
        self.attn_norm = Norm(cfg)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = Norm(cfg)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class Decoder(nnx.Module):
    """The decoder shared by :class:`GPT2` and :class:`Llama`."""

    arch = ""

    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs | None = None):
        if cfg.arch != self.arch:
            raise ValueError(f"{type(self).__name__} needs arch {self.arch!r}, got {cfg.arch!r}")
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.vocab, cfg.dim, embedding_init=_init, rngs=rngs)
        if cfg.arch == "gpt2":
            self.pos = nnx.Embed(cfg.max_len, cfg.dim, embedding_init=_init, rngs=rngs)
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.layers)])
        self.final_norm = Norm(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = _dense(cfg.dim, cfg.vocab, False, rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens)
        if self.cfg.arch == "gpt2":
            x = x + self.pos(jnp.arange(tokens.shape[-1]))
        for block in self.blocks:
            x = block(x)
        x = self.final_norm(x)
        out = self.embed.attend(x) if self.cfg.tie_embeddings else self.lm_head(x)
        return out.astype(jnp.float32)


class GPT2(Decoder):
    """GPT-2: learned positions, LayerNorm, GELU MLP, biases everywhere."""

    arch = "gpt2"


class Llama(Decoder):
    """Llama: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, no biases."""

    arch = "llama"


def _block_variables(block: Block) -> dict[str, Any]:
    attn, mlp = block.attn, block.mlp
    out = {
        "attn_norm": block.attn_norm.variables(),
        "mlp_norm": block.mlp_norm.variables(),
        "wq": attn.q.kernel,
        "wk": attn.k.kernel,
        "wv": attn.v.kernel,
        "wo": attn.o.kernel,
    }
    if block.attn.cfg.arch == "gpt2":
        out |= {"bq": attn.q.bias, "bk": attn.k.bias, "bv": attn.v.bias, "bo": attn.o.bias}
        out |= {"w_fc": mlp.fc.kernel, "b_fc": mlp.fc.bias}
        return out | {"w_proj": mlp.proj.kernel, "b_proj": mlp.proj.bias}
    return out | {"w_gate": mlp.gate.kernel, "w_up": mlp.up.kernel, "w_down": mlp.down.kernel}


def _variables(module: Decoder) -> dict[str, Any]:
    """The module's parameters in the :mod:`models.params` layout, except that ``"layers"`` is
    a list of per-block dicts."""
    cfg = module.cfg
    out: dict[str, Any] = {
        "embed": module.embed.embedding,
        "layers": [_block_variables(b) for b in module.blocks],
        "final_norm": module.final_norm.variables(),
    }
    if cfg.arch == "gpt2":
        out["pos"] = module.pos.embedding
    if not cfg.tie_embeddings:
        out["lm_head"] = module.lm_head.kernel
    return out


def _is_variable(node: Any) -> bool:
    return isinstance(node, nnx.Variable)


def _values(tree: Any) -> Any:
    return jax.tree.map(lambda var: var[...], tree, is_leaf=_is_variable)


def to_params(module: Decoder) -> Params:
    """The module's weights in the stacked layout of :mod:`models.params`."""
    variables = _variables(module)
    blocks = [_values(b) for b in variables.pop("layers")]
    return _values(variables) | {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}


def _assign(var: nnx.Variable, value: jax.Array, path: str) -> None:
    want = var.get_value().shape
    if tuple(value.shape) != tuple(want):
        raise ValueError(f"parameter {path}: expected shape {want}, got {value.shape}")
    var.set_value(jnp.asarray(value))


def _assign_tree(variables: Any, values: Any) -> None:
    flat = jax.tree_util.tree_flatten_with_path(variables, is_leaf=_is_variable)[0]
    given = jax.tree_util.tree_structure(values)
    if given != jax.tree_util.tree_structure(variables, is_leaf=_is_variable):
        raise ValueError(f"parameter tree mismatch: got {given}")
    for (path, var), value in zip(flat, jax.tree_util.tree_leaves(values), strict=True):
        _assign(var, value, jax.tree_util.keystr(path))


def from_params(cfg: DecoderConfig, params: Params) -> Decoder:
    """The :class:`GPT2` or :class:`Llama` module holding ``params`` (inverse of
    :func:`to_params`)."""
    cls = GPT2 if cfg.arch == "gpt2" else Llama
    module = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
    variables = _variables(module)
    for l, block in enumerate(variables.pop("layers")):
        _assign_tree(block, layer(params, l))
    _assign_tree(variables, {k: v for k, v in params.items() if k != "layers"})
    return module


def from_flax(module: Decoder) -> Any:
    """The tempo_jax decoder (:class:`models.tempo.TempoModel`) holding ``module``'s
    parameters: its logits equal the module's forward on the same tokens."""
    from .tempo import TempoModel  # the tempo_jax program sits above the flax modules

    if not isinstance(module, Decoder):
        raise TypeError(f"from_flax needs a GPT2 or Llama module, got {type(module).__name__}")
    return TempoModel(module.cfg, to_params(module))
