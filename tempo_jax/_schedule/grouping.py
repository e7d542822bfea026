"""Guards with the same condition in one loop body, brought together and merged into one.

isl orders the statements of a loop body by their dependences alone, and work that runs
under one condition often comes out in pieces between unguarded statements. PPO's
minibatch body holds its rollout, its advantages and the gathers of every minibatch of the
iteration under ``if (e == 0) & (m == 0)``, in ten guards between the steps of the
minibatch's loss: each becomes its own ``lax.cond``, run at every minibatch.

:func:`group_guards` rewrites each sequence of the tree (innermost first): a guard moves next
to an earlier guard with the same condition when nothing between them conflicts with it, or
the earlier one moves forward to it under the same rule, and neighbouring guards with the same
condition become one. Two nodes conflict when one runs an op the other reads, when both run
sinks (their calls keep their order) or when either runs the op ``p.stop_when`` tests; the
check is per op, not per point (PPO's ten guards become two: a guard computing other
minibatches' points of an op the loss reads at its own stays after the loss). Every
point still runs once, and every op after the ops it reads within an iteration, so the
values are unchanged; the storage plan is made afterwards, on the merged tree.
"""

from __future__ import annotations

import dataclasses

from .._ir.program import Program
from .tree import Guard, Loop, Node, Sequence, execs, sequence


@dataclasses.dataclass(frozen=True)
class _Use:
    """What a node runs and reads (op ids), and whether it must keep its place."""

    runs: frozenset[int]
    reads: frozenset[int]
    ordered: bool  # runs a sink or the stop's op: never moved across another such node

    def conflicts(self, other: _Use) -> bool:
        return bool(
            self.runs & other.reads or other.runs & self.reads or (self.ordered and other.ordered)
        )


def group_guards(tree: Node, program: Program) -> Node:
    """``tree`` with the guards of each sequence that test the same condition merged
    (module docstring)."""
    if isinstance(tree, Sequence):
        return _gather([group_guards(child, program) for child in tree.children], program)
    if isinstance(tree, Guard):
        return Guard(tree.cond, group_guards(tree.body, program))
    if isinstance(tree, Loop):
        return dataclasses.replace(tree, body=group_guards(tree.body, program))
    return tree


def _use(node: Node, program: Program) -> _Use:
    ran = [ex.op for ex in execs(node)]
    stop = program.stop.edge.src if program.stop is not None else None
    ordered = any(program.op(op).kind == "sink" or op == stop for op in ran)
    reads = frozenset(edge.src for op in ran for edge in program.op(op).inputs)
    return _Use(frozenset(ran), reads, ordered)


def _gather(children: list[Node], program: Program) -> Node:
    """One sequence's children with same-condition guards moved together and merged."""
    uses = [_use(child, program) for child in children]
    moved = True
    while moved:
        moved = False
        for a, first in enumerate(children):
            if not isinstance(first, Guard):
                continue
            for b in range(a + 1, len(children)):
                second = children[b]
                if not isinstance(second, Guard) or second.cond != first.cond:
                    continue
                if b == a + 1:  # neighbours: one guard
                    body = _gather(_flat(first.body) + _flat(second.body), program)
                    children[a : a + 2] = [Guard(first.cond, body)]
                    uses[a : a + 2] = [_use(children[a], program)]
                else:  # brought together: merged on the next pass
                    between = uses[a + 1 : b]
                    if not any(uses[b].conflicts(use) for use in between):
                        order = [*range(a + 1), b, *range(a + 1, b), *range(b + 1, len(children))]
                    elif not any(uses[a].conflicts(use) for use in between):
                        order = [*range(a), *range(a + 1, b), a, *range(b, len(children))]
                    else:
                        continue
                    children = [children[k] for k in order]
                    uses = [uses[k] for k in order]
                moved = True
                break
            if moved:
                break
    return sequence(children)


def _flat(node: Node) -> list[Node]:
    return list(node.children) if isinstance(node, Sequence) else [node]
