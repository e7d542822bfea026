"""Calling a payload on padded values: how a growing range is computed over a static shape.

A value with a spatial axis of symbolic size (``x[0:t+1]`` has ``t+1`` rows) is stored padded to
the largest size that axis takes over the domain (``T`` rows); only its first ``L`` rows hold
data, ``L`` being the size at the point. Element-wise work may run over the padding (garbage
stays in the padded rows), but an operation that combines rows along a padded axis must not
see it. :func:`masked_call` traces the payload to a jaxpr and evaluates it primitive by
primitive, tracking for every value which axes are padded and to what valid length:

- element-wise primitives, and movement that keeps a padded axis whole (broadcast, transpose,
  reshape, squeeze, concatenation or splitting along *other* axes), pass the padding through;
- reductions (sum, max, min, prod, and, or, argmax, argmin), contractions (``dot_general``)
  and reverse cumulative scans first replace the padded rows by the operation's neutral
  element (0 for sums and contractions, -inf for max, ...); forward cumulative scans read
  only earlier rows and need nothing;
- calls (``jit``, ``custom_jvp``/``custom_vjp`` functions) are evaluated inside by the same
  rules;
- any other primitive touching a padded axis (a slice, a reversal, a sort, a loop) raises
  :class:`UnsupportedError` rather than compute with the padding.

Sizes a payload reads from shapes become literals of its jaxpr (``jnp.mean`` divides by the
row count). The payload is therefore traced again with each class of padded axes one and two
rows longer: a literal that changes as ``a * rows + b`` is replaced by ``a * L + b`` at run
time, and one that changes any other way is an :class:`UnsupportedError`.
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

Pads = dict[int, str]  # padded axis -> its size class (the symbolic size, as text)
Path = tuple[Any, ...]  # where a literal sits: eqn indices and param names from the root

_ELEMENTWISE = frozenset(
    [
        "abs",
        "acos",
        "acosh",
        "add",
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
_CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
}
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


@dataclasses.dataclass(frozen=True)
class _Affine:
    """A literal equal to ``scale * rows + offset`` for the padded rows of one size class."""

    klass: str
    scale: float
    offset: float


def masked_call(
    fn: Callable[..., Sequence[Any]],
    args: Sequence[Any],
    pads: Sequence[Pads],
    lengths: dict[str, Any],
    what: str,
) -> list[Any]:
    """``fn(*args)`` where ``args[k]`` is padded along the axes of ``pads[k]``.

    ``lengths`` maps each size class to its valid length at this point (a traced or Python
    int); ``what`` names the op and its source line in error messages. Returns ``fn``'s
    flat outputs, padded like the inputs they come from.
    """
    closed = jax.make_jaxpr(fn)(*args)
    affine = _fit_literals(fn, closed, args, pads, what)
    evaluator = _Evaluator(affine, lengths, what)
    outs, _ = evaluator.eval(closed.jaxpr, closed.consts, list(args), [dict(p) for p in pads], ())
    return outs


# -- literals that are sizes -----------------------------------------------------------------


def _fit_literals(
    fn: Callable[..., Any],
    closed: jex.ClosedJaxpr,
    args: Sequence[Any],
    pads: Sequence[Pads],
    what: str,
) -> dict[Path, _Affine]:
    """Which literals of ``closed`` are sizes of a padded axis, and as which affine function."""
    rows = {}
    for arg, arg_pads in zip(args, pads, strict=True):
        for axis, klass in arg_pads.items():
            rows[klass] = np.shape(arg)[axis]
    base = _literals(closed, what)
    changes: dict[Path, list[tuple[str, float, float]]] = {}
    for klass, size in rows.items():
        probes = [_literals(_trace_longer(fn, args, pads, klass, extra), what) for extra in (1, 2)]
        for path, value in base.items():
            v1, v2 = (probe.get(path) for probe in probes)
            if v1 is None or v2 is None or any(len(probe) != len(base) for probe in probes):
                raise UnsupportedError(
                    f"{what} computes differently for different sizes of its growing axis; "
                    "the compiler can only pad such an axis when the computation is the same "
                    "for every size (use a static range, or `tj.reference.run`)."
                )
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
    affine = {}
    for path, found in changes.items():
        if len(found) > 1:
            raise UnsupportedError(
                f"{what} uses a value combining the sizes of several growing axes; the "
                "compiler cannot substitute it (use static ranges, or `tj.reference.run`)."
            )
        affine[path] = _Affine(*found[0])
    return affine


def _trace_longer(
    fn: Callable[..., Any], args: Sequence[Any], pads: Sequence[Pads], klass: str, extra: int
) -> jex.ClosedJaxpr:
    structs = []
    for arg, arg_pads in zip(args, pads, strict=True):
        aval = jax.typeof(arg)
        shape = [
            n + extra if arg_pads.get(axis) == klass else n for axis, n in enumerate(aval.shape)
        ]
        structs.append(jax.ShapeDtypeStruct(tuple(shape), aval.dtype, weak_type=aval.weak_type))
    return jax.make_jaxpr(fn)(*structs)


def _literals(closed: jex.ClosedJaxpr, what: str) -> dict[Path, float]:
    """Every scalar literal and scalar constant of a jaxpr, by its path."""
    found: dict[Path, float] = {}
    for k, const in enumerate(closed.consts):
        if isinstance(const, np.ndarray | np.generic | int | float) and np.ndim(const) == 0:
            found[("const", k)] = float(np.asarray(const).real)
    _jaxpr_literals(closed.jaxpr, (), found)
    return found


def _jaxpr_literals(jaxpr: jex.Jaxpr, path: Path, found: dict[Path, float]) -> None:
    for i, eqn in enumerate(jaxpr.eqns):
        found[(*path, i, "primitive", eqn.primitive.name)] = 0.0  # structure must match
        for pos, var in enumerate(eqn.invars):
            if isinstance(var, jex.Literal) and np.ndim(var.val) == 0:
                found[(*path, i, "lit", pos)] = float(np.asarray(var.val).real)
        for key, sub in _subjaxprs(eqn):
            if isinstance(sub, jex.ClosedJaxpr):
                for k, const in enumerate(sub.consts):
                    if isinstance(const, np.ndarray | np.generic) and np.ndim(const) == 0:
                        found[(*path, i, key, "const", k)] = float(np.asarray(const).real)
                sub = sub.jaxpr
            _jaxpr_literals(sub, (*path, i, key), found)


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
    def __init__(self, affine: dict[Path, _Affine], lengths: dict[str, Any], what: str) -> None:
        self.affine = affine
        self.lengths = lengths
        self.what = what

    def eval(
        self,
        jaxpr: jex.Jaxpr,
        consts: Sequence[Any],
        args: list[Any],
        pads: list[Pads],
        path: Path,
    ) -> tuple[list[Any], list[Pads]]:
        env: dict[Any, tuple[Any, Pads]] = {}
        for k, (var, const) in enumerate(zip(jaxpr.constvars, consts, strict=True)):
            env[var] = (self._literal((*path, "const", k), const, jnp.result_type(const)), {})
        for var, arg, arg_pads in zip(jaxpr.invars, args, pads, strict=True):
            env[var] = (arg, arg_pads)

        def read(var: Any, where: Path) -> tuple[Any, Pads]:
            if isinstance(var, jex.Literal):
                return self._literal(where, var.val, var.aval.dtype), {}
            return env[var]

        for i, eqn in enumerate(jaxpr.eqns):
            ins = [read(var, (*path, i, "lit", pos)) for pos, var in enumerate(eqn.invars)]
            values = [v for v, _ in ins]
            in_pads = [p for _, p in ins]
            nested = any(
                len(p) > len(path) + 1
                and p[: len(path) + 1] == (*path, i)
                and p[len(path) + 1] != "lit"
                for p in self.affine
            )
            if eqn.primitive.name in _CALLS and (nested or any(in_pads)):
                outs, out_pads = self._call(eqn, values, in_pads, (*path, i))
            elif nested:
                raise self._unsupported(
                    eqn.primitive.name, "uses the size of a growing axis inside"
                )
            elif not any(in_pads):
                outs, out_pads = _bind(eqn, values), [{} for _ in eqn.outvars]
            else:
                outs, out_pads = self._rule(eqn, values, in_pads)
            for var, value, value_pads in zip(eqn.outvars, outs, out_pads, strict=True):
                env[var] = (value, value_pads)
        results = [read(var, (*path, "out", k)) for k, var in enumerate(jaxpr.outvars)]
        return [v for v, _ in results], [p for _, p in results]

    def _literal(self, where: Path, value: Any, dtype: Any) -> Any:
        found = self.affine.get(where)
        if found is None:
            return value
        length = self.lengths[found.klass]
        scale = int(found.scale) if np.issubdtype(dtype, np.integer) else found.scale
        offset = int(found.offset) if np.issubdtype(dtype, np.integer) else found.offset
        return jnp.asarray(scale * length + offset, dtype)

    # -- one primitive ---------------------------------------------------------------------------
    def _call(
        self, eqn: jex.JaxprEqn, values: list[Any], pads: list[Pads], path: Path
    ) -> tuple[list[Any], list[Pads]]:
        key = _CALLS[eqn.primitive.name]
        sub = eqn.params[key]
        consts = sub.consts if isinstance(sub, jex.ClosedJaxpr) else ()
        inner = sub.jaxpr if isinstance(sub, jex.ClosedJaxpr) else sub
        return self.eval(inner, consts, values, pads, (*path, (key, 0)))

    def _rule(
        self, eqn: jex.JaxprEqn, values: list[Any], pads: list[Pads]
    ) -> tuple[list[Any], list[Pads]]:
        name = eqn.primitive.name
        params = eqn.params
        out_ndim = [len(var.aval.shape) for var in eqn.outvars]
        if name in _ELEMENTWISE:
            merged: Pads = {}
            for value_pads, value in zip(pads, values, strict=True):
                if np.ndim(value) == out_ndim[0]:
                    merged.update(value_pads)
            return _bind(eqn, values), [merged]
        if name == "broadcast_in_dim":
            (in_pads,) = pads[:1]
            dims = params["broadcast_dimensions"]
            shape = params["shape"]
            src = np.shape(values[0])
            out = {dims[a]: c for a, c in in_pads.items() if src[a] == shape[dims[a]]}
            return _bind(eqn, values), [out]
        if name == "transpose":
            perm = params["permutation"]
            return _bind(eqn, values), [{j: pads[0][a] for j, a in enumerate(perm) if a in pads[0]}]
        if name == "squeeze":
            dropped = {d % np.ndim(values[0]) for d in params["dimensions"]}
            kept = [a for a in range(np.ndim(values[0])) if a not in dropped]
            return _bind(eqn, values), [{j: pads[0][a] for j, a in enumerate(kept) if a in pads[0]}]
        if name == "reshape":
            return _bind(eqn, values), [self._reshape(values[0], pads[0], eqn)]
        if name in ("concatenate", "split"):
            axis = params["dimension" if name == "concatenate" else "axis"]
            if any(axis in p for p in pads):
                raise self._unsupported(name, "joins or splits along a growing axis")
            merged = {}
            for p in pads:
                merged.update(p)
            return _bind(eqn, values), [dict(merged) for _ in eqn.outvars]
        if name in _REDUCE_NEUTRAL:
            axes = tuple(params["axes"])
            value = self._fill(values[0], pads[0], axes, _REDUCE_NEUTRAL[name])
            kept = [a for a in range(np.ndim(value)) if a not in axes]
            out = {j: pads[0][a] for j, a in enumerate(kept) if a in pads[0]}
            return _bind(eqn, [value, *values[1:]]), [out]
        if name in _CUMULATIVE_NEUTRAL:
            value = values[0]
            if params.get("reverse", False):
                value = self._fill(value, pads[0], (params["axis"],), _CUMULATIVE_NEUTRAL[name])
            return _bind(eqn, [value]), [dict(pads[0])]
        if name == "dot_general":
            return self._dot_general(eqn, values, pads)
        raise self._unsupported(name, "applies it along a growing axis")

    def _fill(self, value: Any, pads: Pads, axes: Sequence[int], neutral: str) -> Any:
        for axis in axes:
            if axis in pads:
                rows = lax.broadcasted_iota(jnp.int32, np.shape(value), axis)
                value = jnp.where(rows < self.lengths[pads[axis]], value, _neutral(value, neutral))
        return value

    def _reshape(self, value: Any, pads: Pads, eqn: jex.JaxprEqn) -> Pads:
        src = np.shape(value)
        dst = tuple(eqn.outvars[0].aval.shape)
        out = {}
        for axis, klass in pads.items():
            before = math.prod(src[:axis])
            match = [
                b for b in range(len(dst)) if math.prod(dst[:b]) == before and dst[b] == src[axis]
            ]
            if not match:
                raise self._unsupported("reshape", "merges or splits a growing axis")
            out[match[0]] = klass
        return out

    def _dot_general(
        self, eqn: jex.JaxprEqn, values: list[Any], pads: list[Pads]
    ) -> tuple[list[Any], list[Pads]]:
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lhs, rhs = values[:2]
        lp, rp = pads[:2]
        for a, b in zip(lc, rc, strict=True):
            klass = lp.get(a, rp.get(b))
            if klass is None:
                continue
            lhs = self._fill(lhs, {a: klass}, (a,), "zero")
            rhs = self._fill(rhs, {b: klass}, (b,), "zero")
        out: Pads = {}
        for j, (a, b) in enumerate(zip(lb, rb, strict=True)):
            klass = lp.get(a, rp.get(b))
            if klass is not None:
                out[j] = klass
        lfree = [a for a in range(np.ndim(lhs)) if a not in lc and a not in lb]
        rfree = [b for b in range(np.ndim(rhs)) if b not in rc and b not in rb]
        for j, a in enumerate(lfree, start=len(lb)):
            if a in lp:
                out[j] = lp[a]
        for j, b in enumerate(rfree, start=len(lb) + len(lfree)):
            if b in rp:
                out[j] = rp[b]
        return _bind(eqn, [lhs, rhs, *values[2:]]), [out]

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


def _bind(eqn: jex.JaxprEqn, values: Sequence[Any]) -> list[Any]:
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*values, **params)
    return list(out) if eqn.primitive.multiple_results else [out]
