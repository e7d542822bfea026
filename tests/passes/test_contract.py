"""Summed products become contractions: values unchanged, no per-point outer products left."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax._passes.contract import contract_sums, contracting
from tempo_jax._passes.vectorize import vectorize
from tests.corpus import CASES, Case

UNCONTRACTED = tj.Pipeline().without("contract_sums")
RNG = np.random.default_rng(0)
X = RNG.normal(size=(6, 5, 3)).astype(np.float32)  # (T, B, n)
G = RNG.normal(size=(6, 5, 4)).astype(np.float32)  # (T, B, m)


def _primitives(fn: Any, *args: Any) -> list[str]:
    return [eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns]


def _outer(x: jax.Array, g: jax.Array) -> jax.Array:
    return jnp.einsum("i,j->ij", x, g)  # a dot_general (jnp.outer multiplies broadcasts)


def _outer_sums(x: jax.Array, g: jax.Array) -> jax.Array:
    per_point = jax.vmap(jax.vmap(_outer))(x, g)  # (T, B, n, m): one outer product each
    return per_point.sum(axis=0).sum(axis=0)


def test_a_sum_of_outer_products_is_one_contraction() -> None:
    want = np.einsum("tbi,tbj->ij", X, G)
    got = contracting(_outer_sums)(X, G)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert "reduce_sum" in _primitives(_outer_sums, X, G)
    kinds = _primitives(contracting(_outer_sums), X, G)
    assert "reduce_sum" not in kinds
    dots = [e for e in jax.make_jaxpr(contracting(_outer_sums))(X, G).jaxpr.eqns]
    last = [e for e in dots if e.primitive.name == "dot_general"][-1]
    assert last.params["dimension_numbers"][0] == ((0, 1), (0, 1))  # contracts T and B


@pytest.mark.parametrize("axes", [(0,), (1,), (0, 1), (1, 2), (0, 3)])
def test_sums_through_transposes_and_calls_keep_their_values(axes: tuple[int, ...]) -> None:
    @jax.jit  # a call boundary between the product and its sum
    def product(x: jax.Array, g: jax.Array) -> jax.Array:
        return jnp.einsum("tbi,tbj->tbij", x, g)

    def fn(x: jax.Array, g: jax.Array) -> jax.Array:
        return jnp.transpose(product(x, g), (1, 0, 3, 2)).sum(axis=axes)

    np.testing.assert_allclose(contracting(fn)(X, G), fn(X, G), rtol=1e-5, atol=1e-5)


def test_a_product_read_twice_is_left_as_it_is() -> None:
    def fn(x: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
        p = jnp.einsum("tbi,tbj->tbij", x, g)
        return p.sum(axis=(0, 1)), p * 2.0

    got, want = contracting(fn)(X, G), fn(X, G)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert "reduce_sum" in _primitives(contracting(fn), X, G)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_contract_sums_keeps_the_outputs_on_the_corpus(case: Case) -> None:
    program, bounds, inputs = case.build()
    ir = vectorize(program.to_ir())
    before = ir.ops
    out = contract_sums(ir)
    assert ir.ops == before  # the input program is unchanged
    assert contract_sums(out) == out  # idempotent
    want = tj.reference.run(ir, bounds, inputs)
    for name, value in tj.reference.run(out, bounds, inputs).items():
        np.testing.assert_allclose(value, want[name], rtol=1e-5, atol=1e-5)


def _dense_gradient() -> tuple[tj.Program, np.ndarray, np.ndarray]:
    """A weight shared by every point of ``(b, t)``: its gradient sums B * T outer products."""
    xs = RNG.normal(size=(5, 6, 3)).astype(np.float32)
    w0 = RNG.normal(size=(3, 4)).astype(np.float32)
    with tj.Program() as p:
        b, t = p.dims("b t")
        x = tj.input("x", (3,), jnp.float32, domain=(b, t))
        w = tj.param(jnp.asarray(w0))
        (g,) = tj.grad((tj.tanh(x[b, t] @ w) ** 2).sum(), [w])
        p.output("g", g)
    return p, xs, w0


def test_weight_gradients_are_contractions_not_stacked_outer_products() -> None:
    p, xs, w0 = _dense_gradient()
    want = jax.grad(lambda w: (jnp.tanh(xs @ w) ** 2).sum())(jnp.asarray(w0))
    bounds = {"B": 5, "T": 6}
    compiled = p.compile(bounds)
    np.testing.assert_allclose(compiled(x=xs)["g"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tj.reference.run(p, bounds, {"x": xs})["g"], want, rtol=1e-5)
    plain = p.compile(bounds, pipeline=UNCONTRACTED)
    assert len(compiled.program.ops) == len(plain.program.ops) - 1  # the sum is folded
    stacked = re.compile(r"f32\[[0-9,]+,(3,4|4,3)\]")  # gradients of several points, to be summed
    assert stacked.search(plain.lower(x=xs).compile().as_text())
    assert not stacked.search(compiled.lower(x=xs).compile().as_text())


def _scatter_sums(table: jax.Array, rows: jax.Array, ct: jax.Array, axes: tuple[int, ...]) -> Any:
    """The gradient of a table read at one row per point of ``(T, B)``: each point's vjp
    (a scatter-add into a zeroed table), summed over ``axes`` of the points."""

    def point(row: jax.Array, c: jax.Array) -> jax.Array:
        return jax.vjp(lambda t: jnp.take(t, row, axis=0), table)[1](c)[0]

    return jax.vmap(jax.vmap(point))(rows, ct).sum(axis=axes)


@pytest.mark.parametrize("axes", [(0, 1), (0,), (1,), (2,), (1, 3)])
def test_a_sum_of_scatters_into_zeroed_tables_is_one_scatter(axes: tuple[int, ...]) -> None:
    """Summed over the points' axes, the per-point tables become one scatter of every
    update into one table (out-of-range rows handled as each point's scatter handles them);
    a sum over a table's own axis is left as it is."""
    table = jnp.zeros((7, 4))
    rows = jnp.asarray(RNG.integers(-2, 9, size=(6, 5)))
    ct = jnp.asarray(RNG.normal(size=(6, 5, 4)).astype(np.float32))
    fn = lambda t, r, c: _scatter_sums(t, r, c, axes)  # noqa: E731
    np.testing.assert_allclose(contracting(fn)(table, rows, ct), fn(table, rows, ct), atol=1e-5)
    kinds = _primitives(contracting(fn), table, rows, ct)
    points_only = all(a < 2 for a in axes)  # no table axis summed: one scatter, no sum
    assert ("reduce_sum" not in kinds) == points_only
