"""The GPT-2 / Llama decode program written with tempo_jax recurrent tensors.

The prompt is fed as one block of positions (parallel prefill), then one new position per
step, in one program over dims ``s`` (prompt position), ``t`` (decode step), ``u`` (any
position: the KV cache) and ``l`` (layer). Per layer ``l``::

    prompt, s:  x[s, 0] = embed(prompt[:, s], s);  q, k_p, v_p = qkv(norm(x[s, l]), w[l], s)
                a[s, l] = attend(q, k_p[0:s+1, l], v_p[0:s+1, l])
                x[s, l+1] = x + out(a) + mlp(...)
    first     = sample(head(x[P-1, L]), fold_in(key, P))              the token at position P
    cache, u:   k[u, l] = k_p[u, l] for u < P, else k_d[u - P, l]      (v likewise)
    steps, t:   tok[0] = first, tok[t+1] = nxt[t];  x[t, 0] = embed(tok[t], P + t)
                q, k_d, v_d = qkv(norm(x[t, l]), w[l], P + t)
                a[t, l] = attend(q, k[0:P+t+1, l], v[0:P+t+1, l])
                nxt[t] = sample(head(x[t, L]), fold_in(key, P + t + 1))

(with a window ``w``, the ranges start at ``max(0, pos - w + 1)``). Nothing carries along
``s``, so the compiler computes the prompt's positions together, its attention in
block-causal query blocks; the steps carry the sampled token, so ``t`` is a loop, with the
layers inside it and the cache in tiles (static tiling). With an end token, ``done[t]`` marks
rows that emitted it and ``p.stop_when(all(done[t]))`` ends the step loop once every row has.

Ragged prompts come left-padded with a ``mask``; then positions are per row and padding is
masked through the attention range::

    pos[u], valid[u] = real tokens of each row before u, whether the token at u is real   [B]
    x[s, 0] = embed(prompt[:, s], pos[s]);  a[s, l] = attend(..., valid[0:s+1])     (t alike)
    sample(logits[b], fold_in(key[b], pos[u][b] + 1)) per row b
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

import tempo_jax as tj

from . import layers
from .config import DecoderConfig
from .params import Params, param_shapes
from .sampling import sample, step_key


def bounds(cfg: DecoderConfig, prompt_len: int, steps: int) -> dict[str, int]:
    """The bounds the program of ``prompt_len`` and ``steps`` runs with (``T``, ``U`` only
    when there are decode steps: ``steps > 1``)."""
    sizes = {"S": prompt_len, "L": cfg.layers}
    if steps > 1:
        sizes |= {"T": steps - 1, "U": prompt_len + steps - 1}
    else:
        sizes |= {"U": prompt_len}
    return sizes


def attend_tiles(
    cfg: DecoderConfig,
    q: jax.Array,
    ks: jax.Array,
    vs: jax.Array,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Attention of ``q`` ``[B, H, hd]`` over rows ``ks`` / ``vs`` ``[S, B, KV, hd]`` (rows
    first: the axis the compiler tiles), as ``[B, H, hd]``: a softmax over the rows and a
    weighted sum, a map-then-reduce the compiler evaluates tile by tile (online softmax).
    ``valid`` ``[S, B]`` (optional): rows where it is False get no weight (padding).

    The rows move next to ``hd`` first (``[B, KV, S, hd]``, the layout the compiler stores a
    tiled buffer in), so both contractions read each tile as stored.
    """
    ks, vs = jnp.moveaxis(ks, 0, 2), jnp.moveaxis(vs, 0, 2)
    b = q.shape[0]
    grouped = q.reshape(b, cfg.kv_heads, cfg.groups, cfg.head_dim)
    s = jnp.einsum("bkgd,bksd->bkgs", grouped, ks, preferred_element_type=jnp.float32)
    s = s * (1.0 / math.sqrt(cfg.head_dim))
    if valid is not None:  # finite: a tile of padding only must not give inf - inf
        s = jnp.where(jnp.swapaxes(valid, 0, 1)[:, None, None, :], s, layers.MASKED)
    probs = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("bkgs,bksd->bkgd", probs.astype(vs.dtype), vs)
    return o.reshape(b, cfg.heads, cfg.head_dim)


