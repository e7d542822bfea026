"""Storage planning: how each read gets its value, from how the schedule tree reads it.

- *point*: the producer ran earlier in the same sequence at exactly the point read; the read
  takes the value directly (no storage at all).
- *window*: the producer runs in the same loop body and the read is ``d`` iterations back
  (``x[t - d]`` in a forward loop, ``x[t + d]`` in a reversed one); the loop carries a ring
  of the producer's last values, newest first.
- *full*: anything else (program outputs, ranges, reads across loops) reads a full buffer
  ``(*domain bounds, *shape)``.

An op output is stored in full only if some read needs it, so recurrences whose values are
read at the same or a recent step live in loop carries, and full buffers are only written
inside loops, never read back there (which would make XLA copy them every iteration).
"""

from __future__ import annotations

import dataclasses

from .._ir.expr import Const, Expr, Symbol, substitute
from .._ir.program import Program
from .._ir.simplify import simplify
from .._schedule.tree import Exec, Guard, Loop, Node, Sequence

Read = tuple[Exec, int]  # (the executing node, the index of the op's input edge)


@dataclasses.dataclass
class StoragePlan:
    local: set[Read] = dataclasses.field(default_factory=set)
    window: dict[Read, int] = dataclasses.field(default_factory=dict)  # read -> ring slot
    rings: dict[Loop, dict[tuple[int, int], int]] = dataclasses.field(default_factory=dict)
    buffered: set[tuple[int, int]] = dataclasses.field(default_factory=set)


def plan_storage(program: Program, tree: Node) -> StoragePlan:
    """Classify every read of the tree as point, window or full (see the module docstring)."""
    plan = StoragePlan(buffered={(out.edge.src, out.edge.out) for out in program.outputs})
    _plan(program, tree, None, plan)
    return plan


def _plan(program: Program, node: Node, loop: Loop | None, plan: StoragePlan) -> None:
    if isinstance(node, Loop):
        _plan(program, node.body, node, plan)
    elif isinstance(node, Guard):
        _plan(program, node.body, None, plan)  # guarded points: no carried values across it
    elif isinstance(node, Exec):
        _plan_sequence(program, (node,), loop, plan)
    elif isinstance(node, Sequence):
        _plan_sequence(program, node.children, loop, plan)
        for child in node.children:
            if not isinstance(child, Exec):
                _plan(program, child, None, plan)


def _plan_sequence(
    program: Program, children: tuple[Node, ...], loop: Loop | None, plan: StoragePlan
) -> None:
    """Plan the reads of the execs directly in one sequence (a loop body when ``loop``)."""
    execs = [child for child in children if isinstance(child, Exec)]
    points = {ex.op: tuple(simplify(e) for e in ex.point) for ex in execs}
    position = {ex.op: k for k, ex in enumerate(execs)}
    for k, ex in enumerate(execs):
        op = program.op(ex.op)
        at = dict(zip(op.domain, ex.point, strict=True))
        for j, edge in enumerate(op.inputs):
            if program.op(edge.src).kind == "input":
                continue
            target = tuple(simplify(substitute(item, at)) for item in edge.index)
            if edge.src in points and position[edge.src] < k and points[edge.src] == target:
                plan.local.add((ex, j))
                continue
            distance = _distance(loop, points.get(edge.src), target)
            if distance is None:
                plan.buffered.add((edge.src, edge.out))
                continue
            # A producer that already ran this iteration has shifted its ring by one.
            slot = distance - 1 + (position[edge.src] < k)
            plan.window[(ex, j)] = slot
            depths = plan.rings.setdefault(loop, {})
            key = (edge.src, edge.out)
            depths[key] = max(depths.get(key, 0), slot + 1)


def _distance(
    loop: Loop | None, produced: tuple[Expr, ...] | None, target: tuple[Expr, ...]
) -> int | None:
    """How many iterations of ``loop`` back ``target`` was produced, if a constant >= 1."""
    if loop is None or produced is None or len(produced) != len(target):
        return None
    var: Symbol = loop.var
    for p_item, t_item in zip(produced, target, strict=True):
        gap = simplify(p_item - t_item)
        if isinstance(gap, Const) and gap.value != 0:
            distance = gap.value if not loop.reverse else -gap.value
            if distance < 1:
                return None
            step = var - distance if not loop.reverse else var + distance
            shifted = tuple(simplify(substitute(e, {var: step})) for e in produced)
            return distance if shifted == target else None
    return None
