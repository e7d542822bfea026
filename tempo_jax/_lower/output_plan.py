"""Which outputs are their buffer as stored, decided before lowering.

An output reads its value at every point of its domain. When that read takes its full buffer
whole, point after point in the buffer's own order, the output *is* the buffer: the lowering
returns the array itself (XLA then writes the program's result in place, no gather and no
second array), and the memory plan counts no copy for it. Any other output (a part of its
buffer, another axis order, a buffer cut into arrays, kept in a cycle or freed before the end)
is gathered point by point into an array of its own. So is a whole buffer written by a nest
computed at once: XLA fuses that gather into the nest's one update of its buffer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._ir.expr import Slice
from .._ir.program import Output
from .._schedule.tree import Free, walk

if TYPE_CHECKING:
    from .buffer_plan import BufferPlan


def plan_whole_outputs(plan: BufferPlan) -> tuple[frozenset[str], frozenset[str]]:
    """The names of the program's outputs that are their full buffer as stored (XLA holds
    no copy of them), and of those the lowering returns as the buffer itself: all but the
    ones written by a nest computed at once, whose buffer is one update of a zero array that
    XLA fuses with the gather (updating the output in place instead makes a copy)."""
    freed = {(n.op, n.out) for n in walk(plan.tree) if isinstance(n, Free)}
    at_once = {ex.op for nest in plan.nests.values() if nest.query is None for ex in nest.execs}
    whole, returned = set(), set()
    for out in buffered_outputs(plan):
        key = (out.edge.src, out.edge.out)
        if key in freed:
            continue
        if key in plan.cycles or key in plan.splits or key in plan.layouts:
            continue
        if _in_order(plan, out):
            whole.add(out.name)
            if key[0] not in at_once:
                returned.add(out.name)
    return frozenset(whole), frozenset(returned)


def buffered_outputs(plan: BufferPlan) -> list[Output]:
    """The program's outputs read from a full buffer of a computed op (not an input, not a
    captured one-point value): each is that buffer, or an array gathered from it."""
    program = plan.program
    return [
        out
        for out in program.outputs
        if (out.edge.src, out.edge.out) in plan.plan.buffered
        and program.op(out.edge.src).kind != "input"
        and out.name not in plan.plan.captured
    ]


def _in_order(plan: BufferPlan, out: Output) -> bool:
    """Whether ``out`` reads every point of its buffer in the buffer's order: a point per
    domain dim, the output's dims in order, and a whole static axis per range."""
    key = (out.edge.src, out.edge.out)
    shape = plan.logical_shape(*key)
    index = plan.stored_index(out.edge)
    if len(out.domain) + sum(isinstance(i, Slice) for i in index) != len(index):
        return False
    for axis, item in enumerate(index):
        if axis < len(out.domain):
            dim = out.domain[axis]
            if isinstance(item, Slice) or str(item) != str(dim):
                return False
            if plan.bounds[dim.bound] != shape[axis]:
                return False
        elif not (
            isinstance(item, Slice)
            and str(item.start) == "0"
            and plan.is_static(item.size)
            and int(item.size.evaluate(plan.runtime)) == shape[axis]
        ):
            return False
    return True
