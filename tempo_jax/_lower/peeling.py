"""Peeling: a loop split where its body's guards or merge branches change.

Guards on the loop variable alone and merges whose branch conditions depend on it alone are
constant over a few ranges of a loop: :func:`loop_pieces` gives each range as its own piece,
its guards resolved and its merges' active branches known (the lowering, :mod:`.execute`,
runs each piece as a loop of its own).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._ir.expr import BoolConst, Expr, eq, substitute, symbols_of
from .._schedule.tree import Guard, Loop, Node, walk
from .._schedule.tree import Sequence as SequenceNode
from .storage import iteration_execs

if TYPE_CHECKING:
    from .execute import TreeLowering

MAX_PIECES = 8  # a loop is split at most this many ways to take guards out of its body
Piece = tuple[Any, Any, Node, dict]  # start, stop, body, resolved merge branches and captures


def loop_pieces(lowering: TreeLowering, node: Loop, start: Any, stop: Any) -> list[Piece]:
    """The loop split where its body's guards or merge branches change (peeling).

    Guards on the loop variable alone (``if t >= 1``, from a schedule shifting one
    statement against another) and merges whose branch conditions depend on it alone
    (``x[0] = ...; x[t + 1] = ...``) are constant over a few ranges of the loop: each
    range becomes its own loop, where those guards are resolved and those merges compute
    only their active branch, so no iteration branches or selects. Anything else stays
    dynamic (``lax.cond``, ``jnp.where``).

    A loop with a loop in its body (a training step, a decoding step over its layers) is
    not split: each piece is a copy of its body in the program XLA compiles (a training
    loop's first iteration peeled off doubled the LM's HLO), and the selects and branches a
    split saves are small beside the body's own work.
    """
    whole: list[Piece] = [(start, stop, node.body, {})]
    if not isinstance(start, int) or not isinstance(stop, int) or stop <= start:
        return whole
    if any(isinstance(inner, Loop) for inner in walk(node.body)):
        return whole
    static = {b: v for b, v in lowering.runtime.items() if isinstance(v, int)}
    known = {node.var, *static}
    values = np.arange(start, stop)
    env = {**static, node.var: values}

    def truth(cond: Expr) -> np.ndarray:
        return np.broadcast_to(np.asarray(cond.evaluate(env), bool), values.shape)

    guards = [g for g in _direct_guards(node.body) if symbols_of(g.cond) <= known]
    rows = [truth(g.cond) for g in guards]
    # merge op id -> its active branch; captured output name -> whether it is captured
    switches: list[tuple[int | str, np.ndarray]] = []
    for ex in iteration_execs(node.body):
        op = lowering.program.op(ex.op)
        if op.kind != "merge":
            continue
        at = dict(zip(op.domain, ex.point, strict=True))
        conds = [substitute(edge.cond, at) for edge in op.inputs]
        if all(symbols_of(c) <= known for c in conds):
            held = np.stack([truth(c) for c in conds])
            active = np.where(held.any(axis=0), held.argmax(axis=0), -1)  # first match
            switches.append((op.id, active))
        for k in range(len(op.outputs)):
            for out in lowering.layout.captures.get((op.id, k), ()):
                hit = same_point(ex.point, out.edge.index)
                if symbols_of(hit) <= known:  # the captured point: a piece of its own
                    switches.append((out.name, truth(hit).astype(int)))
    rows += [row for _, row in switches]
    if not rows:
        return whole
    table = np.stack(rows)
    changes = np.flatnonzero(np.any(table[:, 1:] != table[:, :-1], axis=0)) + 1
    cuts = [0, *changes.tolist(), len(values)]
    if len(cuts) - 1 > MAX_PIECES:
        return whole
    pieces: list[Piece] = []
    for a, b in itertools.pairwise(cuts):
        resolved = {id(g): bool(row[a]) for g, row in zip(guards, rows, strict=False)}
        branches = {key: int(row[a]) for key, row in switches}
        body = _resolve(node.body, resolved)
        pieces.append((start + a, start + b, body, branches))
    return pieces[::-1] if node.reverse else pieces


def _direct_guards(body: Node) -> list[Guard]:
    if isinstance(body, Guard):
        return [body]
    if isinstance(body, SequenceNode):
        return [child for child in body.children if isinstance(child, Guard)]
    return []


def _resolve(body: Node, resolved: dict[int, bool]) -> Node:
    """``body`` with the guards of ``resolved`` given constant conditions (same execs)."""
    if isinstance(body, Guard) and id(body) in resolved:
        return Guard(BoolConst(resolved[id(body)]), body.body)
    if isinstance(body, SequenceNode):
        return SequenceNode(tuple(_resolve(child, resolved) for child in body.children))
    return body


def same_point(point: Sequence[Expr], index: Sequence[Any]) -> Expr:
    """The condition that an exec at ``point`` produces the point ``index`` reads."""
    cond: Expr = BoolConst(True)
    for p, q in zip(point, index, strict=True):
        cond = cond & eq(p, q) if cond != BoolConst(True) else eq(p, q)
    return cond
