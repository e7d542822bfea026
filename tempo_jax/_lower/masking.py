"""Calling a payload on padded values: how a growing range is computed over a static shape.

A value with a spatial axis of symbolic size (``x[0:t+1]`` has ``t+1`` rows) is stored padded to
the largest size that axis takes over the domain (``T`` rows); only its first ``L`` rows hold
data, ``L`` being the size at the point. Element-wise work may run over the padding (garbage
stays in the padded rows), but an operation that combines rows along a padded axis must not
see it. :func:`masked_call` traces the payload to a jaxpr, and again with each class of padded
axes one and two rows longer. Comparing the traces tells:

- which axes of every value are padded: those growing row for row with the input (so
  ``jnp.ones_like(v)`` or ``jnp.arange(v.shape[0])`` are padded like ``v``);
- which scalar literals are sizes: those changing as ``a * rows + b`` (``jnp.mean`` divides by
  the row count) are replaced by ``a * L + b`` at run time;
- what cannot be padded: an axis growing other than row for row (a padded axis merged with
  another), an array constant built from the size, a computation whose structure changes.

The jaxpr is then evaluated primitive by primitive:

- element-wise and layout primitives (broadcast, transpose, reshape, concatenation along
  other axes, ...) run over the padding;
- reductions (sum, max, min, prod, and, or, argmax, argmin), contractions (``dot_general``)
  and reverse cumulative scans first replace the padded rows by the operation's neutral
  element (0 for sums and contractions, -inf for max, ...); forward cumulative scans read
  only earlier rows and need nothing;
- slices, reversals, sorts and pads are fine along the other axes;
- calls (``jit``, ``custom_jvp``/``custom_vjp`` functions) are evaluated inside by the same
  rules;
- anything else touching a padded axis raises :class:`UnsupportedError` rather than compute
  with the padding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._ir.errors import UnsupportedError
from .._ir.jaxprs import CALLS, bind

Pads = dict[int, str]  # padded axis -> its size class (the symbolic size, as text)
Path = tuple[Any, ...]  # where a literal sits: eqn indices and param names from the root

ELEMENTWISE = frozenset(
    [
        "abs",
        "acos",
        "acosh",
        "add",
        "add_any",
        "and",
        "asin",
        "asinh",
        "atan",
        "atan2",
        "atanh",
        "cbrt",
        "ceil",
        "clamp",
        "conj",
        "convert_element_type",
        "copy",
        "copy_p",
        "cos",
        "cosh",
        "digamma",
        "div",
        "eq",
        "erf",
        "erf_inv",
        "erfc",
        "exp",
        "exp2",
        "expm1",
        "floor",
        "ge",
        "gt",
        "igamma",
        "imag",
        "integer_pow",
        "is_finite",
        "le",
        "lgamma",
        "log",
        "log1p",
        "logistic",
        "lt",
        "max",
        "min",
        "mul",
        "ne",
        "neg",
        "nextafter",
        "not",
        "or",
        "population_count",
        "pow",
        "real",
        "reduce_precision",
        "rem",
        "round",
        "rsqrt",
        "select_n",
        "shift_left",
        "shift_right_arithmetic",
        "shift_right_logical",
        "sign",
        "sin",
        "sinh",
        "sqrt",
        "square",
        "stop_gradient",
        "sub",
        "tan",
        "tanh",
        "xor",
    ]
)
_LAYOUT = frozenset(
    ["broadcast_in_dim", "transpose", "squeeze", "reshape", "concatenate", "split", "iota"]
)
_REDUCE_NEUTRAL = {
    "reduce_sum": "zero",
    "reduce_prod": "one",
    "reduce_max": "lowest",
    "reduce_min": "highest",
    "argmax": "lowest",
    "argmin": "highest",
    "reduce_and": "one",
    "reduce_or": "zero",
    "reduce_xor": "zero",
}
_CUMULATIVE_NEUTRAL = {
    "cumsum": "zero",
    "cumprod": "one",
    "cummax": "lowest",
    "cummin": "highest",
    "cumlogsumexp": "lowest",
}
# what depends on where the range's rows sit along the axis: not computed on a window
_ORDERED = frozenset(["iota", "argmax", "argmin", *_CUMULATIVE_NEUTRAL])


class NotAligned(Exception):
    """A payload depends on where its range's rows sit (an index along the axis, a cumulative
    scan): its range must be read from the first row (``masked_call`` with a window)."""


@dataclasses.dataclass(frozen=True)
class PerPoint:
    """Valid rows that differ from point to point of a batch of points computed at once
    (:func:`jax.vmap` of a payload): at position ``p`` of the axis of size class ``points``,
    rows ``lo[p] <= row < hi[p]`` are (``lo`` a vector, or ``0``). A value padded along the
    rows but holding no axis of the points cannot be masked (:class:`NotAligned`)."""

    lo: Any
    hi: Any
    points: str


@dataclasses.dataclass(frozen=True)
class _Affine:
    """A literal equal to ``scale * rows + offset`` for the padded rows of one size class."""

    klass: str
    scale: float
    offset: float


@dataclasses.dataclass
class _Analysis:
    """What tracing at several sizes showed: size literals, and every value's padded axes."""

    affine: dict[Path, _Affine]
    pads: dict[Path, Pads]  # a value (eqn output or jaxpr input) -> its padded axes
    mixed: dict[Path, str]  # a value with an axis that grows other than row for row


