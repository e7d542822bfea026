"""Reads of ranges that a payload never uses: dropped, so the reader need not wait for them.

A linear op's vector-Jacobian product reads its primal input only for its shape: the gradient
of ``loss[i, 0:T].mean()`` is ``ct / T`` at every row, whatever the losses. Recorded with the
read, it would run after every loss of the range, i.e. after the loop making them; without it,
at the start of the iteration, so that the backward can run beside the forward
(:mod:`.streaming`). :func:`without_unread` finds such reads from the payload's jaxpr
(:func:`tempo_jax._ir.jaxprs.used_inputs`) at the static sizes, and zeros stand in.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp

from .._ir.expr import Slice
from .._ir.jaxprs import used_inputs
from .._ir.program import Op, Program


def trace_sized(
    program: Program, op: Op, bounds_as_point: bool = False
) -> tuple[jex.ClosedJaxpr, list[jax.ShapeDtypeStruct]] | None:
    """The jaxpr of ``op``'s payload on its read specs, the static bounds' values put in their
    symbolic sizes, and those specs; None for a dynamic size or an opaque payload (one that
    accumulates, calls back, or needs concrete values; one that takes its point, unless
    ``bounds_as_point``: then it is given the bounds alone, as a payload vectorised over a dim
    that only needs them, and one reading its coordinates is opaque)."""
    payload = op.payload
    if op.kind != "apply" or payload is None or payload.accumulates:
        return None
    if payload.uses_point and not bounds_as_point:
        return None
    sizes = dict(program.sizes)
    fn = functools.partial(payload.fn, sizes) if payload.uses_point else payload.fn
    try:
        structs = [
            jax.ShapeDtypeStruct(spec.concrete_shape(sizes), spec.dtype)
            for spec in (program.read_spec(edge) for edge in op.inputs)
        ]
        closed = jax.make_jaxpr(fn)(*structs)
    except Exception:  # a dynamic size, or a payload that needs concrete values: opaque
        return None
    return None if closed.effects else (closed, structs)


def without_unread(
    op: Op, closed: jex.ClosedJaxpr, structs: list[jax.ShapeDtypeStruct]
) -> Op | None:
    """``op`` without its range reads that ``closed`` (its payload's jaxpr on ``structs``)
    does not use, zeros of their shapes passed in their place; None when it uses them all."""
    used = used_inputs(closed)
    zeros = {
        k: (structs[k].shape, structs[k].dtype)
        for k, edge in enumerate(op.inputs)
        if not used[k] and any(isinstance(i, Slice) for i in edge.index)
    }
    if not zeros or op.payload is None:
        return None
    fn = functools.partial(_with_zeros, op.payload.fn, zeros, len(structs))
    kept = tuple(e for k, e in enumerate(op.inputs) if k not in zeros)
    return op.replace(inputs=kept, payload=dataclasses.replace(op.payload, fn=fn))


def _with_zeros(
    fn: Callable[..., Any], zeros: dict[int, tuple[Any, Any]], n: int, *values: Any
) -> Any:
    """``fn`` of ``n`` inputs, called with those of ``zeros`` (position -> shape, dtype) as
    zeros and the others from ``values``, in order."""
    given = iter(values)
    full = [jnp.zeros(*zeros[k]) if k in zeros else next(given) for k in range(n)]
    return fn(*full)
