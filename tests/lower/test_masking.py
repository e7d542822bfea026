"""`masked_call` against the unpadded payload: the padding of a growing axis never leaks.

For a payload ``f`` and ``x`` of ``L`` valid rows padded with garbage (nan, inf, huge values)
to ``M`` rows, ``masked_call(f, [padded], [{axis: "n"}], {"n": L}, what)`` must equal
``f(x[:L])``: on the first ``L`` rows for outputs that keep the padded axis, everywhere for
outputs that reduce it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

import tempo_jax as tj
from tempo_jax._lower.masking import NotAligned, PerPoint, masked_call

WHAT = "`payload` at test_masking.py:1"
FLOAT_GARBAGE = (np.nan, np.inf, -np.inf, 1e30, -1e30)
lengths = st.integers(1, 5)
extras = st.integers(0, 3)  # padded rows: M = L + extra


def _data(shape: tuple[int, ...], seed: int = 0, dtype: Any = np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 100, size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


def _pad(x: np.ndarray, rows: int, axis: int = 0) -> np.ndarray:
    """``x`` padded along ``axis`` to ``rows`` with values that would show if they leaked."""
    shape = list(x.shape)
    shape[axis] = rows - x.shape[axis]
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        garbage = np.resize(np.array([info.max, info.min], x.dtype), shape)
    else:
        garbage = np.resize(np.array(FLOAT_GARBAGE, x.dtype), shape)
    return np.concatenate([x, garbage], axis=axis)


def _masked(fn: Callable[..., Any], x: np.ndarray, rows: int, axis: int = 0) -> np.ndarray:
    """``fn`` called through ``masked_call`` on ``x`` padded to ``rows`` along ``axis``."""
    padded = jnp.asarray(_pad(x, rows, axis))
    (out,) = masked_call(lambda v: [fn(v)], [padded], [{axis: "n"}], {"n": x.shape[axis]}, WHAT)
    return np.asarray(out)


def _assert_valid_part(got: Any, want: Any) -> None:
    """``got`` equals ``want`` on ``want``'s extent (the valid rows of a padded output)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.ndim == want.ndim and got.dtype == want.dtype
    valid = got[tuple(slice(0, n) for n in want.shape)]
    np.testing.assert_allclose(valid, want, rtol=1e-5, atol=1e-6)


# -- reductions and scans along the padded axis ------------------------------------------------

ALONG_AXIS_0: dict[str, Callable[[Any], Any]] = {
    "sum": lambda v: jnp.sum(v, axis=0),
    "mean": lambda v: jnp.mean(v, axis=0),
    "var": lambda v: jnp.var(v, axis=0),
    "var_ddof1": lambda v: jnp.var(v, axis=0, ddof=1),  # divides by rows - 1
    "std": lambda v: jnp.std(v, axis=0),
    "prod": lambda v: jnp.prod(v, axis=0),
    "max": lambda v: jnp.max(v, axis=0),
    "min": lambda v: jnp.min(v, axis=0),
    "argmax": lambda v: jnp.argmax(v, axis=0),
    "argmin": lambda v: jnp.argmin(v, axis=0),
    "any": lambda v: jnp.any(v > 1.0, axis=0),
    "all": lambda v: jnp.all(v > -1.5, axis=0),
    "logsumexp": lambda v: jax.nn.logsumexp(v, axis=0),
    "softmax": lambda v: jax.nn.softmax(v, axis=0),
    "log_softmax": lambda v: jax.nn.log_softmax(v, axis=0),
    "norm": lambda v: jnp.linalg.norm(v, axis=0),
    "cumsum": lambda v: jnp.cumsum(v, axis=0),
    "cumsum_reverse": lambda v: lax.cumsum(v, axis=0, reverse=True),
    "cumprod_reverse": lambda v: lax.cumprod(v, axis=0, reverse=True),
    "cummax_reverse": lambda v: lax.cummax(v, axis=0, reverse=True),
    "cummin": lambda v: lax.cummin(v, axis=0),
    "cumlogsumexp_reverse": lambda v: lax.cumlogsumexp(v, axis=0, reverse=True),
    "tanh_then_sum": lambda v: jnp.tanh(v).sum(axis=0),
    "centred_square": lambda v: ((v - v.mean(axis=0)) ** 2).sum(axis=0),
}


@pytest.mark.parametrize("length,rows", [(1, 4), (5, 9)])  # L == M: the hypothesis tests
@pytest.mark.parametrize("name", sorted(ALONG_AXIS_0))
def test_reductions_and_scans_along_the_padded_axis(name: str, length: int, rows: int) -> None:
    fn = ALONG_AXIS_0[name]
    x = _data((length, 3), seed=length)
    _assert_valid_part(_masked(fn, x, rows), fn(jnp.asarray(x)))


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(["sum", "mean", "softmax", "log_softmax", "var"]),
    length=lengths,
    extra=extras,
)
def test_sum_mean_and_softmax_at_any_length(name: str, length: int, extra: int) -> None:
    fn = ALONG_AXIS_0[name]
    x = _data((length, 2), seed=extra)
    _assert_valid_part(_masked(fn, x, length + extra), fn(jnp.asarray(x)))