def masked_call(
    fn: Callable[..., Sequence[Any]],
    args: Sequence[Any],
    pads: Sequence[Pads],
    lengths: dict[str, Any],
    what: str,
    unchecked: bool = False,
) -> list[Any]:
    """``fn(*args)`` where ``args[k]`` is padded along the axes of ``pads[k]``.

    ``lengths`` maps each size class to its valid length at this point (a traced or Python
    int): its first rows are valid; or to a window ``(lo, hi)``: rows ``lo <= row < hi`` are
    (a range read where it sits in its buffer, not gathered to the front); or to a
    :class:`PerPoint` window, one per position along another class's axis (``fn`` a batch of
    points, that class the batch's axis: each value is masked in the layout ``fn`` computes it
    in, where :func:`jax.vmap` of a masked call moves the batch axis of every masked value to
    the front). A payload that depends on the rows' positions raises :class:`NotAligned`
    under a window. ``what`` names the op and
    its source line in error messages. Returns ``fn``'s flat outputs, padded like the inputs
    they come from.

    ``unchecked``: a contraction of two padded operands fills the padding of the smaller one
    only. That is exact where the larger one's padding is finite (``0 * x = 0``) and spares a
    masked copy of it (under ``jax.vmap`` over points, one per point of a shared operand); the
    caller checks that the results are finite and recomputes them checked where not.
    """
    closed = jax.make_jaxpr(fn)(*args)
    analysis = _analyse(fn, closed, args, pads, what)
    evaluator = _Evaluator(analysis, lengths, what, unchecked)
    return evaluator.eval(closed.jaxpr, closed.consts, list(args), ())


def when_finite(checked: Sequence[Any], fast: Callable[[], Any], slow: Callable[[], Any]) -> Any:
    """``fast()``, or ``slow()`` where a float value of ``checked`` is not finite (a masked
    computation that ran element-wise work over padding, and its exact recomputation; under
    :func:`lax.cond`, so only one of them runs)."""
    floats = [v for v in checked if jnp.issubdtype(v.dtype, jnp.inexact)]
    if not floats:
        return fast()
    return lax.cond(jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in floats])), fast, slow)


# -- tracing at several sizes ------------------------------------------------------------------


@dataclasses.dataclass
class _Trace:
    scalars: dict[Path, float]  # scalar literals and constants
    shapes: dict[Path, tuple[int, ...]]  # every value's shape (and each primitive, as ())
    arrays: dict[Path, Any]  # non-scalar constants


