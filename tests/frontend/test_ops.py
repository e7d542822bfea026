"""The ``tj`` op set against plain JAX, the oracle.

Each case is one function ``fn(ns, *xs)`` written once for both namespaces: called with
``ns=tj`` on recurrent tensors over the domain ``(b,)`` it builds a program, which the
reference interpreter runs; called with ``ns=_JAX`` (the plain ``jax.numpy`` / ``jax.nn``
function of the same name) on each point's data it gives the expected values. Python
operators and RT methods are written the same way, as they mirror ``jax.Array``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj

B = 3  # bound of the domain dim `b` in every test
T = 2  # bound of `t` where a second dim is needed


class _Jax:
    """The oracle namespace: ``tj.<name>`` resolved to the plain JAX function."""

    rsqrt = staticmethod(jax.lax.rsqrt)
    logsumexp = staticmethod(jax.nn.logsumexp)

    @staticmethod
    def lift(fn: Callable[..., Any], name: str | None = None) -> Callable[..., Any]:
        return fn

    def __getattr__(self, name: str) -> Any:
        return getattr(jnp, name) if hasattr(jnp, name) else getattr(jax.nn, name)


_JAX = _Jax()


# ---------------------------------------------------------------------------------------------
# Data and the checker
# ---------------------------------------------------------------------------------------------


def _data(kind: str, seed: int) -> np.ndarray:
    """Per-point data of ``kind`` stacked over ``B`` points: shape ``(B, *spatial)``."""
    rng = np.random.default_rng(seed)
    if kind == "f":  # any float, (3, 4)
        return rng.standard_normal((B, 3, 4)).astype(np.float32)
    if kind == "f2":  # a second float operand of the same shape
        return rng.standard_normal((B, 3, 4)).astype(np.float32)
    if kind == "pos":  # positive floats, away from 0
        return rng.uniform(0.5, 2.0, (B, 3, 4)).astype(np.float32)
    if kind == "near1":  # floats near 1 (products stay small)
        return rng.uniform(0.8, 1.25, (B, 3, 4)).astype(np.float32)
    if kind == "nan":  # floats with nan and inf
        x = rng.standard_normal((B, 3, 4)).astype(np.float32)
        x[:, 0, 0], x[:, 1, 2], x[0, 2, 3] = np.nan, np.inf, -np.inf
        return x
    if kind == "bool":
        return rng.random((B, 3, 4)) > 0.5
    if kind == "bool2":
        return rng.random((B, 3, 4)) > 0.4
    if kind == "i":  # ints, nonzero (safe as divisors)
        return (rng.integers(1, 7, (B, 3, 4)) * rng.choice([-1, 1], (B, 3, 4))).astype(np.int32)
    if kind == "s":  # a float scalar per point
        return rng.standard_normal((B,)).astype(np.float32)
    if kind == "vec":  # (4,)
        return rng.standard_normal((B, 4)).astype(np.float32)
    if kind == "vec2":
        return rng.standard_normal((B, 4)).astype(np.float32)
    if kind == "mat":  # (4, 2): right operand of (3, 4) @
        return rng.standard_normal((B, 4, 2)).astype(np.float32)
    if kind == "cube":  # (2, 3, 4)
        return rng.standard_normal((B, 2, 3, 4)).astype(np.float32)
    if kind == "col":  # (3, 1, 4): has a size-1 axis
        return rng.standard_normal((B, 3, 1, 4)).astype(np.float32)
    if kind == "idx4":  # (3, 4) ints in [0, 4): indices along the last axis of "f"
        return rng.integers(0, 4, (B, 3, 4)).astype(np.int32)
    if kind == "idx3":  # (2,) ints in [0, 3): indices along axis 0 of "f"
        return rng.integers(0, 3, (B, 2)).astype(np.int32)
    if kind == "label":  # an int scalar in [0, 5) per point
        return np.array([3, 0, 4][:B], np.int32)
    if kind == "row":  # an int scalar in [0, 3) per point: a row of "f"
        return np.array([2, 0, 1][:B], np.int32)
    raise AssertionError(kind)


def _assert_close(got: Any, want: Any) -> None:
    got, want = np.asarray(got), np.asarray(want)
    if jnp.issubdtype(want.dtype, jnp.floating):
        np.testing.assert_allclose(
            got.astype(np.float32), want.astype(np.float32), rtol=1e-6, atol=1e-6
        )
    else:
        np.testing.assert_array_equal(got, want)


def _is_rt(value: Any) -> bool:
    return isinstance(value, tj.RecurrentTensor)


def _per_point(fn: Callable[..., Any], arrays: list[np.ndarray]) -> Any:
    """``fn`` on each point's data, the results stacked over the points (a Python loop)."""
    results = [fn(_JAX, *(jnp.asarray(a[i]) for a in arrays)) for i in range(B)]
    return jax.tree.map(lambda *xs: np.stack(xs), *results)


def _check(fn: Callable[..., Any], kinds: tuple[str, ...]) -> None:
    """Build ``fn(tj, *inputs over (b,))``, run it, and compare with ``fn`` on plain JAX."""
    arrays = [_data(kind, seed=k) for k, kind in enumerate(kinds)]
    with tj.Program() as p:
        (b,) = p.dims("b")
        rts = [tj.input(f"x{k}", a.shape[1:], a.dtype, domain=(b,)) for k, a in enumerate(arrays)]
        result = fn(tj, *rts)
        leaves = jax.tree.leaves(result, is_leaf=_is_rt)
        for k, leaf in enumerate(leaves):
            p.output(f"out{k}", leaf)
    out = tj.reference.run(
        p, bounds={b.bound: B}, inputs={f"x{k}": a for k, a in enumerate(arrays)}
    )
    want = _per_point(fn, arrays)
    assert jax.tree.structure(result, is_leaf=_is_rt) == jax.tree.structure(want)
    for k, (rt, expected) in enumerate(zip(leaves, jax.tree.leaves(want), strict=True)):
        assert _is_rt(rt), f"leaf {k} is {type(rt).__name__}, not a RecurrentTensor"
        assert rt.domain == (b,)
        assert rt.shape == expected.shape[1:]
        assert rt.dtype == expected.dtype
        got = out[f"out{k}"]
        assert got.shape == expected.shape
        assert got.dtype == expected.dtype
        _assert_close(got, expected)


# ---------------------------------------------------------------------------------------------
# Element-wise functions
# ---------------------------------------------------------------------------------------------


def _fn(name: str, *kinds: str, **kwargs: Any) -> Any:
    """A case calling ``ns.<name>(*inputs, **kwargs)``."""
    return pytest.param(
        lambda ns, *xs: getattr(ns, name)(*xs, **kwargs),
        kinds,
        id="-".join(
            [name, *kinds, *(f"{k}={getattr(v, '__name__', v)}" for k, v in kwargs.items())]
        ),
    )


UNARY = [
    _fn("abs", "f"),
    _fn("absolute", "f"),
    _fn("abs", "i"),
    _fn("negative", "f"),
    _fn("sign", "f"),
    _fn("sign", "i"),
    _fn("exp", "f"),
    _fn("exp2", "f"),
    _fn("expm1", "f"),
    _fn("log", "pos"),
    _fn("log1p", "pos"),
    _fn("log2", "pos"),
    _fn("sqrt", "pos"),
    _fn("rsqrt", "pos"),
    _fn("square", "f"),
    _fn("square", "i"),
    _fn("reciprocal", "pos"),
    _fn("sin", "f"),
    _fn("cos", "f"),
    _fn("tan", "f"),
    _fn("arctan", "f"),
    _fn("sinh", "f"),
    _fn("cosh", "f"),
    _fn("tanh", "f"),
    _fn("tanh", "s"),
    _fn("floor", "f"),
    _fn("ceil", "f"),
    _fn("round", "f"),
    _fn("round", "f", decimals=1),
    _fn("isnan", "nan"),
    _fn("isfinite", "nan"),
    _fn("logical_not", "bool"),
    _fn("relu", "f"),
    _fn("relu6", "f"),
    _fn("gelu", "f"),
    _fn("gelu", "f", approximate=False),
    _fn("silu", "f"),
    _fn("swish", "f"),
    _fn("sigmoid", "f"),
    _fn("sigmoid", "s"),
    _fn("log_sigmoid", "f"),
    _fn("softplus", "f"),
    _fn("elu", "f"),
    _fn("elu", "f", alpha=0.5),
    _fn("leaky_relu", "f"),
    _fn("leaky_relu", "f", negative_slope=0.2),
    _fn("standardize", "f"),
    _fn("standardize", "f", axis=0),
    _fn("softmax", "f"),
    _fn("softmax", "f", axis=0),
    _fn("log_softmax", "f"),
    _fn("log_softmax", "f", axis=0),
    _fn("softmax", "vec"),
]


