"""Binding a call of a compiled program: dynamic bounds and the inputs that run over them.

A dynamic bound (``tj.dynamic(max=..., min=...)``) is passed at call time, either as a
concrete integer or as a traced one (inside the caller's ``jax.jit``):

- A concrete value is validated like a static bound: an integer (not a ``bool``, not a float)
  in ``min..max``, or :class:`~tempo_jax.MissingBoundError`. An input over the dynamic dim
  comes with exactly ``T`` rows along it, or padded to ``max`` rows; anything else is an
  :class:`~tempo_jax.InputError` quoting the shape passed.
- A traced value cannot be checked before the program runs. It must be an integer scalar; it
  is clamped to ``min..max`` and to the rows of every input over the dim that come unpadded,
  the program runs the clamped value, and ``lengths`` reports that value (what actually ran),
  never the requested one. The clamp is also a :func:`jax.experimental.checkify.debug_check`:
  wrapped in ``checkify.checkify``, a call with an out-of-range ``T`` returns the error.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from .._ir.bind import DynamicBound
from .._ir.errors import InputError, MissingBoundError
from .._ir.expr import Symbol
from .._ir.program import Program
from .._ir.source import describe


def bind_dynamic(
    program: Program,
    bounds: Mapping[Symbol, int],
    dynamic: Mapping[Symbol, DynamicBound],
    given: dict[str, Any],
) -> dict[str, Any]:
    """Pop each dynamic bound from ``given``, check it, pad the inputs over it to its max.

    Returns the bounds to run with, as int32 scalars (clamped when traced); ``given`` keeps
    the inputs, padded (an input of the wrong shape otherwise is left as given, for
    :func:`~tempo_jax._ir.bind.resolve_inputs` to quote).
    """
    actual: dict[str, Any] = {}
    for bound, spec in dynamic.items():
        if bound.name not in given:
            raise MissingBoundError(
                f"the dynamic bound {bound.name} (at most {spec.max}) was not given; call "
                f"with `{bound.name}=...`."
            )
        value = given.pop(bound.name)
        if isinstance(value, jax.core.Tracer):
            actual[bound.name] = _traced(program, bound, spec, value, given)
        else:
            number = _concrete(bound, spec, value)
            _check_rows(program, bound, spec, number, given)
            actual[bound.name] = jnp.asarray(number, jnp.int32)
    for name, op in program.inputs.items():
        if name in given:
            want = tuple(bounds[d.bound] for d in op.domain)
            want += op.outputs[0].concrete_shape(bounds)
            given[name] = _pad(op.domain, want, dynamic, given[name])
    return actual


def _concrete(bound: Symbol, spec: DynamicBound, value: Any) -> int:
    """A bound given as a number: an integer in ``min..max``."""
    array = np.asarray(value)
    if isinstance(value, bool) or array.shape != () or array.dtype.kind not in "iu":
        raise MissingBoundError(
            f"the dynamic bound {bound.name} must be an integer, got {value!r}; pass "
            f"`{bound.name}=int(...)`."
        )
    number = operator.index(array.item())
    if not spec.min <= number <= spec.max:
        fix = (
            "a bound is at least 1"
            if number < 1
            else f"compile with `tj.dynamic(max={spec.max}, min={number})`"
            if number < spec.min
            else f"compile with `tj.dynamic(max={number})` or more"
        )
        raise MissingBoundError(
            f"the dynamic bound {bound.name}={number} is outside {spec.min}..{spec.max}, the "
            f"range it was compiled for; {fix}."
        )
    return number


def _traced(
    program: Program, bound: Symbol, spec: DynamicBound, value: Any, given: Mapping[str, Any]
) -> Any:
    """A traced bound, clamped to what the compiled program and the inputs can run."""
    if value.shape != () or not jnp.issubdtype(value.dtype, jnp.integer):
        raise MissingBoundError(
            f"the dynamic bound {bound.name} must be an integer scalar, got a traced "
            f"{value.dtype}{list(value.shape)}."
        )
    largest = spec.max
    for name, axis, rows in _rows(program, bound, given):
        if rows > spec.max:
            raise _rows_error(program, name, axis, bound, given[name], f"at most {spec.max}")
        largest = min(largest, rows)
    clamped = jnp.clip(value.astype(jnp.int32), spec.min, largest)
    checkify.debug_check(
        clamped == value,
        f"the dynamic bound {bound.name}={{value}} is outside {spec.min}..{{largest}} (the "
        "range compiled for, and the rows of its inputs); it ran as {clamped}",
        value=value,
        largest=jnp.int32(largest),
        clamped=clamped,
    )
    return clamped


def _check_rows(
    program: Program, bound: Symbol, spec: DynamicBound, number: int, given: Mapping[str, Any]
) -> None:
    """Inputs over the dim come with ``T`` rows along it, or padded to ``max``."""
    for name, axis, rows in _rows(program, bound, given):
        if rows not in (number, spec.max):
            want = f"{number} ({bound.name}) or {spec.max} (padded to max)"
            raise _rows_error(program, name, axis, bound, given[name], want)


def _rows(program: Program, bound: Symbol, given: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """(input, axis, rows) of each given input along each of its axes over ``bound``'s dim."""
    found = []
    for name, op in program.inputs.items():
        if name not in given:
            continue
        shape = np.shape(given[name])
        for axis, dim in enumerate(op.domain):
            if dim.bound == bound and axis < len(shape):
                found.append((name, axis, shape[axis]))
    return found


def _rows_error(
    program: Program, name: str, axis: int, bound: Symbol, value: Any, want: str
) -> InputError:
    op = program.inputs[name]
    dim = op.domain[axis]
    return InputError(
        f"input {name!r} (declared{describe(op.source)}) has shape {tuple(np.shape(value))}: "
        f"{np.shape(value)[axis]} rows along `{dim.name}` (axis {axis}), expected {want}."
    )


def _pad(
    domain: tuple[Symbol, ...],
    want: tuple[int, ...],
    dynamic: Mapping[Symbol, DynamicBound],
    value: Any,
) -> Any:
    """``value`` padded with zeros to ``want``, the max of every dynamic dim of ``domain``."""
    shape = np.shape(value)
    over = [a for a, d in enumerate(domain) if d.bound in dynamic]
    if not over or len(shape) != len(want):
        return value
    if any(n != w for a, (n, w) in enumerate(zip(shape, want, strict=True)) if a not in over):
        return value
    if all(shape[a] == want[a] for a in over):
        return value
    pads = [(0, want[a] - n if a in over else 0) for a, n in enumerate(shape)]
    if isinstance(value, jax.Array):
        return jnp.pad(value, pads)
    return np.pad(np.asarray(value), pads)  # on the host: the input's own dtype is checked next
