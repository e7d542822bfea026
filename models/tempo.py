"""The GPT-2 / Llama decoders written with tempo_jax recurrent tensors.

One program over dims ``(t, l)``: position and layer. Per position ``t`` and layer ``l``::

    x[t, 0]   = embed(tok[t], t)                 tok[0] = prompt[:, 0], tok[t] = nxt[t - 1]
    q, k, v   = qkv(norm(x[t, l]), w[l], t)
    a[t, l]   = attend(q, k[0:t+1, l], v[0:t+1, l])        (window: k[max(0, t-w+1):t+1, l])
    y[t, l]   = x + out(a) + mlp(norm(x + out(a)))           x[t, l+1] = y[t, l]
    logits[t] = head(y[t, L-1])
    nxt[t]    = prompt[:, t+1] inside the prompt, else sample(logits[t], fold_in(key, t+1))

Nothing here says how to store the keys or loop: the compiler keeps ``k`` and ``v`` in one
buffer per layer, visits only the tiles of ``k[0:t+1, l]`` holding rows (static tiling), and
runs layers as a loop inside the position loop. With an end token, ``done[t]`` marks rows that
emitted it and ``p.stop_when(all(done[t]))`` ends the position loop once every row has.

Example::

    decoder = TempoDecoder(cfg, batch=4, prompt_len=8, steps=32)
    out = decoder.generate(params, prompt, key=jax.random.PRNGKey(0), temperature=0.8)

``out`` is the dict every decoder of :mod:`models.baselines` returns (``tokens``, ``length``,
``logits``, ``steps_run``), with the same sampling keys, so they can be compared token by token.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

import tempo_jax as tj

from . import layers
from .baselines.decode_loop import Sampling, prepare
from .config import DecoderConfig
from .params import Params, param_shapes
from .sampling import sample, step_key

UNROLL_LAYERS = 32  # up to this many layers, the layer loop is unrolled (static weight slices)


def attend_tiles(cfg: DecoderConfig, q: jax.Array, ks: jax.Array, vs: jax.Array) -> jax.Array:
    """Attention of ``q`` ``[B, H, hd]`` over rows ``ks`` / ``vs`` ``[S, B, KV, hd]`` (rows
    first: the axis the compiler tiles), as ``[B, H, hd]``: a softmax over the rows and a
    weighted sum, a map-then-reduce the compiler evaluates tile by tile (online softmax).

    The rows move next to ``hd`` first (``[B, KV, S, hd]``, the layout the compiler stores a
    tiled buffer in), so both contractions read each tile as stored.
    """
    ks, vs = jnp.moveaxis(ks, 0, 2), jnp.moveaxis(vs, 0, 2)
    b = q.shape[0]
    grouped = q.reshape(b, cfg.kv_heads, cfg.groups, cfg.head_dim)
    s = jnp.einsum("bkgd,bksd->bkgs", grouped, ks, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(s * (1.0 / math.sqrt(cfg.head_dim)), axis=-1)
    o = jnp.einsum("bkgs,bksd->bkgd", probs.astype(vs.dtype), vs)
    return o.reshape(b, cfg.heads, cfg.head_dim)


def build_program(
    cfg: DecoderConfig,
    batch: int,
    prompt_len: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    end_token: int | None = None,
    dtype: Any = jnp.float32,
) -> tj.Program:
    """The decode program for prompts ``[batch, prompt_len]``; the number of positions fed is
    the bound ``T`` of dim ``t`` (``P + steps - 1`` for ``steps`` new tokens).

    Inputs: ``prompt`` int32 ``[B, P]``, ``key`` (raw uint32 ``[2]`` key data) and the
    parameters, one input per leaf named by its path (``layers/wq``: stacked over ``l``).
    Outputs over ``t``: ``tokens`` (the token at position ``t + 1``), ``logits``, and
    ``done`` with an end token.
    """
    shapes = param_shapes(cfg)
    with tj.Program("decode") as p:
        t, l = p.dims("t l")
        prompt = tj.input("prompt", (batch, prompt_len), jnp.int32)
        key = tj.input("key", (2,), jnp.uint32)
        top = {
            k: _inputs(k, v, dtype, ()) for k, v in shapes.items() if k != "layers"
        }  # embedding, positions, final norm, head
        lw = _inputs("layers", shapes["layers"], dtype, (l,), drop=1)

        tok = tj.placeholder((batch,), jnp.int32, domain=(t,))
        tok[0] = tj.lift(lambda pr: pr[:, 0], name="first_token")(prompt)

        x = tj.placeholder((batch, cfg.dim), dtype, domain=(t, l))
        x[t, 0] = tj.lift(functools.partial(_embed, cfg), name="embed")(top, tok, t)
        q, k, v = tj.lift(functools.partial(_qkv, cfg), name="qkv")(x, lw, t)
        rows = (
            slice(0, t + 1) if cfg.window is None else slice(tj.max(0, t - cfg.window + 1), t + 1)
        )
        a = tj.lift(functools.partial(attend_tiles, cfg), name="attend")(q, k[rows, l], v[rows, l])
        y = tj.lift(functools.partial(_finish, cfg), name="block")(x, a, lw)
        x[t, l + 1] = y[t, l]

        logits = tj.lift(functools.partial(layers.logits, cfg), name="logits")(top, y[t, -1])
        choose = functools.partial(
            _choose, prompt_len=prompt_len, temperature=temperature, top_p=top_p
        )
        nxt = tj.lift(choose, name="sample")(logits, prompt, key, t)
        if end_token is not None:
            before = tj.placeholder((batch,), jnp.bool_, domain=(t,))  # done before t + 1
            mark = functools.partial(_mark, end_token=end_token, prompt_len=prompt_len)
            nxt, done = tj.lift(mark, name="end")(nxt, before, t)
            before[0] = tj.zeros((batch,), jnp.bool_)
            before[t + 1] = done[t]
            p.output("done", done)
            p.stop_when(tj.all(done))
        tok[t + 1] = nxt[t]
        p.output("tokens", nxt)
        p.output("logits", logits)
    return p


def _inputs(name: str, shapes: Any, dtype: Any, domain: tuple, drop: int = 0) -> Any:
    """One program input per leaf of ``shapes``, named by its path (``layers/wq``)."""
    if isinstance(shapes, dict):
        return {k: _inputs(f"{name}/{k}", v, dtype, domain, drop) for k, v in shapes.items()}
    return tj.input(name, shapes[drop:], dtype, domain=domain)


def _embed(cfg: DecoderConfig, top: Params, tok: jax.Array, t: jax.Array) -> jax.Array:
    return layers.embed(cfg, top, tok, t)


def _qkv(cfg: DecoderConfig, x: jax.Array, lp: Params, t: jax.Array) -> tuple[jax.Array, ...]:
    return layers.qkv(cfg, lp, layers.norm(cfg, lp["attn_norm"], x), t)


def _finish(cfg: DecoderConfig, x: jax.Array, a: jax.Array, lp: Params) -> jax.Array:
    x = x + layers.attn_out(cfg, lp, a)
    return x + layers.mlp(cfg, lp, layers.norm(cfg, lp["mlp_norm"], x))


def _choose(
    logits: jax.Array,
    prompt: jax.Array,
    key: jax.Array,
    t: jax.Array,
    *,
    prompt_len: int,
    temperature: float,
    top_p: float,
) -> jax.Array:
    """The token at position ``t + 1``: the prompt's inside it, else a sample."""
    nxt = t + 1
    forced = jax.lax.dynamic_index_in_dim(
        prompt, jnp.minimum(nxt, prompt_len - 1), axis=1, keepdims=False
    )
    if temperature == 0:
        drawn = sample(logits, key, 0.0, top_p)
    else:
        drawn = sample(logits, step_key(jax.random.wrap_key_data(key), nxt), temperature, top_p)
    return jnp.where(nxt < prompt_len, forced, drawn)