@pytest.mark.parametrize(("fn", "kinds"), UNARY)
def test_unary(fn: Callable[..., Any], kinds: tuple[str, ...]) -> None:
    _check(fn, kinds)


BINARY = [
    _fn("add", "f", "f2"),
    _fn("add", "i", "i"),
    _fn("subtract", "f", "f2"),
    _fn("multiply", "f", "f2"),
    _fn("multiply", "f", "i"),  # promotes to float32
    _fn("divide", "f", "pos"),
    _fn("true_divide", "i", "i"),  # int / int -> float32
    _fn("floor_divide", "f", "pos"),
    _fn("floor_divide", "i", "i"),
    _fn("mod", "f", "pos"),
    _fn("mod", "i", "i"),
    _fn("remainder", "f", "pos"),
    _fn("power", "pos", "f"),
    _fn("maximum", "f", "f2"),
    _fn("minimum", "f", "f2"),
    _fn("arctan2", "f", "f2"),
    _fn("equal", "i", "i"),
    _fn("not_equal", "i", "i"),
    _fn("less", "f", "f2"),
    _fn("less_equal", "f", "f2"),
    _fn("greater", "f", "f2"),
    _fn("greater_equal", "f", "f2"),
    _fn("logical_and", "bool", "bool2"),
    _fn("logical_or", "bool", "bool2"),
    _fn("logical_xor", "bool", "bool2"),
    _fn("add", "f", "vec"),  # broadcasting (3, 4) + (4,)
    _fn("multiply", "f", "s"),  # broadcasting (3, 4) * ()
    _fn("where", "bool", "f", "f2"),
    _fn("clip", "f", "s", "pos"),
]


@pytest.mark.parametrize(("fn", "kinds"), BINARY)
def test_binary(fn: Callable[..., Any], kinds: tuple[str, ...]) -> None:
    _check(fn, kinds)


_C34 = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4)  # a NumPy constant
_J34 = jnp.asarray(_C34[::-1] + 2.0)  # a JAX constant, positive

MIXED = [  # a tj function with one operand a constant: Python scalar or array, either side
    pytest.param(lambda ns, x: ns.add(x, 2.0), ("f",), id="add-scalar"),
    pytest.param(lambda ns, x: ns.subtract(2.0, x), ("f",), id="subtract-scalar-left"),
    pytest.param(lambda ns, x: ns.multiply(_J34, x), ("f",), id="multiply-jax-left"),
    pytest.param(lambda ns, x: ns.divide(x, _J34), ("f",), id="divide-jax-right"),
    pytest.param(lambda ns, x: ns.power(x, 3), ("f",), id="power-int"),
    pytest.param(lambda ns, x: ns.power(2.0, x), ("f",), id="power-scalar-base"),
    pytest.param(lambda ns, x: ns.maximum(x, 0.0), ("f",), id="maximum-scalar"),
    pytest.param(lambda ns, x: ns.minimum(_C34, x), ("f",), id="minimum-numpy-left"),
    pytest.param(lambda ns, x: ns.where(x > 0, x, 0.0), ("f",), id="where-rt-cond"),
    pytest.param(lambda ns, c: ns.where(c, _C34, _J34), ("bool",), id="where-const-branches"),
    pytest.param(lambda ns, x: ns.where(_C34 > 0, x, -1.0), ("f",), id="where-const-cond"),
    pytest.param(lambda ns, x: ns.clip(x, -0.5, 0.5), ("f",), id="clip-scalars"),
    pytest.param(lambda ns, x: ns.clip(x, max=0.25), ("f",), id="clip-max-only"),
    pytest.param(lambda ns, x: ns.greater(x, _C34), ("f",), id="greater-numpy"),
    pytest.param(lambda ns, x: ns.equal(x, 3), ("i",), id="equal-int-scalar"),
    pytest.param(lambda ns, x: ns.logical_and(x, True), ("bool",), id="logical_and-scalar"),
    pytest.param(lambda ns, x: ns.add(x, 1), ("i",), id="add-int-stays-int32"),
    pytest.param(lambda ns, x: ns.multiply(x, 0.5), ("i",), id="multiply-int-by-float"),
]


@pytest.mark.parametrize(("fn", "kinds"), MIXED)
def test_binary_with_constants(fn: Callable[..., Any], kinds: tuple[str, ...]) -> None:
    _check(fn, kinds)


# ---------------------------------------------------------------------------------------------
# Python operators on RTs
# ---------------------------------------------------------------------------------------------


def _op(fn: Callable[..., Any], *kinds: str, id: str) -> Any:
    return pytest.param(lambda ns, *xs: fn(*xs), kinds, id=id)


