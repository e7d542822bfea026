"""A merge op's value at a point: the value of its first branch whose condition holds.

The lowering (:mod:`.execute`) calls :func:`merge_value` with the values its branches read.
What was decided before lowering shapes it: a branch resolved for a whole piece of a loop
(:mod:`.peeling`), a merge whose branches cover its domain (its last branch untested), a
merge that starts a kept value from an input (``BufferPlan.seeded``: it reads that value).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax.numpy as jnp

from .._ir.expr import Expr
from .._ir.program import Op

if TYPE_CHECKING:
    from .execute import Env, TreeLowering


def merge_value(lowering: TreeLowering, op: Op, env: Env, values: list[Any]) -> Any:
    """The value of merge ``op`` at the point of ``env``, from its branches' ``values``."""
    spec = op.outputs[0]
    shape = lowering.layout.shape(spec, op.domain)
    active = lowering.branches.get(op.id)
    if active is not None:  # the same branch over this whole piece of the loop
        if active < 0:
            return jnp.zeros(shape, spec.dtype)
        value = jnp.asarray(values[active], spec.dtype)
        return jnp.broadcast_to(value, shape)  # a vectorised merge broadcasts
    if op.id in lowering.layout.seeded:  # the value it reads started as its first branch's
        return values[-1]
    # neighbouring branches that read the same value (a value kept as its latest point:
    # every step of an optimiser reads the one before) test their conditions as one; where
    # the branches cover the domain, the last one needs no test
    groups: list[tuple[Expr, Any]] = []
    for edge, value in zip(op.inputs, values, strict=True):
        if groups and groups[-1][1] is value:
            groups[-1] = (groups[-1][0] | edge.cond, value)
        else:
            groups.append((edge.cond, value))
    if op.id in lowering.covering:
        result = jnp.broadcast_to(jnp.asarray(groups.pop()[1], spec.dtype), shape)
    else:
        result = jnp.zeros(shape, spec.dtype)
    for cond, value in reversed(groups):
        result = jnp.where(lowering.evaluate(cond, env), value, result)  # first match wins
    return result