def build_program(
    cfg: DecoderConfig,
    batch: int,
    prompt_len: int,
    steps: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    end_token: int | tuple[int, ...] | None = None,
    ragged: bool = False,
    logits: bool = True,
    dtype: Any = jnp.float32,
) -> tj.Program:
    """The decode program for prompts ``[batch, prompt_len]`` and ``steps`` new tokens; it runs
    with :func:`bounds`.

    Inputs: ``prompt`` int32 ``[B, P]``, ``key`` (raw uint32 ``[2]`` key data) and the
    parameters, one input per leaf named by its path (``layers/wq``: stacked over ``l``).
    Outputs: ``first`` ``[B]`` (the token at position ``P``) and, over ``t``, ``tokens`` (the
    token at position ``P + t + 1``); unless ``logits=False``, ``prompt_logits`` over ``s``
    and ``logits`` over ``t`` (the logits of the token after the one fed); with end tokens
    (one id or several; a done row emits the first), ``first_done`` ``[B]`` and ``done`` over
    ``t`` (done after the token at ``P + t + 1``). With ``steps == 1`` there is no ``t``.

    ``ragged=True`` takes left-padded prompts: an input ``mask`` bool ``[B, P]`` (False:
    padding) and one key per row (``key`` ``[B, 2]``). Each row counts positions over its real
    tokens only, its attention gives padded rows no weight, and it draws its token at position
    ``p`` with ``fold_in(key[b], p)``: a row decodes as it would alone.
    """
    if steps < 1:
        raise ValueError(f"need steps >= 1, got {steps}")
    shapes = param_shapes(cfg)
    ends = (end_token,) if isinstance(end_token, int) else tuple(end_token or ())
    with tj.Program("decode") as p:
        if steps > 1:
            s, t, u, l = p.dims("s t u l")
        else:  # the first new token is the last: no steps
            s, u, l = p.dims("s u l")
        prompt = tj.input("prompt", (batch, prompt_len), jnp.int32)
        key = tj.input("key", (batch, 2) if ragged else (2,), jnp.uint32)
        top = {
            k: _inputs(k, v, dtype, ()) for k, v in shapes.items() if k != "layers"
        }  # embedding, positions, final norm, head
        stack = _Stack(cfg, l, _inputs("layers", shapes["layers"], dtype, (l,), drop=1), top, dtype)
        if ragged:
            mask = tj.input("mask", (batch, prompt_len), jnp.bool_)
            place = functools.partial(_position, prompt_len=prompt_len)
            stack.pos, stack.valid = tj.lift(place, name="position")(mask, u)
        choose = tj.lift(
            functools.partial(_choose, temperature=temperature, top_p=top_p, top_k=top_k),
            name="sample",
        )
        head = tj.lift(functools.partial(layers.logits, cfg), name="logits")
        mark = tj.lift(functools.partial(_mark, ends=ends), name="end")

        # the prompt: all positions at once (nothing carries along s)
        token = tj.lift(_column, name="prompt_token")(prompt, s)
        y_p, k_p, v_p = stack(token, s, lambda k, v: (k, v))
        last = s.bound - 1
        if logits:
            out_p = head(top, y_p[s, -1])
            p.output("prompt_logits", out_p)
            first = choose(out_p[last], key, stack.position(last))
        else:
            first = choose(head(top, y_p[last, -1]), key, stack.position(last))
        if ends:
            first, first_done = mark(first, tj.zeros((batch,), jnp.bool_))
            p.output("first_done", first_done)
        p.output("first", first)
        if steps == 1:
            return p

        # the new tokens: one position per step, after the prompt's keys and values
        def cache(k: Any, v: Any) -> tuple[Any, Any]:
            return _after(k_p, k, u, l, s.bound), _after(v_p, v, u, l, s.bound)

        tok = tj.placeholder((batch,), jnp.int32, domain=(t,))
        tok[0] = first
        y, _, _ = stack(tok, s.bound + t, cache)
        out = head(top, y[t, -1])
        nxt = choose(out, key, stack.position(s.bound + t))
        if ends:
            before = tj.placeholder((batch,), jnp.bool_, domain=(t,))  # done before P + t + 1
            nxt, done = mark(nxt, before)
            before[0] = first_done
            before[t + 1] = done[t]
            p.output("done", done)
            p.stop_when(tj.all(done))
        tok[t + 1] = nxt[t]
        p.output("tokens", nxt)
        if logits:
            p.output("logits", out)
    return p


