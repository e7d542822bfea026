"""Gradients through growing ranges in tiles: a stats op per query, a rows op per key.

``o[b, t] = f(q[b, t], k[b, rows(t)], v[b, rows(t)])`` written op by op is differentiated as
one map-then-reduce: the cotangents of ``q`` and the row statistics per ``(b, t)``, then the
cotangents of ``k`` and ``v`` per ``(b, j)`` summed over the queries whose range holds ``j``,
both taken in tiles and in query blocks. Oracles: ``jax.grad`` of the dense masked
formulation and the reference interpreter; prefix, window and suffix ranges, at sizes that
are not a multiple of the tile, tiles longer than the range, and a dynamic bound.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj

D = 8
WINDOW = 5


def _rows(kind: str, t: tj.Symbol) -> slice:
    return {
        "prefix": slice(0, t + 1),
        "window": slice(tj.max(0, t - WINDOW + 1), t + 1),
        "suffix": slice(t, t.bound),
    }[kind]


def _attention(q: Any, k: Any, v: Any) -> Any:  # written op by op, as a user does
    return tj.softmax(k @ q * D**-0.5) @ v


def _pool(q: Any, k: Any, v: Any) -> Any:  # a mean and a max: no softmax, a size in the vjp
    return tj.lift(lambda q, k, v: k.mean(0) * q + v.max(0), name="pool")(q, k, v)


PAYLOADS = {"attention": _attention, "pool": _pool}


def build(kind: str, payload: str) -> tj.Program:
    with tj.Program() as p:
        b, t = p.dims("b t")
        q, k, v, w = (tj.input(n, (D,), jnp.float32, domain=(b, t)) for n in "qkvw")
        rows = _rows(kind, t)
        o = PAYLOADS[payload](q[b, t], k[b, rows], v[b, rows])
        loss = (tj.tanh(o) * w[b, t]).sum()
        for name, g in zip(("gq", "gk", "gv"), tj.grad(loss, [q, k, v]), strict=True):
            p.output(name, g[b, 0 : t.bound])
    return p


def _span(kind: str, i: int, steps: int) -> tuple[int, int]:
    return {"prefix": (0, i + 1), "window": (max(0, i - WINDOW + 1), i + 1)}.get(kind, (i, steps))


def dense_loss(kind: str, payload: str, q: Any, k: Any, v: Any, w: Any) -> Any:
    """The same loss, every range a masked row of a ``(T, T)`` matrix."""
    steps = q.shape[1]
    idx = np.arange(steps)
    lo = np.array([_span(kind, i, steps)[0] for i in idx])
    hi = np.array([_span(kind, i, steps)[1] for i in idx])
    mask = (idx[None, :] >= lo[:, None]) & (idx[None, :] < hi[:, None])
    if payload == "attention":
        scores = jnp.einsum("btd,bsd->bts", q, k) * D**-0.5
        weights = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
        o = jnp.einsum("bts,bsd->btd", weights, v)
    else:
        mean = jnp.einsum("ts,bsd->btd", mask / mask.sum(1, keepdims=True), k)
        top = jnp.where(mask[None, :, :, None], v[:, None, :, :], -jnp.inf).max(2)
        o = mean * q + top
    return (jnp.tanh(o) * w).sum()


def _data(steps: int, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(steps)
    return {n: rng.normal(size=(batch, steps, D)).astype(np.float32) for n in "qkvw"}


def _want(kind: str, payload: str, data: dict) -> tuple[Any, ...]:
    loss = functools.partial(dense_loss, kind, payload)
    return jax.grad(loss, argnums=(0, 1, 2))(*(data[n] for n in "qkvw"))


def _compiled(program: tj.Program, block: int, bounds: dict) -> tj.Compiled:
    """Tiles of ``block`` rows; short ranges too (not taken dense: ``test_dense_grad``)."""
    tile = functools.partial(tj.tile_dynamic_ranges, block=block)
    pipeline = tj.Pipeline().without("dense_range_grads").replacing("tile_dynamic_ranges", tile)
    return program.compile(bounds, pipeline=pipeline)


def _close(out: dict, want: tuple[Any, ...], steps: int | None = None) -> None:
    for name, g in zip(("gq", "gk", "gv"), want, strict=True):
        got = np.asarray(out[name])[:, :steps]
        np.testing.assert_allclose(got, g, rtol=2e-5, atol=2e-5)


def _op_names(program: tj.Program) -> list[str]:
    return [op.name for op in program.recorded_ops()]


@pytest.mark.parametrize("kind", ["prefix", "window", "suffix"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize(("steps", "block"), [(37, 8), (5, 8)])
def test_tiled_gradients_equal_the_dense_oracle(kind: str, payload: str, steps: int, block: int):
    program = build(kind, payload)
    names = _op_names(program)
    assert any(n.startswith("vjp_rows[") for n in names), names  # the tiled backward
    assert not any(n == "embed" for n in names)  # no per-query cotangent of the whole range
    data = _data(steps)
    _close(_compiled(program, block, {"B": 2, "T": steps})(**data), _want(kind, payload, data))


@pytest.mark.parametrize("kind", ["prefix", "window", "suffix"])
def test_tiled_gradients_equal_the_interpreter(kind: str) -> None:
    program = build(kind, "attention")
    data = _data(9)
    want = tj.reference.run(program, {"B": 2, "T": 9}, data)
    got = _compiled(program, 4, {"B": 2, "T": 9})(**data)
    for name in ("gq", "gk", "gv"):
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-5)


def test_a_dynamic_bound_is_differentiated() -> None:
    """One compilation for every length up to the bound's maximum (the range's cotangent was
    refused for a dynamic bound before it was tiled)."""
    program = build("prefix", "attention")
    compiled = _compiled(program, 8, {"B": 2, "T": tj.dynamic(max=40)})
    for steps in (7, 40):
        data = _data(steps)
        _close(compiled(T=steps, **data), _want("prefix", "attention", data), steps)


def test_query_blocks_and_no_square_buffer() -> None:
    """Forward, stats and rows ops run in query blocks: the loops over the batch and over
    single queries are gone, and nothing holds a score per (query, key) pair."""
    steps, block = 256, 32
    program = build("prefix", "attention")
    compiled = _compiled(program, block, {"B": 2, "T": steps})
    data = _data(steps)
    text = str(compiled.jaxpr(**data)).replace(" ", "")
    assert f"{steps},{steps}" not in text
    assert "length=2," not in text and f"length={steps}," not in text  # no loop over b or t
    memory = compiled.lower(**data).compile().memory_analysis()
    assert memory.temp_size_in_bytes < 4 * steps * steps  # a (T, T) float32 would not fit
    _close(compiled(**data), _want("prefix", "attention", data))


def test_a_payload_that_is_not_a_map_then_reduce_keeps_the_dense_backward() -> None:
    """A cumulative sum along the range has no per-row cotangent: the range's cotangent is
    placed per query (``embed``) as before, with the same values."""
    steps = 6

    def running(k: Any, q: Any) -> Any:
        return (jnp.cumsum(k, axis=0) ** 2).sum() * q.sum()

    with tj.Program() as p:
        (t,) = p.dims("t")
        q = tj.input("q", (D,), jnp.float32, domain=(t,))
        k = tj.input("k", (D,), jnp.float32, domain=(t,))
        loss = tj.lift(running, name="running")(k[0 : t + 1], q[t])
        (gk,) = tj.grad(loss, [k])
        p.output("gk", gk[0 : t.bound])
    assert "embed" in _op_names(p)
    rng = np.random.default_rng(0)
    qs, ks = (rng.normal(size=(steps, D)).astype(np.float32) for _ in range(2))

    def oracle(ks: Any) -> Any:
        return sum(running(ks[: i + 1], qs[i]) for i in range(steps))

    got = p.compile({"T": steps})(q=qs, k=ks)["gk"]
    np.testing.assert_allclose(got, jax.grad(oracle)(ks), rtol=1e-5, atol=1e-5)


def test_the_rows_op_runs_its_cone_at_one_row() -> None:
    """The rows op evaluates each key's row once: the cone traced at two rows runs with its
    sizes rewritten to one, and gives what two copies of the row give."""
    from tempo_jax._ir.program import TensorSpec
    from tempo_jax._passes import range_grad

    def attend(values: list[Any]) -> list[Any]:
        q, k, v = values
        return [jax.nn.softmax(k @ q * D**-0.5) @ v]

    vjp = range_grad.vjp_function(attend, 3, (0, 1, 2), (0,))
    f32 = jnp.float32
    specs = [TensorSpec((D,), f32), TensorSpec((10, D), f32), TensorSpec((10, D), f32)]
    split = range_grad.split(vjp, [*specs, TensorSpec((D,), f32)], (1, 2), "attention")
    assert split is not None and split.one_row is not None
    rng = np.random.default_rng(0)
    own = [rng.normal(size=(D,)).astype(np.float32) for _ in range(2)]
    stacks = [rng.normal(size=(6, *s.shape)).astype(np.float32) for s in split.stat_specs]
    once = range_grad.rows_payload(split, "attention")
    twice = range_grad.rows_payload(dataclasses.replace(split, one_row=None), "attention")
    for got, want in zip(once(*own, *stacks), twice(*own, *stacks), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert f"f32[2,{D}]" in str(jax.make_jaxpr(twice)(*own, *stacks))
    assert f"f32[2,{D}]" not in str(jax.make_jaxpr(once)(*own, *stacks))