def _analyse(
    fn: Callable[..., Any],
    closed: jex.ClosedJaxpr,
    args: Sequence[Any],
    pads: Sequence[Pads],
    what: str,
) -> _Analysis:
    """Trace ``fn`` again with each class of padded axes 1 and 2 rows longer and compare.

    An axis growing row for row with a class is padded (``jnp.ones_like`` of a padded value
    is padded too); a scalar literal changing as ``a * rows + b`` is a size; anything else that
    changes (an array constant built from the size, an axis growing 2 rows per row) cannot be
    computed over padding and raises :class:`UnsupportedError`.
    """
    rows = {}
    for arg, arg_pads in zip(args, pads, strict=True):
        for axis, klass in arg_pads.items():
            rows[klass] = np.shape(arg)[axis]
    base = _record(closed)
    analysis = _Analysis({}, {}, {})
    changes: dict[Path, list[tuple[str, float, float]]] = {}
    for klass, size in rows.items():
        probes = [_record(_trace_longer(fn, args, pads, klass, extra, what)) for extra in (1, 2)]
        if any(probe.shapes.keys() != base.shapes.keys() for probe in probes):
            raise _changes_structure(what)
        for path, shape in base.shapes.items():
            s1, s2 = (probe.shapes[path] for probe in probes)
            if len(s1) != len(shape) or len(s2) != len(shape):
                raise _changes_structure(what)
            for axis, (n0, n1, n2) in enumerate(zip(shape, s1, s2, strict=True)):
                if n0 == n1 == n2:
                    continue
                if n1 - n0 == 1 and n2 - n1 == 1 and axis not in analysis.pads.get(path, {}):
                    analysis.pads.setdefault(path, {})[axis] = klass
                else:
                    analysis.mixed[path] = f"axis {axis} grows {n1 - n0} per row"
        for path, array in base.arrays.items():
            if not all(np.array_equal(array, probe.arrays.get(path)) for probe in probes):
                raise UnsupportedError(
                    f"{what} uses an array constant computed from the size of its growing "
                    "axis (e.g. `np.linspace(0, 1, x.shape[0])`); the compiler cannot pad it. "
                    "Compute it with `jnp` from the shape, read a static range, or run the "
                    "program with `tj.reference.run`."
                )
        for path, value in base.scalars.items():
            v1, v2 = (probe.scalars.get(path) for probe in probes)
            if v1 is None or v2 is None:
                raise _changes_structure(what)
            if np.array_equal([value, v1], [v1, v2], equal_nan=True):
                continue  # the same for every size
            d1, d2 = v1 - value, v2 - v1
            if not (math.isfinite(d1) and math.isclose(d1, d2, rel_tol=1e-6, abs_tol=1e-9)):
                raise UnsupportedError(
                    f"{what} uses a value derived non-linearly from the size of its growing "
                    f"axis ({value} at {size} rows); the compiler can only substitute sizes "
                    "entering as `a * rows + b` (use a static range, or `tj.reference.run`)."
                )
            changes.setdefault(path, []).append((klass, d1, value - d1 * size))
    for path, found in changes.items():
        if len(found) > 1:
            raise UnsupportedError(
                f"{what} uses a value combining the sizes of several growing axes; the "
                "compiler cannot substitute it (use static ranges, or `tj.reference.run`)."
            )
        analysis.affine[path] = _Affine(*found[0])
    return analysis


def _changes_structure(what: str) -> UnsupportedError:
    return UnsupportedError(
        f"{what} computes differently for different sizes of its growing axis; the compiler "
        "can only pad such an axis when the computation is the same for every size (use a "
        "static range, or `tj.reference.run`)."
    )


def _trace_longer(
    fn: Callable[..., Any],
    args: Sequence[Any],
    pads: Sequence[Pads],
    klass: str,
    extra: int,
    what: str,
) -> jex.ClosedJaxpr:
    structs = []
    for arg, arg_pads in zip(args, pads, strict=True):
        aval = jax.typeof(arg)
        shape = [
            n + extra if arg_pads.get(axis) == klass else n for axis, n in enumerate(aval.shape)
        ]
        structs.append(jax.ShapeDtypeStruct(tuple(shape), aval.dtype, weak_type=aval.weak_type))
    try:
        return jax.make_jaxpr(fn)(*structs)
    except Exception as err:  # e.g. a shape that only fits the padded size
        raise _changes_structure(what) from err