class _Stack:
    """The layers over one dim of positions (the prompt's ``s`` or the steps' ``t``)."""

    def __init__(self, cfg: DecoderConfig, l: Any, lw: Any, top: Any, dtype: Any) -> None:
        self.cfg, self.l, self.lw, self.top, self.dtype = cfg, l, lw, top, dtype
        self.pos: Any = None  # ragged prompts: each row's position at u, and its validity
        self.valid: Any = None

    def position(self, at: Any) -> Any:
        """The position (per row when ragged) of the token fed at ``at``."""
        return at if self.pos is None else self.pos[at]

    def __call__(self, tok: Any, at: Any, cache: Any) -> tuple[Any, Any, Any]:
        """The last layer's output, and the keys and values, of the tokens ``tok`` fed at
        ``at`` (an expression of their dim); ``cache(k, v)`` gives the tensors over ``u`` the
        attention reads (``k[0:at+1]``, or its window)."""
        cfg, l, lw = self.cfg, self.l, self.lw
        dim = tok.domain[0]
        pos = self.position(at)
        x = tj.placeholder((tok.shape[0], cfg.dim), self.dtype, domain=(dim, l))
        x[dim, 0] = tj.lift(functools.partial(layers.embed, cfg), name="embed")(self.top, tok, pos)
        q, k, v = tj.lift(functools.partial(_qkv, cfg), name="qkv")(x, lw, pos)
        ks, vs = cache(k, v)
        start = 0 if cfg.window is None else tj.max(0, at - cfg.window + 1)
        rows = slice(start, at + 1)
        attend = tj.lift(functools.partial(attend_tiles, cfg), name="attend")
        extra = () if self.valid is None else (self.valid[rows],)
        a = attend(q, ks[rows, l], vs[rows, l], *extra)
        y = tj.lift(functools.partial(_finish, cfg), name="block")(x, a, lw)
        x[dim, l + 1] = y[dim, l]
        return y, k, v


def _after(prefix: Any, rest: Any, u: Any, l: Any, start: Any) -> Any:
    """A tensor over ``(u, l)``: ``prefix`` at ``u < start``, then ``rest`` (over the steps)."""
    both = tj.placeholder(prefix.shape, prefix.dtype, domain=(u, l))
    both[u < start] = prefix[u, l]
    both[True] = rest[u - start, l]
    return both


def _inputs(name: str, shapes: Any, dtype: Any, domain: tuple, drop: int = 0) -> Any:
    """One program input per leaf of ``shapes``, named by its path (``layers/wq``)."""
    if isinstance(shapes, dict):
        return {k: _inputs(f"{name}/{k}", v, dtype, domain, drop) for k, v in shapes.items()}
    return tj.input(name, shapes[drop:], dtype, domain=domain)


def _column(prompt: jax.Array, s: jax.Array) -> jax.Array:
    return jax.lax.dynamic_index_in_dim(prompt, s, axis=1, keepdims=False)


def _qkv(cfg: DecoderConfig, x: jax.Array, lp: Params, pos: jax.Array) -> tuple[jax.Array, ...]:
    return layers.qkv(cfg, lp, layers.norm(cfg, lp["attn_norm"], x), pos)


def _finish(cfg: DecoderConfig, x: jax.Array, a: jax.Array, lp: Params) -> jax.Array:
    x = x + layers.attn_out(cfg, lp, a)
    return x + layers.mlp(cfg, lp, layers.norm(cfg, lp["mlp_norm"], x))


def _position(mask: jax.Array, u: jax.Array, *, prompt_len: int) -> tuple[jax.Array, jax.Array]:
    """Row ``b``'s position of the token at ``u`` ``[B]`` (its real tokens before ``u``; 0 on
    padding) and whether that token is real ``[B]``, for prompts left-padded per ``mask``."""
    col = jnp.minimum(u, prompt_len - 1)
    real = jnp.sum(mask & (jnp.arange(prompt_len) <= col), axis=1, dtype=jnp.int32)
    pos = real - 1 + jnp.maximum(u - (prompt_len - 1), 0)
    valid = jnp.where(u < prompt_len, mask[:, col], True)
    return jnp.maximum(pos, 0), valid


def _choose(
    logits: jax.Array,
    key: jax.Array,
    pos: jax.Array,
    *,
    temperature: float,
    top_p: float,
    top_k: int | None,
) -> jax.Array:
    """The token after the one at position ``pos``, drawn with the key of its position
    (``pos + 1``; per row for ragged prompts, each row with its own key)."""
    draw = functools.partial(sample, temperature=temperature, top_p=top_p, top_k=top_k)
    if temperature == 0:
        return draw(logits, key)
    if key.ndim == 2:  # one key per row
        keys = jax.vmap(step_key)(jax.random.wrap_key_data(key), pos + 1)
        return jax.vmap(draw)(logits, keys)
    return draw(logits, step_key(jax.random.wrap_key_data(key), pos + 1))


def _mark(
    token: jax.Array, done: jax.Array, *, ends: tuple[int, ...]
) -> tuple[jax.Array, jax.Array]:
    """A done row keeps emitting the first end token; a row is done once it emitted one of
    ``ends``."""
    token = jnp.where(done, ends[0], token)
    return token, done | jnp.isin(token, jnp.asarray(ends))