OPERATORS = [
    _op(lambda x, y: x + y, "f", "f2", id="rt+rt"),
    _op(lambda x, y: x - y, "f", "f2", id="rt-rt"),
    _op(lambda x, y: x * y, "f", "f2", id="rt*rt"),
    _op(lambda x, y: x / y, "f", "pos", id="rt/rt"),
    _op(lambda x, y: x // y, "f", "pos", id="rt//rt"),
    _op(lambda x, y: x % y, "f", "pos", id="rt%rt"),
    _op(lambda x, y: x**y, "pos", "f", id="rt**rt"),
    _op(lambda x, y: x @ y, "f", "mat", id="rt@rt"),
    _op(lambda x, y: x // y, "i", "i", id="int//int"),
    _op(lambda x, y: x % y, "i", "i", id="int%int"),
    _op(lambda x, y: x / y, "i", "i", id="int/int"),
    _op(lambda x: -x, "f", id="-rt"),
    _op(lambda x: +x, "f", id="+rt"),
    _op(lambda x: abs(x), "f", id="abs(rt)"),
    _op(lambda x: x + 2.0, "f", id="rt+scalar"),
    _op(lambda x: 2.0 + x, "f", id="scalar+rt"),
    _op(lambda x: x - 1.5, "f", id="rt-scalar"),
    _op(lambda x: 1.5 - x, "f", id="scalar-rt"),
    _op(lambda x: 3 * x, "f", id="int*rt"),
    _op(lambda x: x / 4, "f", id="rt/int"),
    _op(lambda x: 1.0 / x, "pos", id="scalar/rt"),
    _op(lambda x: x // 0.5, "f", id="rt//scalar"),
    _op(lambda x: 7.0 // x, "pos", id="scalar//rt"),
    _op(lambda x: x % 0.7, "f", id="rt%scalar"),
    _op(lambda x: 5.0 % x, "pos", id="scalar%rt"),
    _op(lambda x: x**2, "f", id="rt**int"),
    _op(lambda x: x**0.5, "pos", id="rt**float"),
    _op(lambda x: 2.0**x, "f", id="scalar**rt"),
    _op(lambda x: x + 1, "i", id="int-rt+int"),
    _op(lambda x: x * 2.5, "i", id="int-rt*float"),
    _op(lambda x: x + _J34, "f", id="rt+jax"),
    _op(lambda x: _J34 + x, "f", id="jax+rt"),
    _op(lambda x: _J34 - x, "f", id="jax-rt"),
    _op(lambda x: _J34 / x, "pos", id="jax/rt"),
    _op(lambda x: _C34 * x, "f", id="numpy*rt"),
    _op(lambda x: _C34 - x, "f", id="numpy-rt"),
    _op(lambda x: np.float32(2.0) * x, "f", id="numpy-scalar*rt"),
    _op(lambda x: x @ _J34.T, "f", id="rt@jax"),
    _op(lambda x: _J34.T @ x, "f", id="jax@rt"),
    _op(lambda x: _C34 @ x.T, "f", id="numpy@rt"),
    _op(lambda v, w: v @ w, "vec", "mat", id="vec@rt"),
    _op(lambda x, y: x < y, "f", "f2", id="rt<rt"),
    _op(lambda x, y: x <= y, "f", "f2", id="rt<=rt"),
    _op(lambda x, y: x > y, "f", "f2", id="rt>rt"),
    _op(lambda x, y: x >= y, "f", "f2", id="rt>=rt"),
    _op(lambda x, y: x == y, "i", "i", id="rt==rt"),
    _op(lambda x, y: x != y, "i", "i", id="rt!=rt"),
    _op(lambda x: x < 0.0, "f", id="rt<scalar"),
    _op(lambda x: 0.0 < x, "f", id="scalar<rt"),  # noqa: SIM300
    _op(lambda x: x >= _J34 - 2.0, "f", id="rt>=jax"),
    _op(lambda x: _C34 > x, "f", id="numpy>rt"),  # noqa: SIM300
    _op(lambda x: x == 3, "i", id="rt==int"),
    _op(lambda x: 3 != x, "i", id="int!=rt"),  # noqa: SIM300
    _op(lambda x, y: x & y, "bool", "bool2", id="rt&rt"),
    _op(lambda x, y: x | y, "bool", "bool2", id="rt|rt"),
    _op(lambda x, y: x ^ y, "bool", "bool2", id="rt^rt"),
    _op(lambda x: ~x, "bool", id="~bool"),
    _op(lambda x: ~x, "i", id="~int"),
    _op(lambda x: x & 3, "i", id="int-rt&int"),
    _op(lambda x: 3 & x, "i", id="int&int-rt"),
    _op(lambda x: True | x, "bool", id="bool|rt"),
    _op(lambda x: x ^ True, "bool", id="rt^bool"),
    _op(lambda x: (x > 0) & (x < 1), "f", id="chained-compare-and"),
    _op(lambda x, y: (x * y - x / (1.0 + abs(y))) ** 2, "f", "f2", id="expression"),
]


@pytest.mark.parametrize(("fn", "kinds"), OPERATORS)
def test_operators(fn: Callable[..., Any], kinds: tuple[str, ...]) -> None:
    _check(fn, kinds)


@pytest.mark.parametrize(
    ("fn", "kinds"),
    [
        _op(lambda x: True ^ x, "bool", id="bool^rt-no-__rxor__"),  # __rand__/__ror__ exist
        _op(lambda x: 5 ^ x, "i", id="int^rt-no-__rxor__"),
        _op(lambda x: x >> 1, "i", id="rt>>int"),
        _op(lambda x: 1 << x, "idx4", id="int<<rt"),
        _op(lambda x: divmod(x, 0.7), "f", id="divmod"),
    ],
)
def test_operators_missing(fn: Callable[..., Any], kinds: tuple[str, ...]) -> None:
    _check(fn, kinds)


def test_symbolic_index_in_arithmetic() -> None:
    """A dim used as a value (``x * t``, ``t + x``) joins the domain and reads its point."""
    xa = _data("f", 0)
    with tj.Program() as p:
        b, t = p.dims("b t")
        x = tj.input("x", (3, 4), jnp.float32, domain=(b,))
        left, right = x * t, t + x
        p.output("left", left)
        p.output("right", right)
    assert left.domain == right.domain == (b, t)
    assert left.shape == right.shape == (3, 4)
    assert left.dtype == right.dtype == jnp.float32
    out = tj.reference.run(p, bounds={b.bound: B, t.bound: T}, inputs={"x": xa})
    steps = np.arange(T, dtype=np.float32)[None, :, None, None]
    _assert_close(out["left"], xa[:, None] * steps)
    _assert_close(out["right"], xa[:, None] + steps)


# ---------------------------------------------------------------------------------------------
# Reductions and scans
# ---------------------------------------------------------------------------------------------

_REDUCE_KIND = {"any": "bool", "all": "bool2", "prod": "near1"}
_METHODS = ("sum", "mean", "max", "min", "prod", "std", "var", "argmax", "argmin", "any", "all")


_REDUCTION_CASES = [
    pytest.param(name, axis, keepdims, id=f"{name}-axis={axis}-keepdims={keepdims}")
    for name in (*_METHODS, "logsumexp")
    for axis, keepdims in [(None, False), (0, True), (-1, False), ((0, 1), True)]
    if not (name in ("argmax", "argmin") and isinstance(axis, tuple))  # one axis only
]


@pytest.mark.parametrize(("name", "axis", "keepdims"), _REDUCTION_CASES)
def test_reduction(name: str, axis: Any, keepdims: bool) -> None:
    """``tj.<name>(x, axis=..., keepdims=...)`` and the method ``x.<name>(...)``."""

    def fn(ns: Any, x: Any) -> Any:
        got = {"fn": getattr(ns, name)(x, axis=axis, keepdims=keepdims)}
        if name in _METHODS:
            got["method"] = getattr(x, name)(axis=axis, keepdims=keepdims)
        return got

    _check(fn, (_REDUCE_KIND.get(name, "f"),))


REDUCTIONS_MORE = [
    pytest.param(lambda ns, x: ns.max(x), ("f",), id="tj.max(x)"),
    pytest.param(lambda ns, x: ns.min(x, 0), ("f",), id="tj.min(x, 0)-positional-axis"),
    pytest.param(lambda ns, x: ns.max(x, axis=-1), ("i",), id="max-int"),
    pytest.param(lambda ns, x: ns.sum(x, axis=0), ("i",), id="sum-int"),
    pytest.param(lambda ns, x: ns.mean(x, axis=-1), ("i",), id="mean-int"),
    pytest.param(lambda ns, x: ns.sum(x), ("bool",), id="sum-bool"),
    pytest.param(lambda ns, x: x.sum(0), ("f",), id="method-positional-axis"),
    pytest.param(lambda ns, x: ns.std(x, axis=-1, ddof=1), ("f",), id="std-ddof"),
    pytest.param(lambda ns, x: x.std(axis=0, ddof=1), ("f",), id="method-std-ddof"),
    pytest.param(lambda ns, x: x.var(ddof=1, keepdims=True), ("f",), id="method-var-ddof"),
    pytest.param(lambda ns, x: ns.any(x), ("f",), id="any-float"),
    pytest.param(lambda ns, x: x.argmax(), ("s",), id="argmax-scalar"),
    pytest.param(lambda ns, x: ns.sum(x, axis=(0, 2)), ("cube",), id="sum-cube-two-axes"),
    pytest.param(lambda ns, x: ns.mean(x, axis=1, keepdims=True), ("cube",), id="mean-cube"),
    pytest.param(lambda ns, x: ns.logsumexp(x, axis=0, b=_C34), ("f",), id="logsumexp-b"),
    pytest.param(lambda ns, x: ns.cumsum(x), ("f",), id="cumsum"),
    pytest.param(lambda ns, x: ns.cumsum(x, axis=0), ("f",), id="cumsum-0"),
    pytest.param(lambda ns, x: ns.cumsum(x, axis=-1), ("i",), id="cumsum-int"),
    pytest.param(lambda ns, x: ns.cumprod(x, axis=-1), ("near1",), id="cumprod"),
    pytest.param(lambda ns, x: ns.cumprod(x), ("near1",), id="cumprod-flat"),
    pytest.param(lambda ns, x: x.cumsum(), ("f",), id="method-cumsum"),
    pytest.param(lambda ns, x: x.cumsum(axis=1), ("cube",), id="method-cumsum-1"),
]


@pytest.mark.parametrize(("fn", "kinds"), REDUCTIONS_MORE)
def test_reductions_and_scans(fn: Callable[..., Any], kinds: tuple[str, ...]) -> None:
    _check(fn, kinds)


# ---------------------------------------------------------------------------------------------
# Linear algebra
# ---------------------------------------------------------------------------------------------

_W = jnp.asarray(np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(4, 2))

LINALG = [
    _fn("matmul", "f", "mat"),
    _fn("matmul", "vec", "mat"),
    _fn("dot", "f", "mat"),
    _fn("dot", "vec", "vec2"),
    _fn("dot", "f", "vec"),
    _fn("vdot", "vec", "vec2"),
    _fn("outer", "vec", "vec2"),
    _fn("outer", "s", "vec"),
    _fn("tensordot", "f", "mat", axes=1),
    _fn("tensordot", "f", "f2", axes=2),
    pytest.param(lambda ns, x, w: ns.einsum("ij,jk->ik", x, w), ("f", "mat"), id="einsum-mm"),
    pytest.param(lambda ns, x, y: ns.einsum("ij,ij->", x, y), ("f", "f2"), id="einsum-inner"),
    pytest.param(lambda ns, x: ns.einsum("ij->ji", x), ("f",), id="einsum-transpose"),
    pytest.param(lambda ns, x: ns.einsum("bij->jb", x), ("cube",), id="einsum-reduce"),
    pytest.param(
        lambda ns, x, v: ns.einsum("ij,jk,k->i", x, _W, v[..., :2]),
        ("f", "vec"),
        id="einsum-3-operands",
    ),
    pytest.param(lambda ns, x: ns.matmul(x, _W), ("f",), id="matmul-const-right"),
    pytest.param(lambda ns, w: ns.matmul(_C34, w), ("mat",), id="matmul-const-left"),
    pytest.param(lambda ns, x: ns.outer(x, _W[:, 0]), ("vec",), id="outer-const"),
    pytest.param(lambda ns, x: ns.matmul(x, x.T), ("f",), id="gram"),
    pytest.param(lambda ns, x: ns.matmul(x, x.swapaxes(-1, -2)), ("cube",), id="batched-matmul"),
]


@pytest.mark.parametrize(("fn", "kinds"), LINALG)
def test_linear_algebra(fn: Callable[..., Any], kinds: tuple[str, ...]) -> None:
    _check(fn, kinds)


# ---------------------------------------------------------------------------------------------
# Movement
# ---------------------------------------------------------------------------------------------

MOVEMENT = [
    _fn("reshape", "f", shape=(4, 3)),
    _fn("reshape", "f", shape=(-1,)),
    _fn("reshape", "cube", shape=(6, 4)),
    _fn("ravel", "cube"),
    _fn("transpose", "f"),
    _fn("transpose", "cube", axes=(1, 2, 0)),
    _fn("permute_dims", "cube", axes=(2, 0, 1)),
    _fn("moveaxis", "cube", source=0, destination=-1),
    _fn("swapaxes", "cube", axis1=0, axis2=2),
    _fn("expand_dims", "f", axis=0),
    _fn("expand_dims", "f", axis=(0, 2)),
    _fn("squeeze", "col"),
    _fn("squeeze", "col", axis=1),
    _fn("broadcast_to", "vec", shape=(3, 4)),
    _fn("broadcast_to", "s", shape=(2, 3)),
    _fn("flip", "f"),
    _fn("flip", "f", axis=-1),
    _fn("roll", "f", shift=1, axis=-1),
    _fn("roll", "f", shift=-2),
    _fn("tile", "vec", reps=(2, 1)),
    _fn("repeat", "f", repeats=2, axis=0),
    _fn("tril", "f"),
    _fn("triu", "f", k=1),
    _fn("pad", "f", pad_width=1),
    _fn("pad", "f", pad_width=((1, 0), (0, 2)), constant_values=-1.0),
    _fn("pad", "vec", pad_width=(2, 1), mode="edge"),
    pytest.param(
        lambda ns, x: ns.pad(x, 1, constant_values=x[..., 0, 0]), ("f",), id="pad-rt-value"
    ),
    pytest.param(lambda ns, x: x.reshape(4, 3), ("f",), id="method-reshape-args"),
    pytest.param(lambda ns, x: x.reshape((2, 6)), ("f",), id="method-reshape-tuple"),
    pytest.param(lambda ns, x: x.reshape([-1, 2]), ("f",), id="method-reshape-list"),
    pytest.param(lambda ns, x: x.reshape(-1), ("cube",), id="method-reshape-flat"),
    pytest.param(lambda ns, x: x.T, ("f",), id="method-T"),
    pytest.param(lambda ns, x: x.T, ("cube",), id="method-T-3d"),
    pytest.param(lambda ns, x: x.mT, ("cube",), id="method-mT"),
    pytest.param(lambda ns, x: x.transpose(), ("cube",), id="method-transpose"),
    pytest.param(lambda ns, x: x.transpose(2, 0, 1), ("cube",), id="method-transpose-args"),
    pytest.param(lambda ns, x: x.transpose((1, 0, 2)), ("cube",), id="method-transpose-tuple"),
    pytest.param(lambda ns, x: x.swapaxes(0, 1), ("cube",), id="method-swapaxes"),
    pytest.param(lambda ns, x: x.squeeze(), ("col",), id="method-squeeze"),
    pytest.param(lambda ns, x: x.squeeze(1), ("col",), id="method-squeeze-axis"),
    pytest.param(lambda ns, x: x.flatten(), ("cube",), id="method-flatten"),
    pytest.param(lambda ns, x: x.ravel(), ("f",), id="method-ravel"),
    pytest.param(lambda ns, x: x.clip(-0.5, 0.5), ("f",), id="method-clip"),
    pytest.param(lambda ns, x: x.clip(max=0.0), ("f",), id="method-clip-max"),
    pytest.param(lambda ns, x: x.round(), ("f",), id="method-round"),
    pytest.param(lambda ns, x: x.round(2), ("f",), id="method-round-decimals"),
]


@pytest.mark.parametrize(("fn", "kinds"), MOVEMENT)
def test_movement(fn: Callable[..., Any], kinds: tuple[str, ...]) -> None:
    _check(fn, kinds)


JOIN_SPLIT = [
    pytest.param(lambda ns, x, y: ns.concatenate([x, y]), ("f", "f2"), id="concatenate"),
    pytest.param(
        lambda ns, x, y: ns.concatenate((x, y, x), axis=-1), ("f", "f2"), id="concatenate-tuple"
    ),
    pytest.param(
        lambda ns, x: ns.concatenate([x, _C34], axis=0), ("f",), id="concatenate-with-const"
    ),
    pytest.param(lambda ns, x, y: ns.stack([x, y]), ("f", "f2"), id="stack"),
    pytest.param(lambda ns, x, y: ns.stack([x, y, x], axis=-1), ("f", "f2"), id="stack-last"),
    pytest.param(lambda ns, x: ns.stack([_C34, x], axis=1), ("f",), id="stack-with-const"),
    pytest.param(lambda ns, x: ns.split(x, 2, axis=1), ("f",), id="split-sections"),
    pytest.param(lambda ns, x: ns.split(x, [1, 3], axis=-1), ("f",), id="split-indices"),
    pytest.param(lambda ns, x: ns.split(x, 3), ("f",), id="split-axis0"),
]


@pytest.mark.parametrize(("fn", "kinds"), JOIN_SPLIT)
def test_join_and_split(fn: Callable[..., Any], kinds: tuple[str, ...]) -> None:
    _check(fn, kinds)


def test_split_returns_a_list_of_rts() -> None:
    with tj.Program() as p:
        (b,) = p.dims("b")
        x = tj.input("x", (3, 4), jnp.float32, domain=(b,))
        parts = tj.split(x, [1, 3], axis=-1)
    assert isinstance(parts, list)
    assert [part.shape for part in parts] == [(3, 1), (3, 2), (3, 1)]
    assert all(_is_rt(part) and part.domain == (b,) for part in parts)


# ---------------------------------------------------------------------------------------------
# Gathers and neural-network helpers
# ---------------------------------------------------------------------------------------------

_TABLE = jnp.asarray(np.arange(30, dtype=np.float32).reshape(5, 6) / 7.0)  # an embedding table

GATHER = [
    pytest.param(lambda ns, x, i: ns.take(x, i, axis=0), ("f", "idx3"), id="take-axis0"),
    pytest.param(lambda ns, x, i: ns.take(x, i), ("f", "idx3"), id="take-flat"),
    pytest.param(lambda ns, i: ns.take(_TABLE, i, axis=0), ("label",), id="take-embedding"),
    pytest.param(lambda ns, x: ns.take(x, jnp.array([2, 0]), axis=1), ("f",), id="take-const-idx"),
    pytest.param(lambda ns, x, i: x.take(i, axis=0), ("f", "idx3"), id="method-take"),
    pytest.param(
        lambda ns, x, i: ns.take_along_axis(x, i, axis=-1), ("f", "idx4"), id="take_along_axis"
    ),
    pytest.param(
        lambda ns, x, i: ns.take_along_axis(x, i[..., :1], axis=1), ("f", "idx4"), id="tala-keep"
    ),
    pytest.param(
        lambda ns, x: ns.take_along_axis(x, ns.argmax(x, axis=-1, keepdims=True), axis=-1),
        ("f",),
        id="take_along_axis-argmax",
    ),
    _fn("one_hot", "label", num_classes=5),
    _fn("one_hot", "idx4", num_classes=4),
    _fn("one_hot", "label", num_classes=5, dtype=jnp.int32),
    pytest.param(
        lambda ns, i, x: ns.sum(ns.one_hot(i, 4) * x[..., 0, :]),
        ("label", "f"),
        id="one_hot-select",
    ),
]


@pytest.mark.parametrize(("fn", "kinds"), GATHER)
def test_gather_and_one_hot(fn: Callable[..., Any], kinds: tuple[str, ...]) -> None:
    _check(fn, kinds)


# ---------------------------------------------------------------------------------------------
# Dtypes
# ---------------------------------------------------------------------------------------------

ASTYPE = [
    (jnp.float32, "int32", jnp.int32),
    (jnp.float32, "bool", jnp.bool_),
    (jnp.float32, "float16", jnp.float16),
    (jnp.float32, "bfloat16", jnp.bfloat16),
    (jnp.bool_, "float32", jnp.float32),
    (jnp.int32, "float32", jnp.float32),
    (jnp.int32, "uint8", jnp.uint8),
]


@pytest.mark.parametrize(
    ("src", "dtype"), [pytest.param(s, d, id=f"{np.dtype(s).name}->{n}") for s, n, d in ASTYPE]
)
def test_astype(src: Any, dtype: Any) -> None:
    kind = {jnp.float32: "f", jnp.bool_: "bool", jnp.int32: "i"}[src]

    def fn(ns: Any, x: Any) -> Any:
        return {"method": x.astype(dtype), "fn": ns.astype(x, dtype), "name": x.astype("float32")}

    _check(fn, (kind,))
    with tj.Program() as p:
        (b,) = p.dims("b")
        x = tj.input("x", (3, 4), src, domain=(b,))
        assert x.astype(dtype).dtype == np.dtype(dtype)
        assert tj.astype(x, dtype).dtype == np.dtype(dtype)
        assert (x.astype(dtype) * 2).dtype == (jnp.zeros((), dtype) * 2).dtype


def test_promotion_is_reported_in_dtype() -> None:
    with tj.Program() as p:
        (b,) = p.dims("b")
        i = tj.input("i", (3,), jnp.int32, domain=(b,))
        f = tj.input("f", (3,), jnp.float16, domain=(b,))
        assert (i + 1).dtype == jnp.int32
        assert (i + 1.0).dtype == jnp.float32
        assert (i / 2).dtype == jnp.float32
        assert (i < 2).dtype == jnp.bool_
        assert (f * 2.0).dtype == jnp.float16  # Python scalars are weakly typed
        assert (f + i).dtype == jnp.float16
        assert tj.argmax(f).dtype == jnp.int32
        assert tj.mean(i).dtype == jnp.float32
        p.output("y", f * 2.0 + i)
    ia = np.arange(B * 3, dtype=np.int32).reshape(B, 3)
    fa = np.full((B, 3), 0.5, np.float16)
    out = tj.reference.run(p, bounds={b.bound: B}, inputs={"i": ia, "f": fa})["y"]
    assert out.dtype == jnp.float16
    _assert_close(out, jnp.asarray(fa) * 2.0 + jnp.asarray(ia))


@pytest.mark.parametrize(
    ("make", "oracle"),
    [
        pytest.param(lambda: tj.const(2.0), jnp.asarray(2.0), id="const"),
        pytest.param(lambda: tj.full((3, 4), 2.0), jnp.full((3, 4), 2.0), id="full"),
    ],
)
def test_weak_constant_keeps_narrow_dtype(make: Callable[[], Any], oracle: Any) -> None:
    xa = _data("f", 0).astype(jnp.bfloat16)
    with tj.Program() as p:
        (b,) = p.dims("b")
        x = tj.input("x", (3, 4), jnp.bfloat16, domain=(b,))
        y = x + make()
        p.output("y", y)
    want = jnp.asarray(xa) + oracle  # bfloat16: the constants are weakly typed in JAX
    assert y.dtype == want.dtype
    out = tj.reference.run(p, bounds={b.bound: B}, inputs={"x": xa})["y"]
    assert out.dtype == want.dtype
    _assert_close(out, want)


# ---------------------------------------------------------------------------------------------
# Spatial indexing
# ---------------------------------------------------------------------------------------------


SPATIAL_KEYS = [  # keys for the spatial dims of "f" (3, 4) or "cube" (2, 3, 4)
    pytest.param((2,), "f", id="int"),
    pytest.param((-1,), "f", id="negative-int"),
    pytest.param((slice(1, None), slice(None, None, 2)), "f", id="slices-with-step"),
    pytest.param((slice(None, None, -1), -1), "f", id="reverse-then-int"),
    pytest.param((slice(None), None), "f", id="newaxis"),
    pytest.param(([0, 2],), "f", id="int-list"),
    pytest.param((Ellipsis, 0), "f", id="ellipsis-after-domain"),
    pytest.param((1, Ellipsis, slice(None, 2)), "cube", id="int-ellipsis-slice"),
    pytest.param((slice(None), 1, slice(2, 4)), "cube", id="cube-mixed"),
]


@pytest.mark.parametrize(("key", "kind"), SPATIAL_KEYS)
def test_spatial_getitem_after_domain_entry(key: tuple[Any, ...], kind: str) -> None:
    """``x[b, *key]`` and ``x[:, *key]`` keep the domain and index each point's array."""

    def fn(ns: Any, x: Any) -> Any:
        if ns is _JAX:
            return {"dim": x[key], "colon": x[key]}
        return {"dim": x[(x.domain[0], *key)], "colon": x[(slice(None), *key)]}

    _check(fn, (kind,))


GETITEM_SAME = [  # keys that index a point's array and the RT alike
    pytest.param(lambda ns, x: x[..., 0], ("f",), id="x[..., 0]"),
    pytest.param(lambda ns, x: x[..., 1:3], ("f",), id="x[..., 1:3]"),
    pytest.param(lambda ns, x: x[..., None, :], ("f",), id="x[..., None, :]"),
    pytest.param(lambda ns, x: x[..., 1, ::-1], ("cube",), id="x[..., 1, ::-1]"),
    pytest.param(lambda ns, x, i: x[..., i, :], ("f", "row"), id="x[..., rt_index, :]"),
    pytest.param(lambda ns, x, i: x[..., i], ("f", "row"), id="x[..., rt_index]"),
    pytest.param(lambda ns, x: x[..., 0][..., 1:], ("f",), id="chained"),
]


@pytest.mark.parametrize(("fn", "kinds"), GETITEM_SAME)
def test_spatial_getitem_with_ellipsis(fn: Callable[..., Any], kinds: tuple[str, ...]) -> None:
    _check(fn, kinds)


def test_spatial_getitem_with_rt_index() -> None:
    """A data-dependent spatial index: ``x[b, i]`` with ``i`` an int RT."""
    _check(
        lambda ns, x, i: x[i] if ns is _JAX else x[x.domain[0], i],
        ("f", "row"),
    )


def test_getitem_on_empty_domain_is_spatial() -> None:
    """Once the domain is indexed away (or was empty), every entry indexes spatially."""
    xa, ca = _data("f", 0), _data("cube", 1)[0]
    with tj.Program() as p:
        (b,) = p.dims("b")
        x = tj.input("x", (3, 4), jnp.float32, domain=(b,))
        c = tj.input("c", (2, 3, 4), jnp.float32)
        k = tj.const(_C34)
        got = {
            "x0_row1": x[0][1],
            "xlast_2": x[-1, 2],
            "x1_slices": x[1][1:, ::2],
            "c2": c[1],
            "c_slices": c[:, 1:, ::-2],
            "k": k[1:, ::2],
            "k_ellipsis": k[..., 0],
        }
        for name, rt in got.items():
            p.output(name, rt)
    want = {
        "x0_row1": xa[0][1],
        "xlast_2": xa[-1, 2],
        "x1_slices": xa[1][1:, ::2],
        "c2": ca[1],
        "c_slices": ca[:, 1:, ::-2],
        "k": _C34[1:, ::2],
        "k_ellipsis": _C34[..., 0],
    }
    out = tj.reference.run(p, bounds={b.bound: B}, inputs={"x": xa, "c": ca})
    for name, rt in got.items():
        assert rt.domain == (), name
        assert rt.shape == want[name].shape, name
        assert rt.dtype == jnp.float32, name
        _assert_close(out[name], want[name])


def test_domain_slice_then_spatial() -> None:
    """``x[b][1:, ::2]``: ``x[b]`` keeps the domain, so ``1:`` slices it (INDEXING.md)."""
    xa = _data("f", 0)
    with tj.Program() as p:
        (b,) = p.dims("b")
        x = tj.input("x", (3, 4), jnp.float32, domain=(b,))
        y = x[b][1:, ::2]
        p.output("y", y)
    assert x[b].domain == (b,)
    assert y.domain == ()
    assert y.shape == (b.bound - 1, 2, 4)  # symbolic: B - 1 points
    out = tj.reference.run(p, bounds={b.bound: B}, inputs={"x": xa})["y"]
    _assert_close(out, xa[1:, ::2])


# ---------------------------------------------------------------------------------------------
# Creation
# ---------------------------------------------------------------------------------------------

CREATION = [
    pytest.param(lambda: tj.const(_C34), _C34, id="const-numpy"),
    pytest.param(lambda: tj.const(_J34), _J34, id="const-jax"),
    pytest.param(lambda: tj.const([1, 2, 3]), jnp.asarray([1, 2, 3]), id="const-list"),
    pytest.param(lambda: tj.const(2.5), jnp.asarray(2.5), id="const-scalar"),
    pytest.param(
        lambda: tj.const([1, 2], dtype=jnp.float16),
        jnp.asarray([1, 2], jnp.float16),
        id="const-dtype",
    ),
    pytest.param(lambda: tj.zeros((2, 3)), jnp.zeros((2, 3)), id="zeros"),
    pytest.param(lambda: tj.zeros((4,), jnp.int32), jnp.zeros((4,), jnp.int32), id="zeros-int"),
    pytest.param(lambda: tj.ones((3, 1)), jnp.ones((3, 1)), id="ones"),
    pytest.param(lambda: tj.ones((2,), jnp.bool_), jnp.ones((2,), jnp.bool_), id="ones-bool"),
    pytest.param(lambda: tj.full((2, 2), 7), jnp.full((2, 2), 7), id="full-int"),
    pytest.param(lambda: tj.full((3,), -1.5), jnp.full((3,), -1.5), id="full-float"),
    pytest.param(lambda: tj.full((2,), 3, dtype=jnp.float32), jnp.full((2,), 3.0), id="full-dtype"),
]


@pytest.mark.parametrize(("make", "want"), CREATION)
def test_creation(make: Callable[[], Any], want: Any) -> None:
    """Constants have an empty domain and broadcast over any domain they meet."""
    want = jnp.asarray(want)
    xa = _data("s", 0)
    with tj.Program() as p:
        (b,) = p.dims("b")
        x = tj.input("x", (), jnp.float32, domain=(b,))
        c = make()
        mixed = c * x
        p.output("c", c)
        p.output("mixed", mixed)
    assert _is_rt(c)
    assert c.domain == ()
    assert c.shape == want.shape
    assert c.dtype == want.dtype
    assert mixed.domain == (b,)
    out = tj.reference.run(p, bounds={b.bound: B}, inputs={"x": xa})
    assert out["c"].dtype == want.dtype
    _assert_close(out["c"], want)
    _assert_close(out["mixed"], _per_point(lambda ns, v: want * v, [xa]))


@pytest.mark.parametrize("kind", ["f", "i", "bool", "s"])
def test_zeros_like_and_ones_like(kind: str) -> None:
    _check(lambda ns, x: {"z": ns.zeros_like(x), "o": ns.ones_like(x)}, (kind,))


# ---------------------------------------------------------------------------------------------
# tj.lift
# ---------------------------------------------------------------------------------------------


def _pytree_fn(x: Any, w: Any, *, scale: float = 1.0) -> Any:
    h = jnp.tanh(x @ w) * scale
    return {"h": h, "stats": (h.sum(), h.argmax(axis=-1)), "mask": [x > 0]}


def _attention(q: Any, k: Any) -> tuple[Any, Any]:
    weights = jax.nn.softmax(q @ k.T / jnp.sqrt(q.shape[-1]), axis=-1)
    return weights @ k, weights


LIFT = [
    pytest.param(lambda ns, x, w: ns.lift(_pytree_fn)(x, w), ("f", "mat"), id="pytree-out"),
    pytest.param(
        lambda ns, x, w: ns.lift(_pytree_fn)(x, w, scale=0.5), ("f", "mat"), id="pytree-kwarg"
    ),
    pytest.param(lambda ns, x: ns.lift(_pytree_fn)(x, _W), ("f",), id="const-arg"),
    pytest.param(
        lambda ns, x, w: ns.lift(lambda d: d["x"] @ d["w"])({"x": x, "w": w}),
        ("f", "mat"),
        id="pytree-in",
    ),
    pytest.param(
        lambda ns, x, v: ns.lift(lambda a, pair: (a * pair[0], a - pair[1]))(x, (v, 1.0)),
        ("f", "vec"),
        id="tuple-in-tuple-out",
    ),
    pytest.param(lambda ns, q, k: ns.lift(_attention)(q, k), ("f", "f2"), id="attention"),
    pytest.param(lambda ns, x: ns.lift(jax.vmap(jnp.linalg.norm))(x), ("f",), id="vmapped-inside"),
    pytest.param(
        lambda ns, x: ns.lift(lambda y: jax.lax.fori_loop(0, 3, lambda i, c: c * 0.5 + 1.0, y))(x),
        ("f",),
        id="fori_loop-inside",
    ),
    pytest.param(
        lambda ns, x: ns.lift(jax.grad(lambda y: jnp.sum(jnp.sin(y) ** 2)))(x),
        ("f",),
        id="grad-inside",
    ),
    pytest.param(lambda ns, x: ns.lift(jnp.sort, name="sort")(x, axis=-1), ("f",), id="named"),
]


@pytest.mark.parametrize(("fn", "kinds"), LIFT)
def test_lift(fn: Callable[..., Any], kinds: tuple[str, ...]) -> None:
    _check(fn, kinds)


def test_lift_metadata_of_pytree_outputs() -> None:
    with tj.Program() as p:
        b, t = p.dims("b t")
        x = tj.input("x", (3, 4), jnp.float32, domain=(b,))
        w = tj.input("w", (4, 2), jnp.float32, domain=(t,))
        out = tj.lift(_pytree_fn)(x, w)
    assert set(out) == {"h", "stats", "mask"}
    assert isinstance(out["stats"], tuple)
    assert isinstance(out["mask"], list)
    h, (total, idx), (mask,) = out["h"], out["stats"], out["mask"]
    assert (h.shape, h.dtype, h.domain) == ((3, 2), jnp.float32, (b, t))
    assert (total.shape, total.dtype, total.domain) == ((), jnp.float32, (b, t))
    assert (idx.shape, idx.dtype, idx.domain) == ((3,), jnp.int32, (b, t))
    assert (mask.shape, mask.dtype, mask.domain) == ((3, 4), jnp.bool_, (b, t))


def test_lift_without_symbolic_arguments_calls_the_function() -> None:
    with tj.Program():
        got = tj.lift(jnp.cumsum)(jnp.arange(4))
    assert isinstance(got, jax.Array)
    np.testing.assert_array_equal(got, np.array([0, 1, 3, 6]))


@pytest.mark.parametrize("kinds", [("f",), ("cube",)])
def test_lift_flax_module(kinds: tuple[str, ...]) -> None:
    module = nn.Dense(5)
    params = module.init(jax.random.PRNGKey(0), jnp.ones((3, 4)))
    _check(lambda ns, x: ns.lift(module.apply)(params, x), kinds)


def test_lift_flax_module_with_params_as_input() -> None:
    """The params may be RTs too: a pytree of program inputs passed to the lifted apply."""

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            return nn.Dense(2)(nn.relu(nn.Dense(6)(x)))

    module = MLP()
    params = module.init(jax.random.PRNGKey(1), jnp.ones((4,)))
    xa = _data("f", 0)
    flat, treedef = jax.tree.flatten(params)
    with tj.Program() as p:
        (b,) = p.dims("b")
        x = tj.input("x", (3, 4), jnp.float32, domain=(b,))
        leaves = [tj.input(f"p{k}", leaf.shape, leaf.dtype) for k, leaf in enumerate(flat)]
        y = tj.lift(module.apply)(jax.tree.unflatten(treedef, leaves), x)
        p.output("y", y)
    assert (y.shape, y.dtype, y.domain) == ((3, 2), jnp.float32, (b,))
    inputs = {"x": xa, **{f"p{k}": leaf for k, leaf in enumerate(flat)}}
    out = tj.reference.run(p, bounds={b.bound: B}, inputs=inputs)["y"]
    _assert_close(out, np.stack([module.apply(params, xa[i]) for i in range(B)]))


# ---------------------------------------------------------------------------------------------
# Domains of results
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        pytest.param(lambda ns, x, w: x @ w, id="matmul-operator"),
        pytest.param(lambda ns, x, w: ns.matmul(x, w), id="matmul"),
        pytest.param(lambda ns, x, w: ns.einsum("ij,jk->ki", x, w), id="einsum"),
        pytest.param(lambda ns, x, w: ns.stack([x[..., :2, :], w.T]), id="stack"),
        pytest.param(lambda ns, x, w: ns.lift(lambda a, c: (a @ c, c.sum()))(x, w), id="lift"),
    ],
)
@pytest.mark.parametrize("order", ["x-over-b", "x-over-t"])
def test_domain_is_the_union_in_declaration_order(fn: Callable[..., Any], order: str) -> None:
    """``x`` over one dim, ``w`` over the other: the result is over ``(b, t)`` either way."""
    x_dim, w_dim = ("b", "t") if order == "x-over-b" else ("t", "b")
    bounds_of = {"b": B, "t": T}
    xa = _data("f", 0)[: bounds_of[x_dim]]
    wa = _data("mat", 1)[: bounds_of[w_dim]]
    with tj.Program() as p:
        b, t = p.dims("b t")
        dims = {"b": b, "t": t}
        x = tj.input("x", (3, 4), jnp.float32, domain=(dims[x_dim],))
        w = tj.input("w", (4, 2), jnp.float32, domain=(dims[w_dim],))
        result = fn(tj, x, w)
        leaves = jax.tree.leaves(result, is_leaf=_is_rt)
        for k, leaf in enumerate(leaves):
            p.output(f"out{k}", leaf)
    for leaf in leaves:
        assert leaf.domain == (b, t)
    out = tj.reference.run(p, bounds={b.bound: B, t.bound: T}, inputs={"x": xa, "w": wa})
    for i, j in itertools.product(range(B), range(T)):
        xi, wi = (i, j) if order == "x-over-b" else (j, i)
        want = jax.tree.leaves(fn(_JAX, jnp.asarray(xa[xi]), jnp.asarray(wa[wi])))
        for k, (leaf, expected) in enumerate(zip(leaves, want, strict=True)):
            assert leaf.shape == expected.shape
            _assert_close(out[f"out{k}"][i, j], expected)


def test_domain_of_ops_with_constants_and_views() -> None:
    with tj.Program() as p:
        b, t = p.dims("b t")
        x = tj.input("x", (3,), jnp.float32, domain=(b,))
        y = tj.input("y", (3,), jnp.float32, domain=(b, t))
        c = tj.const(np.ones(3, np.float32))
        assert (x + c).domain == (b,)
        assert (c + 1.0).domain == ()
        assert (x + y).domain == (b, t)
        assert (y + x).domain == (b, t)
        assert (x[0] + y).domain == (b, t)
        assert (x[0] * c).domain == ()
        assert y[:, 0].domain == (b,)
        assert (y[0] + x).domain == (b, t)
        assert tj.sum(y[0, 0:T], axis=0).domain == ()
        assert tj.sum(y[b, 0:T], axis=0).shape == (3,)
        assert tj.stack([x, y[:, 0], c]).domain == (b,)
        assert tj.where(x > 0, y, c).domain == (b, t)


# ---------------------------------------------------------------------------------------------
# Randomness
# ---------------------------------------------------------------------------------------------

_KEY = np.asarray(jax.random.PRNGKey(42))
_KEY2 = np.asarray(jax.random.PRNGKey(7))
_LOGITS = jnp.asarray(np.linspace(-1.0, 1.0, 40, dtype=np.float32).reshape(8, 5))

RANDOM = [  # (draw with tj at a domain, the same draw with jax.random from a folded key)
    pytest.param(
        lambda k, dom: tj.random.normal(k, (4,), domain=dom),
        lambda k: jax.random.normal(k, (4,)),
        id="normal",
    ),
    pytest.param(
        lambda k, dom: tj.random.normal(k, (2, 3), jnp.float16, domain=dom),
        lambda k: jax.random.normal(k, (2, 3), jnp.float16),
        id="normal-float16",
    ),
    pytest.param(
        lambda k, dom: tj.random.uniform(k, (5,), domain=dom),
        lambda k: jax.random.uniform(k, (5,)),
        id="uniform",
    ),
    pytest.param(
        lambda k, dom: tj.random.uniform(k, (5,), minval=-2.0, maxval=3.0, domain=dom),
        lambda k: jax.random.uniform(k, (5,), minval=-2.0, maxval=3.0),
        id="uniform-range",
    ),
    pytest.param(
        lambda k, dom: tj.random.bernoulli(k, 0.3, (16,), domain=dom),
        lambda k: jax.random.bernoulli(k, 0.3, (16,)),
        id="bernoulli",
    ),
    pytest.param(
        lambda k, dom: tj.random.categorical(k, _LOGITS, domain=dom),
        lambda k: jax.random.categorical(k, _LOGITS),
        id="categorical",
    ),
    pytest.param(
        lambda k, dom: tj.random.categorical(k, _LOGITS.T, axis=0, domain=dom),
        lambda k: jax.random.categorical(k, _LOGITS.T, axis=0),
        id="categorical-axis0",
    ),
    pytest.param(
        lambda k, dom: tj.random.randint(k, (8,), 0, 100, domain=dom),
        lambda k: jax.random.randint(k, (8,), 0, 100),
        id="randint",
    ),
]


def _run_random(draw: Callable[..., Any], key: np.ndarray, dims: str) -> tuple[Any, Any]:
    with tj.Program() as p:
        syms = p.dims("b t")
        k = tj.input("key", (2,), jnp.uint32)
        r = draw(k, tuple(s for s in syms if s.name in dims))
        p.output("r", r)
    out = tj.reference.run(p, bounds={"B": B, "T": T}, inputs={"key": key})["r"]
    return r, out


@pytest.mark.parametrize(("draw", "oracle"), RANDOM)
def test_random_over_one_dim(draw: Callable[..., Any], oracle: Callable[..., Any]) -> None:
    r, out = _run_random(draw, _KEY, "b")
    want = np.stack([oracle(jax.random.fold_in(_KEY, i)) for i in range(B)])
    assert [s.name for s in r.domain] == ["b"]
    assert r.shape == want.shape[1:]
    assert r.dtype == want.dtype
    assert out.shape == want.shape
    assert out.dtype == want.dtype
    _assert_close(out, want)
    _, again = _run_random(draw, _KEY, "b")
    np.testing.assert_array_equal(again, out)  # deterministic
    _, other = _run_random(draw, _KEY2, "b")
    assert not np.array_equal(other, out)  # depends on the key
    for i, j in itertools.combinations(range(B), 2):
        assert not np.array_equal(out[i], out[j]), (i, j)  # differs across the domain


@pytest.mark.parametrize(("draw", "oracle"), RANDOM[:1] + RANDOM[4:6])
def test_random_over_two_dims_folds_in_declaration_order(
    draw: Callable[..., Any], oracle: Callable[..., Any]
) -> None:
    r, out = _run_random(draw, _KEY, "bt")
    assert [s.name for s in r.domain] == ["b", "t"]
    for i, j in itertools.product(range(B), range(T)):
        folded = jax.random.fold_in(jax.random.fold_in(_KEY, i), j)
        _assert_close(out[i, j], oracle(folded))
    r, out = _run_random(draw, _KEY, "t")
    assert [s.name for s in r.domain] == ["t"]
    for j in range(T):
        _assert_close(out[j], oracle(jax.random.fold_in(_KEY, j)))


def test_random_without_domain_uses_the_key() -> None:
    r, out = _run_random(RANDOM[0].values[0], _KEY, "")
    assert r.domain == ()
    _assert_close(out, jax.random.normal(jnp.asarray(_KEY), (4,)))


def test_random_with_constant_key_and_rt_arguments() -> None:
    """A constant key works too; logits and probabilities may be RTs over the domain."""
    key = jax.random.PRNGKey(3)
    logits, probs = _data("f", 0), _data("pos", 1) / 2.0
    with tj.Program() as p:
        (b,) = p.dims("b")
        lg = tj.input("logits", (3, 4), jnp.float32, domain=(b,))
        pr = tj.input("probs", (3, 4), jnp.float32, domain=(b,))
        cat = tj.random.categorical(key, lg, domain=(b,))
        ber = tj.random.bernoulli(key, pr, domain=(b,))
        nrm = tj.random.normal(key, (2,), domain=(b,)) * lg[:, 0, :2]
        p.output("cat", cat)
        p.output("ber", ber)
        p.output("nrm", nrm)
    assert (cat.shape, cat.dtype, cat.domain) == ((3,), jnp.int32, (b,))
    assert (ber.shape, ber.dtype, ber.domain) == ((3, 4), jnp.bool_, (b,))
    out = tj.reference.run(p, bounds={b.bound: B}, inputs={"logits": logits, "probs": probs})
    keys = [jax.random.fold_in(key, i) for i in range(B)]
    _assert_close(
        out["cat"], np.stack([jax.random.categorical(keys[i], logits[i]) for i in range(B)])
    )
    _assert_close(out["ber"], np.stack([jax.random.bernoulli(keys[i], probs[i]) for i in range(B)]))
    want_nrm = np.stack([jax.random.normal(keys[i], (2,)) * logits[i, 0, :2] for i in range(B)])
    _assert_close(out["nrm"], want_nrm)


def test_random_key_with_its_own_domain_is_folded_too() -> None:
    """A key input over ``(b,)`` is folded with ``b`` at each point."""
    keys = np.stack([np.asarray(jax.random.PRNGKey(s)) for s in range(B)])
    with tj.Program() as p:
        (b,) = p.dims("b")
        k = tj.input("key", (2,), jnp.uint32, domain=(b,))
        r = tj.random.uniform(k, (3,))
        p.output("r", r)
    assert r.domain == (b,)
    out = tj.reference.run(p, bounds={b.bound: B}, inputs={"key": keys})["r"]
    want = np.stack([jax.random.uniform(jax.random.fold_in(keys[i], i), (3,)) for i in range(B)])
    _assert_close(out, want)


def test_key_at_feeds_lifted_functions() -> None:
    with tj.Program() as p:
        (b,) = p.dims("b")
        k = tj.input("key", (2,), jnp.uint32)
        r = tj.lift(jax.random.normal)(tj.random.key_at(k, (b,)), (3,))
        p.output("r", r)
    assert (r.shape, r.domain) == ((3,), (b,))
    out = tj.reference.run(p, bounds={b.bound: B}, inputs={"key": _KEY})["r"]
    _assert_close(
        out, np.stack([jax.random.normal(jax.random.fold_in(_KEY, i), (3,)) for i in range(B)])
    )


@pytest.mark.parametrize("which", ["categorical", "bernoulli"])
def test_random_with_rt_arguments_differs_across_their_domain(which: str) -> None:
    key = jax.random.PRNGKey(0)
    with tj.Program() as p:
        (b,) = p.dims("b")
        lg = tj.input("logits", (16, 5), jnp.float32, domain=(b,))
        if which == "categorical":
            r = tj.random.categorical(key, lg)
        else:
            r = tj.random.bernoulli(key, tj.sigmoid(lg[..., 0]))
        p.output("r", r)
    assert r.domain == (b,)
    logits = np.zeros((B, 16, 5), np.float32)  # the same distribution at every point
    out = tj.reference.run(p, bounds={b.bound: B}, inputs={"logits": logits})["r"]
    for i, j in itertools.combinations(range(B), 2):
        assert not np.array_equal(out[i], out[j]), (i, j)


def test_random_domain_may_be_a_single_dim() -> None:
    with tj.Program() as p:
        (b,) = p.dims("b")
        k = tj.input("key", (2,), jnp.uint32)
        r = tj.random.normal(k, (4,), domain=b)
        p.output("r", r)
    assert r.domain == (b,)
    out = tj.reference.run(p, bounds={b.bound: B}, inputs={"key": _KEY})["r"]
    _assert_close(
        out, np.stack([jax.random.normal(jax.random.fold_in(_KEY, i), (4,)) for i in range(B)])
    )


# ---------------------------------------------------------------------------------------------
# Gaps: jax.Array methods and jax.numpy signatures not mirrored yet
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "kinds"),
    [
        pytest.param(lambda ns, x: x.cumprod(axis=-1), ("near1",), id="cumprod"),
        pytest.param(lambda ns, x, w: x.dot(w), ("f", "mat"), id="dot"),
        pytest.param(lambda ns, x: x.sort(axis=-1), ("f",), id="sort"),
        pytest.param(lambda ns, x: x.argsort(axis=-1), ("f",), id="argsort"),
        pytest.param(lambda ns, x: x.sum(axis=0, dtype=jnp.int32), ("i",), id="sum-dtype"),
        pytest.param(lambda ns, x: x.mean(where=x > 0), ("f",), id="mean-where"),
        pytest.param(lambda ns, x: x.cumsum(axis=0, dtype=jnp.float32), ("i",), id="cumsum-dtype"),
    ],
)
def test_methods_missing(fn: Callable[..., Any], kinds: tuple[str, ...]) -> None:
    _check(fn, kinds)


