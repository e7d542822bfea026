"""Running sums kept per iteration of a loop: a gradient summed over a rollout's steps.

An accumulating op (``Payload.accumulates``) reads a box of producer points it only sums; the
lowering keeps a running sum, added to wherever the producer runs, instead of the points.
With constant ends the box is summed once over the whole program. :func:`per_iteration`
also takes a box pinning a dim at the reader's own point, when the schedule walks that dim
in one loop around both (a learner streaming inside the acting loop of each iteration).
"""

from __future__ import annotations

from .._ir.expr import Const, IndexItem, Slice, Symbol, symbols_of
from .._ir.program import Program
from .._ir.simplify import simplify
from .._schedule.tree import Node
from .latest import exec_sites


def per_iteration(
    program: Program, tree: Node, key: tuple[int, int], index: tuple[IndexItem, ...]
) -> tuple[IndexItem, ...] | None:
    """The box of producer points one running sum of ``key`` adds (``index``, read by its one
    accumulating reader), or None where no running sum serves the read.

    A box pinning a dim at the reader's own point (``g[i] = sum(x[i, 0:T])``) is summed per
    iteration of a loop over that dim holding every exec of the producer and of the reader at
    the loop's variable: within an iteration every point the producer adds is the reader's,
    and the reader takes the sum before the next iteration adds to it (then it is zeroed, see
    ``StoragePlan.reset``). The box returned spans such dims whole."""
    producer = program.op(key[0])
    pinned = {
        pos: item
        for pos, item in enumerate(index)
        if not isinstance(item, Slice) and symbols_of(item)
    }
    if not pinned:
        return index
    if any(item != producer.domain[pos] for pos, item in pinned.items()):
        return None
    reader = next(
        (
            op
            for op in program.ops
            if op.payload is not None
            and op.payload.accumulates
            and any((e.src, e.out) == key for e in op.inputs)
        ),
        None,
    )
    if reader is None:
        return None
    sites = exec_sites(tree, (), (), [])
    for dim in pinned.values():
        assert isinstance(dim, Symbol)
        if dim not in reader.domain:
            return None
        loops: set[int] = set()
        for ex, site in sites:
            if ex.op not in (producer.id, reader.id):
                continue
            own = program.op(ex.op).domain.index(dim)
            around = [lp for lp in site.loops if simplify(ex.point[own]) == lp.var]
            if len(around) != 1:
                return None
            loops.add(id(around[0]))
        if len(loops) != 1:
            return None
    return tuple(
        Slice(Const(0), producer.domain[pos].bound) if pos in pinned else item
        for pos, item in enumerate(index)
    )