@pytest.mark.parametrize("dtype", [np.int32, np.uint8])
@pytest.mark.parametrize("name", ["sum", "max", "min", "argmax", "argmin"])
def test_integer_reductions_along_the_padded_axis(name: str, dtype: Any) -> None:
    fn = ALONG_AXIS_0[name]
    x = _data((4, 3), seed=1, dtype=dtype)
    got = _masked(fn, x, 7)
    want = fn(jnp.asarray(x))
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


# -- contractions --------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(length=lengths, extra=extras)
def test_matmul_contracting_two_padded_operands(length: int, extra: int) -> None:
    x, y = _data((length, 3), seed=1), _data((length, 2), seed=2)
    rows = length + extra
    (got,) = masked_call(
        lambda a, b: [a.T @ b],
        [_pad(x, rows), _pad(y, rows)],
        [{0: "n"}, {0: "n"}],
        {"n": length},
        WHAT,
    )
    _assert_valid_part(got, x.T @ y)


@settings(max_examples=10, deadline=None)
@given(length=lengths, extra=extras)
def test_attention_over_padded_keys_and_values(length: int, extra: int) -> None:
    """A static query against padded keys: scores, softmax and the weighted sum of values."""
    q, k, v = _data((4,), seed=0), _data((length, 4), seed=1), _data((length, 3), seed=2)
    rows = length + extra

    def attend(q: Any, k: Any, v: Any) -> list[Any]:
        return [jax.nn.softmax(k @ q / 2.0) @ v]

    (got,) = masked_call(
        attend, [q, _pad(k, rows), _pad(v, rows)], [{}, {0: "n"}, {0: "n"}], {"n": length}, WHAT
    )
    _assert_valid_part(got, attend(q, k, v)[0])


EINSUMS: dict[str, Callable[[Any, Any], Any]] = {
    "contract_rows": lambda a, b: jnp.einsum("nd,ne->de", a, b),
    "batch_rows": lambda a, b: jnp.einsum("nd,nd->n", a, b),  # keeps the padded axis
    "outer_rows": lambda a, b: a @ b.T,  # (n, n): padded along both axes
    "contract_all": lambda a, b: jnp.einsum("nd,nd->", a, b),
    "gram_then_sum": lambda a, b: (a @ b.T).sum(),
}


@pytest.mark.parametrize("name", sorted(EINSUMS))
def test_einsums_over_the_padded_axis(name: str) -> None:
    fn = EINSUMS[name]
    x, y = _data((5, 3), seed=1), _data((5, 3), seed=2)
    (got,) = masked_call(
        lambda a, b: [fn(a, b)], [_pad(x, 8), _pad(y, 8)], [{0: "n"}, {0: "n"}], {"n": 5}, WHAT
    )
    _assert_valid_part(got, fn(jnp.asarray(x), jnp.asarray(y)))


def test_projecting_a_padded_value_keeps_its_padding() -> None:
    """``x @ W`` maps each row; a reduction afterwards still masks the padded rows."""
    x, w = _data((5, 3), seed=1), _data((3, 4), seed=2)

    def project(a: Any) -> Any:
        return jnp.tanh(a @ jnp.asarray(w)).max(axis=0)

    _assert_valid_part(_masked(project, x, 8), project(jnp.asarray(x)))


# -- other axes, movement, several size classes --------------------------------------------------

KEEPING_THE_AXIS: dict[str, Callable[[Any], Any]] = {
    "sum_axis1": lambda v: v.sum(axis=1),
    "softmax_axis1": lambda v: jax.nn.softmax(v, axis=1),
    "max_axis1_then_mean": lambda v: v.max(axis=1).mean(),
    "cumsum_reverse_axis1": lambda v: lax.cumsum(v, axis=1, reverse=True),
    "transpose_then_sum": lambda v: v.T.sum(axis=1),
    "transpose_kept": lambda v: jnp.transpose(v) * 1.0,
    "expand_dims_then_mean": lambda v: v[:, None, :].mean(axis=0),
    "expand_dims_kept": lambda v: jnp.expand_dims(v, 0) * 2.0,
    "reshape_split_columns": lambda v: v.reshape(v.shape[0], 2, 3).sum(axis=(0, 2)),
    "reshape_trailing_one": lambda v: v.reshape(v.shape[0], 6, 1).min(axis=0),
    "concatenate_columns": lambda v: jnp.concatenate([v, -v], axis=1).sum(axis=0),
    "split_columns": lambda v: jnp.split(v, 2, axis=1)[1].max(axis=0),
    "squeeze_then_sum": lambda v: v[None].squeeze(0).sum(),
}


