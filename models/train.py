"""A decoder trained as one program: teacher forcing over ``(i, t)``, ``tj.grad`` and an optax
step over the iteration dim ``i``.

Per iteration ``i`` (a batch of token rows ``batch[i]`` ``[B, T+1]``) and position ``t``::

    x[i, t]      = embed(batch[i][:, t], t)
    per layer j: q, k, v = qkv(norm(x[i, t]), W_j[i], t)
                 a[i, t] = attend(q, k[i, 0:t+1], v[i, 0:t+1])      (window: max(0, t-w+1):t+1)
                 x[i, t] = x + out(a) + mlp(norm(x + out(a)))
    nll[i, t]    = cross_entropy(logits(x[i, t]), batch[i][:, t+1])        (mean over rows)
    loss[i]      = nll[i, 0:T].mean()
    W[i + 1]     = optax step of W[i] with tj.grad(loss[i], W)[i]

The compiler runs the positions of an iteration in query blocks (flash attention, forward and
backward, derived from the ranges: :mod:`tempo_jax._passes.range_grad`), the layers as written
and the iterations as one loop: one jitted program for the whole run. The parameters are the
layout of :mod:`models.params` with the layers as a list (one dict per layer, so a layer's
gradient is its own weights'); :func:`stacked` converts back.

Example::

    program = build_training_program(cfg, params, optax.adam(1e-3), batch=8, seq_len=32)
    out = program.compile({"I": steps, "T": 32})(tokens=batches)   # batches [I, B, T+1]
    out["loss"], stacked(out["params"])                            # [I], the trained weights
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

import tempo_jax as tj

from . import layers
from .config import DecoderConfig
from .params import Params, layer
from .tempo import attend_tiles


def per_layer(cfg: DecoderConfig, params: Params) -> Params:
    """``params`` with ``layers`` a list of one dict per layer."""
    return {**params, "layers": [layer(params, j) for j in range(cfg.layers)]}


def stacked(params: Params) -> Params:
    """The inverse of :func:`per_layer`: every per-layer weight stacked on a leading axis."""
    return {**params, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *params["layers"])}


def _embed(cfg: DecoderConfig, top: Params, rows: jax.Array, t: jax.Array) -> jax.Array:
    return layers.embed(cfg, top, rows[:, t], t)


def _qkv(cfg: DecoderConfig, x: jax.Array, lp: Params, t: jax.Array) -> tuple[jax.Array, ...]:
    return layers.qkv(cfg, lp, layers.norm(cfg, lp["attn_norm"], x), t)


def _block(cfg: DecoderConfig, x: jax.Array, a: jax.Array, lp: Params) -> jax.Array:
    x = x + layers.attn_out(cfg, lp, a)
    return x + layers.mlp(cfg, lp, layers.norm(cfg, lp["mlp_norm"], x))


def _nll(cfg: DecoderConfig, top: Params, x: jax.Array, rows: jax.Array, t: jax.Array) -> Any:
    """The mean over rows of the negative log-likelihood of the token at ``t + 1``."""
    logp = jax.nn.log_softmax(layers.logits(cfg, top, x), axis=-1)
    target = rows[:, t + 1]
    return -jnp.take_along_axis(logp, target[:, None], axis=-1).mean()


def build_training_program(
    cfg: DecoderConfig,
    params: Params,
    tx: optax.GradientTransformation,
    *,
    batch: int,
    seq_len: int,
) -> tj.Program:
    """The training program: input ``tokens`` ``[I, batch, seq_len + 1]`` (one batch per
    iteration, dim ``i`` of bound ``I``; bound ``T`` is ``seq_len``); outputs ``loss`` ``[I]``
    (before each step) and ``params``, the trained parameters in :func:`per_layer`'s
    layout."""
    if seq_len > cfg.max_len and cfg.arch == "gpt2":
        raise ValueError(f"seq_len {seq_len} exceeds the model's max_len {cfg.max_len}")
    start = per_layer(cfg, params)
    with tj.Program("train") as p:
        i, t = p.dims("i t")
        rows = tj.input("tokens", (batch, seq_len + 1), jnp.int32, domain=(i,))
        w = tj.param(start, domain=(i,))
        top = {k: v for k, v in w.items() if k != "layers"}
        x = tj.lift(functools.partial(_embed, cfg), name="embed")(top, rows, t)
        span = (
            slice(0, t + 1) if cfg.window is None else slice(tj.max(0, t - cfg.window + 1), t + 1)
        )
        for j, lp in enumerate(w["layers"]):
            q, k, v = tj.lift(functools.partial(_qkv, cfg), name=f"qkv{j}")(x, lp, t)
            attend = tj.lift(functools.partial(attend_tiles, cfg), name=f"attend{j}")
            a = attend(q, k[i, span], v[i, span])
            x = tj.lift(functools.partial(_block, cfg), name=f"block{j}")(x, a, lp)
        nll = tj.lift(functools.partial(_nll, cfg), name="nll")(top, x, rows, t)
        loss = nll[i, 0:seq_len].mean()
        new = tj.optim.step(tx, w, tj.grad(loss, w), over=i)
        p.output("loss", loss[0 : i.bound])
        last = jax.tree.map(
            lambda x: x[i.bound - 1], new, is_leaf=lambda x: isinstance(x, tj.RecurrentTensor)
        )
        p.output("params", last)
    return p