def _mark(
    token: jax.Array, done: jax.Array, t: jax.Array, *, end_token: int, prompt_len: int
) -> tuple[jax.Array, jax.Array]:
    """A done row keeps emitting the end token; a row is done once it emitted it after the
    prompt."""
    token = jnp.where(done, end_token, token)
    return token, done | ((token == end_token) & (t + 1 >= prompt_len))


@functools.lru_cache(maxsize=16)
def _compiled(
    cfg: DecoderConfig,
    batch: int,
    prompt_len: int,
    positions: int,
    temperature: float,
    top_p: float,
    end_token: int | None,
    block: int,
    dtype: str,
) -> Any:
    program = build_program(
        cfg,
        batch,
        prompt_len,
        temperature=temperature,
        top_p=top_p,
        end_token=end_token,
        dtype=jnp.dtype(dtype),
    )
    tiling = functools.partial(tj.tile_dynamic_ranges, block=block)
    pipeline = tj.Pipeline().replacing("tile_dynamic_ranges", tiling)
    unroll = ("l",) if cfg.layers <= UNROLL_LAYERS else ()
    return program.compile({"T": positions, "L": cfg.layers}, pipeline=pipeline, unroll=unroll)


class TempoDecoder:
    """The tempo_jax decoder for one shape of work: ``batch`` prompts of ``prompt_len`` tokens
    followed by ``steps`` new tokens, attending in tiles of ``block`` cache rows."""

    def __init__(
        self,
        cfg: DecoderConfig,
        batch: int,
        prompt_len: int,
        steps: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        end_token: int | None = None,
        block: int = 64,
        dtype: Any = jnp.float32,
    ) -> None:
        if prompt_len < 1 or steps < 1:
            raise ValueError(f"need prompt_len >= 1 and steps >= 1, got {prompt_len}, {steps}")
        if prompt_len + steps > cfg.max_len:
            raise ValueError(f"P + steps = {prompt_len + steps} exceeds max_len {cfg.max_len}")
        if temperature < 0 or top_p <= 0:
            raise ValueError(f"need temperature >= 0 and top_p > 0, got {temperature}, {top_p}")
        self.cfg, self.batch, self.prompt_len, self.steps = cfg, batch, prompt_len, steps
        self.end_token = end_token
        self.compiled = _compiled(
            cfg,
            batch,
            prompt_len,
            prompt_len + steps - 1,
            float(temperature),
            float(top_p),
            end_token,
            block,
            jnp.dtype(dtype).name,
        )

    def inputs(self, params: Params, prompt: Any, key: jax.Array | None = None) -> dict:
        """The compiled program's inputs for ``params``, ``prompt`` and ``key``."""
        key = jax.random.PRNGKey(0) if key is None else key
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        flat: dict[str, Any] = {"prompt": jnp.asarray(prompt, jnp.int32), "key": key}
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            flat["/".join(str(getattr(k, "key", k)) for k in path)] = leaf
        return flat

    def generate(self, params: Params, prompt: Any, key: jax.Array | None = None) -> dict:
        """Decode; the result of :func:`models.baselines.scan.generate` for the same
        arguments."""
        out = self.compiled(**self.inputs(params, prompt, key))
        return self.result(out, jnp.asarray(prompt, jnp.int32))

    def result(self, out: dict, prompt: jax.Array) -> dict[str, jax.Array]:
        """The program's outputs as ``generate``'s dict."""
        total = self.prompt_len + self.steps
        tokens = jnp.concatenate([prompt[:, :1], jnp.swapaxes(out["tokens"], 0, 1)], axis=1)
        logits = jnp.swapaxes(out["logits"], 0, 1)
        if self.end_token is None:
            run = jnp.int32(total - 1)
            length = jnp.full((self.batch,), total, jnp.int32)
        else:
            run = out["lengths"]["T"]
            fed = jnp.arange(total - 1) < run
            tokens = tokens.at[:, 1:].set(jnp.where(fed, tokens[:, 1:], self.end_token))
            done = jnp.swapaxes(out["done"], 0, 1) & fed  # [B, T - 1]: done after t + 1
            length = jnp.where(done.any(axis=1), jnp.argmax(done, axis=1) + 2, total)
        return {"tokens": tokens, "length": length, "logits": logits, "steps_run": run}


class TempoModel:
    """A decoder config and its parameters, decoding with tempo_jax (one compiled program per
    shape of work, cached): ``TempoModel(cfg, params).generate(prompt, steps)``."""

    def __init__(self, cfg: DecoderConfig, params: Params) -> None:
        self.cfg = cfg
        self.params = params

    def generate(
        self,
        prompt: Any,
        steps: int,
        *,
        key: jax.Array | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        end_token: int | None = None,
        block: int = 64,
    ) -> dict[str, jax.Array]:
        """Decode ``steps`` tokens after ``prompt`` ``[B, P]``; the dict of
        :mod:`models.baselines` (``tokens``, ``length``, ``logits``, ``steps_run``)."""
        sampling = Sampling(temperature, top_p, end_token)
        prompt, key = prepare(self.cfg, prompt, steps, key, sampling)  # the baselines' checks
        decoder = TempoDecoder(
            self.cfg,
            prompt.shape[0],
            prompt.shape[1],
            steps,
            temperature=temperature,
            top_p=top_p,
            end_token=end_token,
            block=block,
            dtype=jax.tree_util.tree_leaves(self.params)[0].dtype,
        )
        return decoder.generate(self.params, prompt, key)
