"""A short range's gradient in one dense op (``dense_range_grads``): every consumer's vjp at
once, its stats and rows ops turned into picks of the result.

Oracles: ``jax.grad`` of the dense masked formulation (``test_range_grad.dense_loss``) and the
reference interpreter, for prefix, window and suffix ranges at sizes that are not powers of two;
the split is kept where the dim is longer than ``max_rows``, dynamic, or the gradient feeds
itself; a padded row whose derivative overflows is recomputed, not turned into NaN.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tests.passes.test_range_grad import PAYLOADS, D, _close, _data, _rows, _want, build


def _ops(compiled: tj.Compiled) -> list[str]:
    return [op.name for op in compiled.program.ops]


def _dense(compiled: tj.Compiled) -> bool:
    names = _ops(compiled)
    taken = any(n.startswith(("vjp_dense[", "vjp_dense_points[")) for n in names)
    assert taken != any(n.startswith("vjp_rows[") for n in names), names  # one or the other
    return taken


@pytest.mark.parametrize("kind", ["prefix", "window", "suffix"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("steps", [37, 5])
def test_dense_gradients_equal_the_dense_oracle(kind: str, payload: str, steps: int) -> None:
    compiled = build(kind, payload).compile({"B": 2, "T": steps})
    assert _dense(compiled)
    data = _data(steps)
    _close(compiled(**data), _want(kind, payload, data))


def test_dense_gradients_equal_the_interpreter() -> None:
    program = build("window", "attention")
    data = _data(9)
    want = tj.reference.run(program, {"B": 2, "T": 9}, data)
    compiled = program.compile({"B": 2, "T": 9})
    assert _dense(compiled)
    got = compiled(**data)
    for name in ("gq", "gk", "gv"):
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-5)


def test_long_or_dynamic_dims_keep_the_split() -> None:
    program = build("prefix", "attention")
    data = _data(37)
    few = tj.Pipeline().replacing(
        "dense_range_grads", functools.partial(tj.dense_range_grads, max_rows=16)
    )
    longer = program.compile({"B": 2, "T": 37}, pipeline=few)
    assert not _dense(longer)
    _close(longer(**data), _want("prefix", "attention", data))
    dynamic = program.compile({"B": 2, "T": tj.dynamic(max=40)})
    assert not _dense(dynamic)
    _close(dynamic(T=37, **data), _want("prefix", "attention", data), 37)


def test_a_gradient_feeding_itself_keeps_the_split() -> None:
    """``k[t]`` is computed from the pooled range at ``t - 1``: the cotangent of the pool at
    ``t`` depends on the rows op at later points, so one op over every ``t`` would be a cycle."""
    steps = 6

    def pool(q: Any, ks: Any) -> Any:
        return jnp.tanh(ks.mean(0) * q)

    with tj.Program() as p:
        (t,) = p.dims("t")
        q = tj.input("q", (D,), jnp.float32, domain=(t,))
        x = tj.input("x", (D,), jnp.float32, domain=(t,))
        k = tj.placeholder((D,), jnp.float32, domain=(t,))
        y = tj.lift(pool, name="pool")(q[t], k[0 : t + 1])
        k[0] = x[0]
        k[t > 0] = x[t] + y[t - 1]
        (gx,) = tj.grad((y * y).sum(), [x])
        p.output("gx", gx[0 : t.bound])
    rng = np.random.default_rng(0)
    qs, xs = (rng.normal(size=(steps, D)).astype(np.float32) for _ in range(2))

    def oracle(xs: Any) -> Any:
        ks, total, y = [], 0.0, jnp.zeros(D)
        for i in range(steps):
            ks.append(xs[i] + y if i else xs[i])
            y = pool(qs[i], jnp.stack(ks))
            total = total + (y * y).sum()
        return total

    compiled = p.compile({"T": steps})
    assert not _dense(compiled)
    got = compiled(q=qs, x=xs)["gx"]
    np.testing.assert_allclose(got, jax.grad(oracle)(xs), rtol=1e-5, atol=1e-5)


def test_a_padded_row_that_overflows_is_recomputed() -> None:
    """``exp(k * q)`` of a later key is infinite at earlier queries: masked out of the sum, but
    its cotangent ``0 * inf`` would be NaN; the dense op sees it and recomputes with every
    padded row a copy of a valid one."""
    steps = 8

    def expsum(q: Any, ks: Any) -> Any:
        return jnp.exp(ks * q).sum(0)

    with tj.Program() as p:
        (t,) = p.dims("t")
        q = tj.input("q", (D,), jnp.float32, domain=(t,))
        k = tj.input("k", (D,), jnp.float32, domain=(t,))
        o = tj.lift(expsum, name="expsum")(q[t], k[_rows("prefix", t)])
        gq, gk = tj.grad(tj.tanh(o).sum(), [q, k])
        p.output("gq", gq[0 : t.bound])
        p.output("gk", gk[0 : t.bound])
    rng = np.random.default_rng(1)
    qs = np.ones((steps, D), np.float32)
    qs[-1] = 0.01  # the last query reads the large key without overflow
    ks = rng.normal(size=(steps, D)).astype(np.float32) * 0.1
    ks[-1] = 100.0

    def oracle(qs: Any, ks: Any) -> Any:
        mask = np.tril(np.ones((steps, steps), bool))[:, :, None]
        safe = jnp.where(mask, ks[None, :, :] * qs[:, None, :], 0.0)
        return jnp.tanh(jnp.where(mask, jnp.exp(safe), 0.0).sum(1)).sum()

    compiled = p.compile({"T": steps})
    assert _dense(compiled)
    got = compiled(q=qs, k=ks)
    want = jax.grad(oracle, argnums=(0, 1))(qs, ks)
    for name, g in zip(("gq", "gk"), want, strict=True):
        assert np.isfinite(got[name]).all()
        np.testing.assert_allclose(got[name], g, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("payload", "form"), [("attention", "vjp_dense["), ("pool", "vjp_dense_points[")]
)
def test_the_form_each_payload_takes(payload: str, form: str) -> None:
    """Attention's dense backward is one batched computation, each value masked in the layout
    the batch gives it; the pool reduces the keys alone (a value padded along the range that
    holds no query axis) and divides by the range's size (one per query): each query's masked
    payload, batched. Both equal the oracle (``test_dense_gradients_equal_the_dense_oracle``)."""
    compiled = build("prefix", payload).compile({"B": 2, "T": 9})
    assert any(n.startswith(form) for n in _ops(compiled)), _ops(compiled)


@pytest.mark.parametrize("kind", ["prefix", "window", "suffix"])
def test_the_forward_is_taken_dense_with_its_gradient(kind: str) -> None:
    """Where the gradient is one batched computation, so is the forward: the range op (one
    lifted payload, as the LM's attention) becomes a pick of ``dense[...]``, computing every
    point at once; values and gradients equal the interpreter's."""
    attend = tj.lift(lambda q, ks, vs: jax.nn.softmax(ks @ q * D**-0.5) @ vs, name="attend")
    with tj.Program() as p:
        b, t = p.dims("b t")
        q, k, v, w = (tj.input(n, (D,), jnp.float32, domain=(b, t)) for n in "qkvw")
        o = attend(q[b, t], k[b, _rows(kind, t)], v[b, _rows(kind, t)])
        loss = (tj.tanh(o) * w[b, t]).sum()
        p.output("o", o[b, 0 : t.bound])
        for name, g in zip(("gq", "gk", "gv"), tj.grad(loss, [q, k, v]), strict=True):
            p.output(name, g[b, 0 : t.bound])
    bounds, data = {"B": 2, "T": 11}, _data(11)
    compiled = p.compile(bounds)
    assert any(n.startswith("dense[") for n in _ops(compiled)), _ops(compiled)
    want = tj.reference.run(p, bounds, data)
    got = compiled(**data)
    for name in ("o", "gq", "gk", "gv"):
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-5)


def test_the_forward_alone_stays_in_tiles() -> None:
    """Without a gradient through it, a range op is not taken dense (decoding runs it in
    query blocks and tiles)."""
    with tj.Program() as p:
        b, t = p.dims("b t")
        q, k, v = (tj.input(n, (D,), jnp.float32, domain=(b, t)) for n in "qkv")
        o = PAYLOADS["attention"](q[b, t], k[b, _rows("prefix", t)], v[b, _rows("prefix", t)])
        p.output("o", o[b, 0 : t.bound])
    assert not any(n.startswith("dense[") for n in _ops(p.compile({"B": 2, "T": 11})))
