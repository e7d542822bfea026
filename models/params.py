"""The one parameter layout shared by the flax modules, the JAX baselines and tempo_jax.

A plain dict pytree; every per-layer weight is stacked on a leading layer axis ``L``::

    {"embed": [V, D], "pos": [max_len, D] (gpt2),
     "layers": {"attn_norm": {"scale": [L, D], "bias": [L, D] (gpt2)},
                "wq": [L, D, H*hd], "wk": [L, D, KV*hd], "wv": [L, D, KV*hd], "wo": [L, H*hd, D],
                "bq", "bk", "bv", "bo" (gpt2),
                "mlp_norm": {...},
                gpt2: "w_fc" [L, D, F], "b_fc" [L, F], "w_proj" [L, F, D], "b_proj" [L, D]
                llama: "w_gate" [L, D, F], "w_up" [L, D, F], "w_down" [L, F, D]},
     "final_norm": {"scale": [D], "bias": [D] (gpt2)},
     "lm_head": [D, V] (untied only)}

Matrices are ``[in, out]``: a projection is ``x @ w``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from .config import DecoderConfig

Params = dict[str, Any]


def param_shapes(cfg: DecoderConfig) -> Params:
    """The shape of every leaf of ``cfg``'s parameters (same tree as :func:`init_params`)."""
    L, D, F = cfg.layers, cfg.dim, cfg.hidden
    q, kv = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    gpt2 = cfg.arch == "gpt2"
    layers: Params = {
        "attn_norm": _norm_shapes(gpt2, (L, D)),
        "wq": (L, D, q),
        "wk": (L, D, kv),
        "wv": (L, D, kv),
        "wo": (L, q, D),
        "mlp_norm": _norm_shapes(gpt2, (L, D)),
    }
    if gpt2:
        layers |= {"bq": (L, q), "bk": (L, kv), "bv": (L, kv), "bo": (L, D)}
        layers |= {"w_fc": (L, D, F), "b_fc": (L, F), "w_proj": (L, F, D), "b_proj": (L, D)}
    else:
        layers |= {"w_gate": (L, D, F), "w_up": (L, D, F), "w_down": (L, F, D)}
    shapes: Params = {"embed": (cfg.vocab, D), "layers": layers}
    if gpt2:
        shapes["pos"] = (cfg.max_len, D)
    shapes["final_norm"] = _norm_shapes(gpt2, (D,))
    if not cfg.tie_embeddings:
        shapes["lm_head"] = (D, cfg.vocab)
    return shapes


def _norm_shapes(gpt2: bool, shape: tuple[int, ...]) -> Params:
    return {"scale": shape, "bias": shape} if gpt2 else {"scale": shape}


def _is_shape(node: Any) -> bool:
    return isinstance(node, tuple)


def _init_leaf(path: tuple[Any, ...], noise: jax.Array) -> jax.Array:
    return 1.0 + 0.1 * noise if path[-1].key == "scale" else 0.02 * noise


@functools.partial(jax.jit, static_argnames=("cfg", "dtype"))
def init_params(cfg: DecoderConfig, key: jax.Array, dtype: Any = jnp.float32) -> Params:
    """Random parameters (one jitted call, one normal draw cut into the leaves): weights and
    biases ~ N(0, 0.02), norm scales ~ 1 + N(0, 0.1) (randomised so tests see every weight)."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(param_shapes(cfg), is_leaf=_is_shape)
    sizes = [math.prod(shape) for _, shape in paths]
    noise = jax.random.normal(key, (sum(sizes),))
    leaves, start = [], 0
    for (path, shape), size in zip(paths, sizes, strict=True):
        chunk = noise[start : start + size].reshape(shape)
        leaves.append(_init_leaf(path, chunk).astype(dtype))
        start += size
    return jax.tree_util.tree_unflatten(treedef, leaves)


def layer(params: Params, l: int | jax.Array) -> Params:
    """Layer ``l``'s weights (the ``L`` axis sliced away), e.g. ``layer(params, 0)["wq"]``."""
    return jax.tree_util.tree_map(lambda a: a[l], params["layers"])