@pytest.mark.parametrize("name", sorted(KEEPING_THE_AXIS))
def test_work_that_keeps_the_padded_axis_whole(name: str) -> None:
    fn = KEEPING_THE_AXIS[name]
    x = _data((5, 6), seed=3)
    _assert_valid_part(_masked(fn, x, 9), fn(jnp.asarray(x)))


TWO_D_AXIS_1: dict[str, Callable[[Any], Any]] = {
    "softmax": lambda v: jax.nn.softmax(v, axis=1),
    "mean": lambda v: v.mean(axis=1),
    "max": lambda v: v.max(axis=1),
    "gram": lambda v: v @ v.T,  # contracts the padded axis 1
    "mean_all": lambda v: v.mean(),
}


@pytest.mark.parametrize("name", sorted(TWO_D_AXIS_1))
def test_padding_on_axis_1(name: str) -> None:
    fn = TWO_D_AXIS_1[name]
    x = _data((3, 4), seed=4)
    _assert_valid_part(_masked(fn, x, 7, axis=1), fn(jnp.asarray(x)))


def test_two_inputs_of_two_size_classes() -> None:
    a, b = _data((4, 3), seed=5), _data((6, 3), seed=6)

    def cross(u: Any, w: Any) -> list[Any]:
        return [jax.nn.softmax(u @ w.T, axis=-1), u.mean() + w.mean(), (u @ w.T).max()]

    got = masked_call(cross, [_pad(a, 7), _pad(b, 8)], [{0: "m"}, {0: "n"}], {"m": 4, "n": 6}, WHAT)
    for g, w in zip(got, cross(jnp.asarray(a), jnp.asarray(b)), strict=True):
        _assert_valid_part(g, w)


# -- sizes the payload reads from shapes ---------------------------------------------------------

SIZE_LITERALS: dict[str, Callable[[Any], Any]] = {
    "discounted_sum": lambda v: (v * 0.9 ** jnp.arange(v.shape[0])[:, None]).sum(),
    "mean_over_all_axes": lambda v: v.mean(),  # divides by 3 * rows
    "sum_over_rows_plus_one": lambda v: v.sum() / (v.shape[0] + 1),
    "size_attribute": lambda v: (v**2).sum() / v.size,
    "all_but_the_last_row": lambda v: jnp.where(
        jnp.arange(v.shape[0])[:, None] < v.shape[0] - 1, v, 0.0
    ).sum(axis=0),
}


@pytest.mark.parametrize("length,rows", [(1, 4), (5, 5), (5, 9)])
@pytest.mark.parametrize("name", sorted(SIZE_LITERALS))
def test_sizes_read_from_shapes_become_the_valid_length(name: str, length: int, rows: int) -> None:
    fn = SIZE_LITERALS[name]
    x = _data((length, 3), seed=7)
    _assert_valid_part(_masked(fn, x, rows), fn(jnp.asarray(x)))


def _stats(a: Any) -> list[Any]:
    return [a.mean(axis=0), jax.nn.softmax(a, axis=0), a.sum() / (a.shape[0] + 1)]


def test_traced_lengths_under_jit_serve_every_length() -> None:
    x = _data((6, 3), seed=8)

    @jax.jit
    def payload(v: Any, n: Any) -> list[Any]:
        return masked_call(_stats, [v], [{0: "n"}], {"n": n}, WHAT)

    for length in range(1, 7):
        got = payload(jnp.asarray(_pad(x[:length], 9)), length)
        for g, w in zip(got, _stats(jnp.asarray(x[:length])), strict=True):
            _assert_valid_part(g, w)
    assert payload._cache_size() == 1  # one compilation for every length


# -- what masking cannot do ----------------------------------------------------------------------

