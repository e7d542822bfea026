"""``sink_transposes`` computes the same function with its transposes moved to its outputs.

Oracle: the function itself (values and vjp). Structure: in a batched attention payload no
value the size of the scores is transposed, forward or backward.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tempo_jax._lower.sinking import sink_transposes

Q, B, H, S, D = 6, 3, 2, 5, 4


def _attention(q: Any, ks: Any, vs: Any) -> Any:
    """One query ``[B, H, D]`` over rows ``[S, B, H, D]``, rows first (as the tiler stores
    them)."""
    ks, vs = jnp.moveaxis(ks, 0, 2), jnp.moveaxis(vs, 0, 2)
    s = jnp.einsum("bhd,bhsd->bhs", q, ks) / math.sqrt(D)
    return jnp.einsum("bhs,bhsd->bhd", jax.nn.softmax(s, axis=-1), vs)


def _batched() -> Any:
    return jax.vmap(_attention, in_axes=(0, None, None))


def _inputs(*shapes: tuple[int, ...]) -> list[Any]:
    keys = jax.random.split(jax.random.PRNGKey(0), len(shapes))
    return [jax.random.normal(k, s) for k, s in zip(keys, shapes, strict=True)]


def _same(fn: Any, *args: Any) -> None:
    sunk = sink_transposes(fn)
    want, pull = jax.vjp(fn, *args)
    got, pull_sunk = jax.vjp(sunk, *args)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    ct = jnp.cos(jnp.arange(np.size(want), dtype=jnp.float32)).reshape(np.shape(want))
    for g, w in zip(pull_sunk(ct), pull(ct), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_batched_attention_is_unchanged() -> None:
    _same(_batched(), *_inputs((Q, B, H, D), (S, B, H, D), (S, B, H, D)))


def _transposed_sizes(fn: Any, *args: Any) -> list[int]:
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr

    def walk(jaxpr: Any) -> list[int]:
        sizes = []
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "transpose":
                sizes.append(math.prod(eqn.invars[0].aval.shape))
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", param)
                if hasattr(inner, "eqns"):
                    sizes += walk(inner)
        return sizes

    return walk(jaxpr)


def test_no_value_the_size_of_the_scores_is_transposed() -> None:
    args = _inputs((Q, B, H, D), (S, B, H, D), (S, B, H, D))
    scores = Q * B * H * S
    assert max(_transposed_sizes(_batched(), *args)) >= scores  # vmap alone moves them
    sunk = sink_transposes(_batched())

    def backward(q: Any, k: Any, v: Any) -> Any:
        out, pull = jax.vjp(sunk, q, k, v)
        return pull(out)

    assert all(n < scores for n in _transposed_sizes(sunk, *args))
    assert all(n < scores for n in _transposed_sizes(backward, *args))


@pytest.mark.parametrize("perm", [(1, 0, 2), (2, 0, 1), (1, 2, 0), (0, 2, 1)])
def test_reductions_products_and_elementwise_of_transposed_values(perm: tuple[int, ...]) -> None:
    def fn(x: Any, y: Any, w: Any) -> Any:
        a, b = lax.transpose(x, perm), lax.transpose(y, perm)
        e = jnp.exp(a - a.max(axis=1, keepdims=True)) * b
        total = e.sum(axis=(1, 2))  # over two axes at once
        return jnp.einsum("ijk,kl->ijl", e, w).sum(1) + total[:, None]

    x, y = _inputs((3, 4, 5), (3, 4, 5))
    shape = lax.transpose(x, perm).shape
    (w,) = _inputs((shape[2], 2))
    _same(fn, x, y, w)


def test_an_operation_whose_operands_would_all_move_keeps_its_layout() -> None:
    def fn(x: Any, y: Any, z: Any) -> Any:
        return jnp.where(y > 0, lax.transpose(x, (1, 0)), z)  # one held, two as they are

    x, y, z = _inputs((3, 4), (4, 3), (4, 3))
    _same(lambda x, z: fn(x, y, z), x, z)
    sizes = _transposed_sizes(sink_transposes(lambda x, z: fn(x, y, z)), x, z)
    assert sizes == [12]  # the one transpose, not two
