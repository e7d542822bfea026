"""The most iterations of each loop whose range depends on a dynamic bound.

A loop over a dynamic bound has a trip count known only at call time. Run as a
``lax.while_loop`` it cannot be differentiated in reverse mode; run as a static-length loop
over its most iterations, with the iterations past the actual count skipped, it can. This
pass records that most on the loop (:attr:`Loop.trips`), computed with isl over the bounds
compiled for (a dynamic bound in ``min..max``) and the ranges of the enclosing loops.
"""

from __future__ import annotations

import islpy as isl

from .._ir.expr import symbols_of
from .._ir.program import Program
from .domains import BoundRanges, bounds_context
from .isl_convert import cond_to_set, expr_to_pwaff, isl_context
from .tree import Guard, Loop, Node, Sequence


def bound_trips(tree: Node, program: Program, ranges: BoundRanges) -> Node:
    """``tree`` with ``trips`` set on every loop whose range depends on a bound that is not
    one value in ``ranges`` (directly or through an enclosing loop)."""
    dynamic = {name for name, (least, largest) in ranges.items() if least != largest}
    if not dynamic:
        return tree
    ctx = isl_context()
    return _visit(tree, program, ranges, dynamic, (), ctx)


def _visit(
    node: Node,
    program: Program,
    ranges: BoundRanges,
    dynamic: set[str],
    outer: tuple[Loop, ...],
    ctx: isl.Context,
) -> Node:
    if isinstance(node, Sequence):
        return Sequence(
            tuple(_visit(c, program, ranges, dynamic, outer, ctx) for c in node.children)
        )
    if isinstance(node, Guard):
        return Guard(node.cond, _visit(node.body, program, ranges, dynamic, outer, ctx))
    if not isinstance(node, Loop):
        return node
    body = _visit(node.body, program, ranges, dynamic, (*outer, node), ctx)
    varying = {s.name for loop in (*outer, node) for s in symbols_of(loop.start - loop.stop)}
    trips = _most(node, program, ranges, outer, ctx) if varying & dynamic else None
    return Loop(node.dim, node.start, node.stop, body, node.reverse, trips)


def _most(
    loop: Loop, program: Program, ranges: BoundRanges, outer: tuple[Loop, ...], ctx: isl.Context
) -> int | None:
    """The largest ``stop - start`` of ``loop`` over the bounds and the enclosing loops."""
    params = [bound.name for bound in program.bounds]
    space = isl.Space.create_from_names(ctx, set=[o.dim for o in outer], params=params)
    where = isl.Set.universe(space).intersect_params(bounds_context(program, ctx, ranges))
    for o in outer:
        where = where.intersect(cond_to_set((o.var >= o.start) & (o.var < o.stop), space))
    if where.is_empty():
        return 0
    count = expr_to_pwaff(loop.stop - loop.start, space).intersect_domain(where)
    most = count.max_val()
    if most.is_infty() or most.is_nan():
        return None
    return max(0, int(most.to_python()))