UNSUPPORTED: dict[str, tuple[Callable[[Any], Any], str]] = {
    "flip": (lambda v: jnp.flip(v, axis=0).sum(axis=0), "rev"),
    "sort": (lambda v: jnp.sort(v, axis=0), "sort"),
    "drop_first_row": (lambda v: v[1:].sum(axis=0), "slice"),
    "last_row": (lambda v: v[-1], "slice"),
    "concatenate_rows": (lambda v: jnp.concatenate([v, v], axis=0).sum(axis=0), "concatenate"),
    "pad_rows": (lambda v: jnp.pad(v, ((1, 0), (0, 0))).sum(axis=0), "pad"),
    "median": (lambda v: jnp.median(v, axis=0), "sort"),
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_primitives_that_cannot_run_over_padding_are_unsupported(name: str) -> None:
    fn, primitive = UNSUPPORTED[name]
    pattern = rf"{re.escape(WHAT)} .*the JAX primitive `{primitive}`.*tj\.reference\.run"
    with pytest.raises(tj.UnsupportedError, match=pattern):
        _masked(fn, _data((4, 3)), 6)


@pytest.mark.parametrize(
    "fn",
    [
        lambda v: v.sum() / v.shape[0] ** 2,
        lambda v: v.sum() / (v.shape[0] // 2 + 1),
    ],
    ids=["squared", "floor_div"],
)
def test_a_size_entering_non_linearly_is_unsupported(fn: Callable[[Any], Any]) -> None:
    pattern = rf"{re.escape(WHAT)} uses a value derived non-linearly from the size"
    with pytest.raises(tj.UnsupportedError, match=pattern):
        _masked(fn, _data((4,)), 6)


def test_sizes_of_two_classes_combined_are_unsupported() -> None:
    with pytest.raises(tj.UnsupportedError, match=rf"{re.escape(WHAT)} .*several growing axes"):
        masked_call(
            lambda u, w: [(u.sum() + w.sum()) / (u.shape[0] + w.shape[0])],
            [_pad(_data((2,)), 4), _pad(_data((3,)), 5)],
            [{0: "m"}, {0: "n"}],
            {"m": 2, "n": 3},
            WHAT,
        )


# -- values built from the size --------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        lambda v: v.sum() / jnp.ones_like(v).sum(),
        lambda v: jnp.average(v, weights=jnp.ones_like(v)),
        lambda v: jnp.arange(v.shape[0], dtype=jnp.float32).sum() + 0.0 * v.sum(),
    ],
    ids=["ones_like_count", "average", "arange_sum"],
)
def test_values_shaped_like_the_padding_are_masked(fn: Callable[[Any], Any]) -> None:
    """A value whose shape follows the padded axis is padded too, whatever computed it."""
    x = _data((5,), seed=9)
    _assert_valid_part(_masked(fn, x, 9), fn(jnp.asarray(x)))


def test_an_array_constant_built_from_the_size_is_refused() -> None:
    def ramp(v: Any) -> Any:  # np.linspace(0, 1, M) is not np.linspace(0, 1, L) cut short
        return (v * np.linspace(0.0, 1.0, v.shape[0], dtype=np.float32)).sum()

    with pytest.raises(tj.UnsupportedError, match=r"test_masking.py:1 uses an array constant"):
        _masked(ramp, _data((5,), seed=10), 9)


STATIC_AXIS_MOVEMENT: dict[str, Callable[[Any], Any]] = {
    "column": lambda v: v[:, 0].sum(),
    "columns_slice": lambda v: v[:, 1:].max(axis=0),
    "flip_columns": lambda v: jnp.flip(v, axis=1).cumsum(axis=1).sum(axis=0),
    "sort_columns": lambda v: jnp.sort(v, axis=1).mean(axis=0),
}


@pytest.mark.parametrize("name", sorted(STATIC_AXIS_MOVEMENT))
def test_slicing_reversing_or_sorting_a_static_axis_keeps_the_padding(name: str) -> None:
    fn = STATIC_AXIS_MOVEMENT[name]
    x = _data((4, 3), seed=11)
    _assert_valid_part(_masked(fn, x, 6), fn(jnp.asarray(x)))


def test_a_window_per_point_masks_a_batch_of_points() -> None:
    """``PerPoint``: a batch of queries over shared rows, each its own window of them, equals
    each query over its window; a value padded along the rows that holds no query axis (the
    keys summed alone) cannot be masked per query."""
    queries, rows = 5, 7
    q, k, v = _data((queries, 3), 1), _data((rows, 3), 2), _data((rows, 2), 3)
    lo, hi = np.array([0, 1, 2, 0, 3]), np.array([1, 3, 7, 4, 5])

    def attend(q: Any, ks: Any, vs: Any) -> Any:
        return jax.nn.softmax(ks @ q) @ vs

    def masked(fn: Callable[..., Any]) -> Any:
        windows = {"n": PerPoint(jnp.asarray(lo), jnp.asarray(hi), "p"), "p": queries}
        pads = [{0: "p"}, {0: "n"}, {0: "n"}]
        batch = jax.vmap(fn, in_axes=(0, None, None))
        return masked_call(lambda *a: [batch(*a)], [q, k, v], pads, windows, WHAT, True)[0]

    want = [attend(q[i], k[lo[i] : hi[i]], v[lo[i] : hi[i]]) for i in range(queries)]
    np.testing.assert_allclose(masked(attend), np.stack(want), rtol=1e-6, atol=1e-6)
    with pytest.raises(NotAligned):
        masked(lambda q, ks, vs: ks.sum(0) * q)
