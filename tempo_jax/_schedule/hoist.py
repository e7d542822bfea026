"""Work guarded to a loop's first iteration, moved before the loop.

isl often puts work that runs once into the first iteration of a loop nest that follows it:
PPO's rollout and GAE loops come out inside the learner's epoch and minibatch loops as
``for e: for m: if (e == 0) & (m == 0): <rollout>``, and a constant made once as
``for i: if i == 0: S45[]``. Both are legal, but the lowering then either splits the loop
where the guard changes (tracing the whole body once more: for ``i``, every PPO iteration
twice) or branches with ``lax.cond`` in every iteration.

:func:`hoist_first_iterations` rewrites the tree (innermost loops first): a guard directly
in a loop's body whose condition includes ``var == start`` moves before the loop, with
``var`` replaced by ``start`` (the rest of its condition stays as a guard around it), when

- the loop runs at least once (it starts at 0 and ends at a bound, or at a constant above
  its start; not the loop a stop can end, not a reversed one), and
- no op the guard runs reads an op of a sibling before it in the loop's body (at the first
  iteration those ran first; the guards before it that move keep their order).

Points and order of execution are otherwise unchanged.
"""

from __future__ import annotations

import dataclasses

from .._ir.expr import TRUE, And, Cmp, Const, Expr, Symbol, conjuncts, substitute
from .._ir.program import Program
from .._ir.simplify import simplify
from .tree import Guard, Loop, Node, Sequence, execs, sequence, steps, substitute_tree


def hoist_first_iterations(tree: Node, program: Program) -> Node:
    """``tree`` with first-iteration guards moved before their loops (module docstring)."""
    return _hoist(tree, program)


def _hoist(node: Node, program: Program) -> Node:
    if isinstance(node, Sequence):
        return sequence([_hoist(child, program) for child in node.children])
    if isinstance(node, Guard):
        return Guard(node.cond, _hoist(node.body, program))
    if isinstance(node, Loop):
        loop = dataclasses.replace(node, body=_hoist(node.body, program))
        return _take_first(loop, program)
    return node


def _take_first(loop: Loop, program: Program) -> Node:
    if not _runs(loop, program):
        return loop
    children = steps(loop.body)
    moved: list[Node] = []
    kept: list[Node] = []
    earlier: set[int] = set()  # the ops of ``kept``
    for child in children:
        rest = _first_only(child, loop.var, loop.start) if isinstance(child, Guard) else None
        if rest is None or _reads(child, earlier, program):
            kept.append(child)
            earlier.update(ex.op for ex in execs(child))
            continue
        assert isinstance(child, Guard)
        body = substitute_tree(child.body, {loop.var: loop.start})
        moved.append(body if rest == TRUE else Guard(rest, body))
    if not moved:
        return loop
    if not kept:
        return sequence(moved)
    return sequence([*moved, dataclasses.replace(loop, body=sequence(kept))])


def _runs(loop: Loop, program: Program) -> bool:
    """Whether ``loop`` surely runs its first iteration (every bound is at least 1)."""
    if loop.reverse or loop.start != Const(0):
        return False
    if program.stopped is not None and loop.dim == program.stopped.name:
        return False
    stop = loop.stop
    if isinstance(stop, Const):
        return stop.value >= 1
    return isinstance(stop, Symbol) and stop in program.bounds


def _first_only(guard: Guard, var: Symbol, start: Expr) -> Expr | None:
    """The rest of ``guard``'s condition when it includes ``var == start``, else None."""
    terms = conjuncts(guard.cond)
    first = [t for t in terms if isinstance(t, Cmp) and t.op == "==" and {t.a, t.b} == {var, start}]
    if not first:
        return None
    rest: Expr = TRUE
    for term in terms:
        if term is not first[0]:
            rest = term if rest == TRUE else And(rest, term)
    return simplify(substitute(rest, {var: start}))


def _reads(node: Node, earlier: set[int], program: Program) -> bool:
    """Whether an op ``node`` runs reads one of the ops ``earlier``."""
    return any(edge.src in earlier for ex in execs(node) for edge in program.op(ex.op).inputs)