def _record(closed: jex.ClosedJaxpr) -> _Trace:
    trace = _Trace({}, {}, {})
    _record_consts(closed.consts, (), trace)
    _record_jaxpr(closed.jaxpr, (), trace)
    return trace


def _record_consts(consts: Sequence[Any], path: Path, trace: _Trace) -> None:
    for k, const in enumerate(consts):
        if not isinstance(const, np.ndarray | np.generic | int | float | jax.Array):
            continue
        if isinstance(const, jax.core.Tracer):
            continue  # closed over from the enclosing trace: not computed from the size
        if np.ndim(const) == 0:
            trace.scalars[(*path, "const", k)] = float(np.asarray(const).real)
        else:
            trace.arrays[(*path, "const", k)] = np.asarray(const)
            trace.shapes[(*path, "const", k)] = tuple(np.shape(const))


def _record_jaxpr(jaxpr: jex.Jaxpr, path: Path, trace: _Trace) -> None:
    for k, var in enumerate(jaxpr.invars):
        trace.shapes[(*path, "in", k)] = tuple(var.aval.shape)
    for i, eqn in enumerate(jaxpr.eqns):
        trace.shapes[(*path, i, "primitive", eqn.primitive.name)] = ()  # structure must match
        for pos, var in enumerate(eqn.invars):
            if isinstance(var, jex.Literal) and np.ndim(var.val) == 0:
                trace.scalars[(*path, i, "lit", pos)] = float(np.asarray(var.val).real)
        for k, var in enumerate(eqn.outvars):
            trace.shapes[(*path, i, "out", k)] = tuple(getattr(var.aval, "shape", ()))
        for key, sub in _subjaxprs(eqn):
            if isinstance(sub, jex.ClosedJaxpr):
                _record_consts(sub.consts, (*path, i, key), trace)
                sub = sub.jaxpr
            _record_jaxpr(sub, (*path, i, key), trace)


def _subjaxprs(eqn: jex.JaxprEqn) -> list[tuple[Any, Any]]:
    subs = []
    for name in sorted(eqn.params):
        param = eqn.params[name]
        items = param if isinstance(param, tuple | list) else (param,)
        for j, sub in enumerate(items):
            if isinstance(sub, jex.ClosedJaxpr | jex.Jaxpr):
                subs.append(((name, j), sub))
    return subs


# -- evaluation ------------------------------------------------------------------------------


