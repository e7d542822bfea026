"""Ops that passes add to re-read a value another pass reshaped: picking one entry of an axis.

When a pass turns a domain dim into an array axis (vectorisation, pattern lifts), a reader
that wanted one point of the old dim now reads the whole axis; a *pick* op selects the entry
it wanted, at the reader's point.
"""

from __future__ import annotations

from typing import Any

from jax import lax

from .._ir.expr import Expr
from .._ir.program import Payload, Program


def next_id(program: Program) -> int:
    """An op id no op of ``program`` has."""
    return max((op.id for op in program.ops), default=-1) + 1


def pick_payload(item: Expr, axis: int, name: str = "pick") -> Payload:
    """A payload returning each input's entry ``item`` (evaluated at the point) of ``axis``,
    one output per input.

    Example: ``pick_payload(t - 1, 0)`` reads row ``t-1`` of a value stacked over ``t``.
    The row picked is never padding, so the payload may be called on padded values as is.
    """

    def fn(env: Any, *values: Any) -> tuple[Any, ...]:
        index = item.evaluate(env)
        return tuple(lax.dynamic_index_in_dim(v, index, axis, keepdims=False) for v in values)

    return Payload(fn, name, uses_point=True, pads_ok=True)
