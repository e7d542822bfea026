"""Every row of docs/indexing.md: spatial shape and domain after indexing, and the values.

``x`` has domain ``(a, b)`` with bounds ``(A, B) = (6, 10)`` and spatial shape
``(C, D) = (2, 3)``; values are checked through the reference interpreter against NumPy
indexing of the input array.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax._ir.simplify import simplify

A, B, C, D = 6, 10, 2, 3
DATA = np.random.default_rng(0).normal(size=(A, B, C, D)).astype(np.float32)


def _program() -> tuple[tj.Program, Any, Any, tj.RecurrentTensor]:
    p = tj.Program()
    a, b = p.dims("a b")
    with p:
        x = tj.input("x", (C, D), jnp.float32, domain=(a, b))
    return p, a, b, x


def _run(p: tj.Program, rt: tj.RecurrentTensor) -> np.ndarray:
    with p:
        p.output("y", rt)
    return np.asarray(tj.reference.run(p, bounds={"A": A, "B": B}, inputs={"x": DATA})["y"])


def _grid(fn: Callable[..., np.ndarray], *bounds: int) -> np.ndarray:
    """Stack ``fn(point)`` over the domain, domain dims first (as outputs are laid out)."""
    if not bounds:
        return fn()
    return np.stack([_grid(lambda *rest, k=k: fn(k, *rest), *bounds[1:]) for k in range(bounds[0])])


# (index builder, spatial shape after, domain after, NumPy value at a point of the new domain)
ROWS: list[tuple[str, Callable[..., Any], tuple[Any, ...], str, Callable[..., np.ndarray]]] = [
    ("x", lambda x, a, b: x, (C, D), "ab", lambda i, j: DATA[i, j]),
    ("x[...]", lambda x, a, b: x[...], (C, D), "ab", lambda i, j: DATA[i, j]),
    ("x[0]", lambda x, a, b: x[0], (C, D), "b", lambda j: DATA[0, j]),
    ("x[0, 1]", lambda x, a, b: x[0, 1], (C, D), "", lambda: DATA[0, 1]),
    ("x[:, 1]", lambda x, a, b: x[:, 1], (C, D), "a", lambda i: DATA[i, 1]),
    ("x[a, b]", lambda x, a, b: x[a, b], (C, D), "ab", lambda i, j: DATA[i, j]),
    (
        "x[tj.min(a+10, A-1), b]",
        lambda x, a, b: x[tj.min(a + 10, a.bound - 1), b],
        (C, D),
        "ab",
        lambda i, j: DATA[min(i + 10, A - 1), j],
    ),
    ("x[:, 5:10]", lambda x, a, b: x[:, 5:10], (5, C, D), "a", lambda i: DATA[i, 5:10]),
    ("x[0:5, b]", lambda x, a, b: x[0:5, b], (5, C, D), "b", lambda j: DATA[0:5, j]),
    ("x[1, ..., 2]", lambda x, a, b: x[1, ..., 2], (C,), "b", lambda j: DATA[1, j, :, 2]),
    ("x[-1, b]", lambda x, a, b: x[-1, b], (C, D), "b", lambda j: DATA[A - 1, j]),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_indexing_row(row: tuple[Any, ...]) -> None:
    _, build, shape, domain, value = row
    p, a, b, x = _program()
    with p:
        y = build(x, a, b)
    assert y.shape == shape
    assert y.domain == tuple(s for s in (a, b) if s.name in domain)
    bounds = [A if s.name == "a" else B for s in y.domain]
    np.testing.assert_array_equal(_run(p, y), _grid(value, *bounds))


def test_shifted_read_keeps_domain_and_is_guarded_by_a_branch() -> None:
    """`x[a+1, b]`: shape (C, D), domain (a, b); only read where `a < A-1`."""
    p, a, b, x = _program()
    with p:
        view = x[a + 1, b]
        assert view.shape == (C, D) and view.domain == (a, b)
        y = tj.placeholder((C, D), jnp.float32, domain=(a, b))
        y[a < a.bound - 1] = view
        y[True] = tj.zeros((C, D))
    want = _grid(lambda i, j: DATA[i + 1, j] if i < A - 1 else np.zeros((C, D)), A, B)
    np.testing.assert_array_equal(_run(p, y), want)


def test_prefix_slice_has_symbolic_size() -> None:
    """`x[0:a+1, b]`: shape (a+1, C, D), domain (a, b)."""
    p, a, b, x = _program()
    with p:
        view = x[0 : a + 1, b]
        assert view.domain == (a, b)
        assert simplify(view.shape[0] - (a + 1)) == simplify(a - a)
        assert view.shape[1:] == (C, D)
        total = view.sum(axis=0)
        assert total.shape == (C, D)
    want = _grid(lambda i, j: DATA[: i + 1, j].sum(0), A, B)
    np.testing.assert_allclose(_run(p, total), want, rtol=1e-6)


def test_spatial_entries_follow_the_domain_entries() -> None:
    p, a, b, x = _program()
    with p:
        y = x[a, b, 1]
        assert y.shape == (D,) and y.domain == (a, b)
    np.testing.assert_array_equal(_run(p, y), DATA[:, :, 1])


def test_indexing_an_indexed_tensor() -> None:
    p, _a, b, x = _program()
    with p:
        first_row = x[0]  # domain (b,)
        y = first_row[b.bound - 2]  # domain ()
        assert y.domain == () and y.shape == (C, D)
    np.testing.assert_array_equal(_run(p, y), DATA[0, B - 2])


def test_indexing_an_expression_result() -> None:
    p, a, _b, x = _program()
    with p:
        doubled = x * 2.0
        y = doubled[a, 0:3]
        assert y.shape == (3, C, D) and y.domain == (a,)
    np.testing.assert_array_equal(_run(p, y), DATA[:, 0:3] * 2.0)


def test_window_slice_keeps_its_symbol() -> None:
    p, a, b, x = _program()
    with p:
        w = x[a, tj.max(0, b - 2) : b + 1]
        assert w.domain == (a, b)
        y = w.sum(axis=0)
    want = _grid(lambda i, j: DATA[i, max(0, j - 2) : j + 1].sum(0), A, B)
    np.testing.assert_allclose(_run(p, y), want, rtol=1e-6)


def test_suffix_slice_to_the_bound() -> None:
    p, a, b, x = _program()
    with p:
        y = x[a, b:].sum(axis=0)  # `b:` runs to the bound B
        assert y.domain == (a, b)
    want = _grid(lambda i, j: DATA[i, j:].sum(0), A, B)
    np.testing.assert_allclose(_run(p, y), want, rtol=1e-5)


# -- definitions (second table) -----------------------------------------------------------------


def _defined(build: Callable[..., None], n: int = 8) -> np.ndarray:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), jnp.int32, domain=(t,))
        build(x, t)
        p.output("x", x[0 : t.bound])
    return np.asarray(tj.reference.run(p, bounds={t.bound: n})["x"])


def test_define_constant_point() -> None:
    def build(x: Any, t: Any) -> None:
        x[0] = 5
        x[True] = 1

    np.testing.assert_array_equal(_defined(build), [5, 1, 1, 1, 1, 1, 1, 1])


def test_define_shift_is_sugar_for_guarded_read() -> None:
    def sugar(x: Any, t: Any) -> None:
        x[0] = 1
        x[t + 1] = x[t] * 2

    def explicit(x: Any, t: Any) -> None:
        x[tj.eq(t, 0)] = 1
        x[t >= 1] = x[t - 1] * 2

    np.testing.assert_array_equal(_defined(sugar), _defined(explicit))
    np.testing.assert_array_equal(_defined(sugar), 2 ** np.arange(8))


def test_define_negative_shift() -> None:
    def build(x: Any, t: Any) -> None:
        x[t - 1] = x[t] + 1  # x[t] = x[t+1] + 1 where t < T-1
        x[True] = 0

    np.testing.assert_array_equal(_defined(build), np.arange(8)[::-1])


def test_define_condition_and_default() -> None:
    def build(x: Any, t: Any) -> None:
        x[t < 5] = 7
        x[True] = t

    np.testing.assert_array_equal(_defined(build), [7, 7, 7, 7, 7, 5, 6, 7])


def test_first_matching_branch_wins() -> None:
    def build(x: Any, t: Any) -> None:
        x[t < 2] = 1
        x[t < 4] = 2  # only t = 2, 3: t < 2 was taken first
        x[(t >= 6) | tj.eq(t, 4)] = 3
        x[True] = 4

    np.testing.assert_array_equal(_defined(build), [1, 1, 2, 2, 3, 4, 3, 3])