class _Evaluator:
    def __init__(
        self, analysis: _Analysis, lengths: dict[str, Any], what: str, unchecked: bool = False
    ) -> None:
        self.analysis = analysis
        self.affine = analysis.affine
        self.lengths = lengths
        self.what = what
        self.unchecked = unchecked

    def eval(self, jaxpr: jex.Jaxpr, consts: Sequence[Any], args: list[Any], path: Path) -> list:
        pads = self.analysis.pads
        env: dict[Any, Any] = {}
        for k, (var, const) in enumerate(zip(jaxpr.constvars, consts, strict=True)):
            env[var] = self._literal((*path, "const", k), const, jnp.result_type(const))
        for var, arg in zip(jaxpr.invars, args, strict=True):
            env[var] = arg
        var_pads: dict[Any, Pads] = {
            var: pads.get((*path, "in", k), {}) for k, var in enumerate(jaxpr.invars)
        }

        def read(var: Any, where: Path) -> Any:
            if isinstance(var, jex.Literal):
                return self._literal(where, var.val, var.aval.dtype)
            return env[var]

        for i, eqn in enumerate(jaxpr.eqns):
            here = (*path, i)
            values = [read(var, (*here, "lit", pos)) for pos, var in enumerate(eqn.invars)]
            in_pads = [
                {} if isinstance(v, jex.Literal) else var_pads.get(v, {}) for v in eqn.invars
            ]
            outs_path = [(*here, "out", k) for k in range(len(eqn.outvars))]
            if eqn.primitive.name in _ORDERED and self._windowed(
                [*in_pads, *(pads.get(out, {}) for out in outs_path)]
            ):
                raise NotAligned(eqn.primitive.name)
            for out in outs_path:
                if out in self.analysis.mixed:
                    raise self._unsupported(
                        eqn.primitive.name, f"mixes a growing axis ({self.analysis.mixed[out]})"
                    )
            nested = any(
                len(p) > len(here) + 1 and p[: len(here)] == here and p[len(here)] != "lit"
                for p in self.affine
            )
            if eqn.primitive.name in CALLS and (nested or any(in_pads)):
                outs = self._call(eqn, values, here)
            elif nested:
                raise self._unsupported(
                    eqn.primitive.name, "uses the size of a growing axis inside"
                )
            elif not any(in_pads):
                outs = bind(eqn, values)
            else:
                outs = self._rule(eqn, values, in_pads)
            for var, value, out in zip(eqn.outvars, outs, outs_path, strict=True):
                env[var] = value
                var_pads[var] = pads.get(out, {})
        return [read(var, (*path, "out", k)) for k, var in enumerate(jaxpr.outvars)]

    def _windowed(self, pads: list[Pads]) -> bool:
        return any(
            isinstance(self.lengths.get(k), tuple | PerPoint) for p in pads for k in p.values()
        )

    def _rows(self, klass: str) -> tuple[Any, Any]:
        """The valid rows ``lo <= row < hi`` of a size class's padded axis."""
        length = self.lengths[klass]
        if isinstance(length, PerPoint):  # a size per point: no scalar stands for it
            raise NotAligned(f"the size of {klass}, which differs from point to point")
        return length if isinstance(length, tuple) else (0, length)

    def _maskable(self, pads: Pads, klass: str) -> bool:
        """Whether a value padded as ``pads`` can be masked along an axis of ``klass``."""
        length = self.lengths[klass]
        return not isinstance(length, PerPoint) or length.points in pads.values()

    def _literal(self, where: Path, value: Any, dtype: Any) -> Any:
        found = self.affine.get(where)
        if found is None:
            return value
        lo, hi = self._rows(found.klass)
        length = hi - lo
        scale = int(found.scale) if np.issubdtype(dtype, np.integer) else found.scale
        offset = int(found.offset) if np.issubdtype(dtype, np.integer) else found.offset
        return jnp.asarray(scale * length + offset, dtype)

    # -- one primitive ---------------------------------------------------------------------------
    def _call(self, eqn: jex.JaxprEqn, values: list[Any], path: Path) -> list[Any]:
        key = CALLS[eqn.primitive.name]
        sub = eqn.params[key]
        consts = sub.consts if isinstance(sub, jex.ClosedJaxpr) else ()
        inner = sub.jaxpr if isinstance(sub, jex.ClosedJaxpr) else sub
        return self.eval(inner, consts, values, (*path, (key, 0)))

    def _rule(self, eqn: jex.JaxprEqn, values: list[Any], pads: list[Pads]) -> list[Any]:
        """Bind one primitive with padded inputs, filling padding where it would be mixed in."""
        name = eqn.primitive.name
        params = eqn.params
        if name in _LAYOUT or name in ELEMENTWISE:
            return bind(eqn, values)  # row for row: shapes were checked by the analysis
        if name in _REDUCE_NEUTRAL:
            axes = tuple(params["axes"])
            value = self._fill(values[0], pads[0], axes, _REDUCE_NEUTRAL[name])
            return bind(eqn, [value, *values[1:]])
        if name in _CUMULATIVE_NEUTRAL:
            value = values[0]
            if params.get("reverse", False):
                value = self._fill(value, pads[0], (params["axis"],), _CUMULATIVE_NEUTRAL[name])
            return bind(eqn, [value])
        if name == "dot_general":
            return self._dot_general(eqn, values, pads)
        padded = set().union(*(p.keys() for p in pads))
        if name == "slice":
            strides = params["strides"] or (1,) * np.ndim(values[0])
            shape = np.shape(values[0])
            if all(
                params["start_indices"][a] == 0
                and params["limit_indices"][a] == shape[a]
                and strides[a] == 1
                for a in pads[0]
            ):
                return bind(eqn, values)
        elif name == "rev":
            if not padded & set(params["dimensions"]):
                return bind(eqn, values)
        elif name == "sort":
            if all(params["dimension"] not in p for p in pads):
                return bind(eqn, values)
        elif name == "pad":
            if all(tuple(params["padding_config"][a]) == (0, 0, 0) for a in pads[0]):
                return bind(eqn, values)
        elif name == "dynamic_slice":
            shape = np.shape(values[0])
            if all(params["slice_sizes"][a] == shape[a] for a in pads[0]):
                return bind(eqn, values)  # the whole padded axis: its start clamps to 0
        raise self._unsupported(name, "applies it along a growing axis")

    def _fill(self, value: Any, pads: Pads, axes: Sequence[int], neutral: str) -> Any:
        """``value`` (padded as ``pads``) with the padded rows along ``axes`` ``neutral``."""
        shape = np.shape(value)
        for axis in axes:
            if axis not in pads:
                continue
            rows = lax.broadcasted_iota(jnp.int32, shape, axis)
            length = self.lengths[pads[axis]]
            if isinstance(length, PerPoint):
                if not self._maskable(pads, pads[axis]):
                    raise NotAligned(f"a value padded along {pads[axis]} without {length.points}")
                at = next(a for a, k in pads.items() if k == length.points)
                lo, hi = (
                    end if isinstance(end, int) else lax.broadcast_in_dim(end, shape, (at,))
                    for end in (length.lo, length.hi)
                )
            else:
                lo, hi = self._rows(pads[axis])
            valid = (rows < hi) if isinstance(lo, int) and lo == 0 else (rows >= lo) & (rows < hi)
            value = jnp.where(valid, value, _neutral(value, neutral))
        return value

    def _dot_general(self, eqn: jex.JaxprEqn, values: list[Any], pads: list[Pads]) -> list[Any]:
        (lc, rc), _ = eqn.params["dimension_numbers"]
        lhs, rhs = values[:2]
        lp, rp = pads[:2]
        for a, b in zip(lc, rc, strict=True):
            klass = lp.get(a, rp.get(b))
            if klass is None:
                continue
            both = a in lp and b in rp
            fill_lhs = not (both and self.unchecked) or np.size(lhs) <= np.size(rhs)
            fill_rhs = not (both and self.unchecked) or np.size(rhs) < np.size(lhs)
            if both and self.unchecked:  # one operand is enough: one that can be masked
                if fill_lhs and not self._maskable(lp, klass):
                    fill_lhs, fill_rhs = False, True
                elif fill_rhs and not self._maskable(rp, klass):
                    fill_lhs, fill_rhs = True, False
            if fill_lhs:
                lhs = self._fill(lhs, {**lp, a: klass}, (a,), "zero")
            if fill_rhs:
                rhs = self._fill(rhs, {**rp, b: klass}, (b,), "zero")
        return bind(eqn, [lhs, rhs, *values[2:]])

    def _unsupported(self, primitive: str, doing: str) -> UnsupportedError:
        return UnsupportedError(
            f"{self.what} {doing} (the JAX primitive `{primitive}`), which the compiler cannot "
            "run over the padded static shape of a growing range; it can reduce (sum, max, "
            "softmax, mean, matmul, ...) and map over such an axis. Read a static range, or "
            "run the program with `tj.reference.run`."
        )


def _neutral(value: Any, kind: str) -> Any:
    dtype = jnp.result_type(value)
    if kind == "zero":
        return jnp.zeros((), dtype)
    if kind == "one":
        return jnp.ones((), dtype)
    if dtype == jnp.bool_:
        return jnp.asarray(kind == "highest")
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.asarray(-jnp.inf if kind == "lowest" else jnp.inf, dtype)
    info = jnp.iinfo(dtype)
    return jnp.asarray(info.min if kind == "lowest" else info.max, dtype)