def test_size_property() -> None:
    with tj.Program() as p:
        (b,) = p.dims("b")
        x = tj.input("x", (3, 4), jnp.float32, domain=(b,))
        assert x.size == 12


@pytest.mark.parametrize(
    ("make", "want"),
    [
        pytest.param(lambda x: tj.zeros(3), jnp.zeros(3), id="zeros-int-shape"),
        pytest.param(lambda x: tj.ones(3), jnp.ones(3), id="ones-int-shape"),
        pytest.param(lambda x: tj.full(3, 1.5), jnp.full(3, 1.5), id="full-int-shape"),
        pytest.param(
            lambda x: tj.zeros_like(x, dtype=jnp.int32), jnp.zeros((3, 4), jnp.int32), id="zl"
        ),
        pytest.param(
            lambda x: tj.ones_like(x, dtype=jnp.bool_), jnp.ones((3, 4), jnp.bool_), id="ol"
        ),
    ],
)
def test_creation_signatures_missing(make: Callable[[Any], Any], want: Any) -> None:
    with tj.Program() as p:
        (b,) = p.dims("b")
        x = tj.input("x", (3, 4), jnp.float32, domain=(b,))
        c = make(x)
        p.output("c", c)
    out = tj.reference.run(p, bounds={b.bound: B}, inputs={"x": _data("f", 0)})["c"]
    assert (c.shape, c.dtype) == (want.shape, want.dtype)
    _assert_close(out[0] if c.domain else out, want)
