"""A small typed schedule tree: loops, sequences, guards and op executions.

The scheduler (:mod:`tempo_jax._schedule.scheduler`) turns isl's AST into this tree, so later
stages never touch isl. Every expression is one of our own index expressions
(:mod:`tempo_jax._ir.expr`) over the program's bounds and the enclosing loop variables.

- :class:`Loop` runs ``body`` with its variable taking ``start, start + 1, ..., stop - 1``
  (``stop - 1`` down to ``start`` when ``reverse``).
- :class:`Sequence` runs its children in order.
- :class:`Guard` runs ``body`` where ``cond`` holds.
- :class:`Exec` computes op ``op`` at ``point`` (one expression per dim of the op's domain).
- :class:`Alloc` and :class:`Free` bracket the lifetime of the full buffer of an op output
  (placed by the storage planner, :func:`tempo_jax._lower.storage.place_buffers`).

A loop variable is :func:`loop_var` of the loop's ``dim`` name: a symbol of its own scope
(:data:`LOOP_SCOPE`), so it never equals a program dim or bound even when it is named after
one (``for t in 0..T-1: S1[t - 1]`` means "op 1 at domain point ``t = loop t - 1``").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping

from .._ir.expr import Const, Expr, Symbol, substitute
from .._ir.program import Program
from .._ir.simplify import simplify

#: The ``program`` field of every loop variable symbol.
LOOP_SCOPE = -1


def loop_var(name: str) -> Symbol:
    """The symbol of the loop variable called ``name``."""
    return Symbol(name, LOOP_SCOPE, None)


@dataclasses.dataclass(frozen=True)
class Loop:
    """``for dim in start..stop-1: body`` (in reverse order when ``reverse``).

    ``trips``, set when the range depends on a dynamic bound, is the most iterations it takes
    over the bounds compiled for (:func:`tempo_jax._schedule.trips.bound_trips`).
    """

    dim: str
    start: Expr
    stop: Expr
    body: Node
    reverse: bool = False
    trips: int | None = None

    @property
    def var(self) -> Symbol:
        """The loop variable, as used by expressions in ``body``."""
        return loop_var(self.dim)


@dataclasses.dataclass(frozen=True)
class Sequence:
    """Run ``children`` one after the other."""

    children: tuple[Node, ...]


@dataclasses.dataclass(frozen=True)
class Guard:
    """Run ``body`` only where the condition ``cond`` holds."""

    cond: Expr
    body: Node


@dataclasses.dataclass(frozen=True)
class Exec:
    """Compute op ``op`` at ``point`` (one expression per op domain dim)."""

    op: int
    point: tuple[Expr, ...]


@dataclasses.dataclass(frozen=True)
class Alloc:
    """The full buffer of output ``out`` of op ``op`` comes into existence here."""

    op: int
    out: int


@dataclasses.dataclass(frozen=True)
class Free:
    """The full buffer of output ``out`` of op ``op`` is not needed after this point."""

    op: int
    out: int


Node = Loop | Sequence | Guard | Exec | Alloc | Free
ScheduleTree = Node


# ---------------------------------------------------------------------------------------------
# Traversals
# ---------------------------------------------------------------------------------------------


def steps(node: Node) -> tuple[Node, ...]:
    """The nodes ``node`` runs one after another: a sequence's children, else itself."""
    return node.children if isinstance(node, Sequence) else (node,)


def children(node: Node) -> tuple[Node, ...]:
    """The direct sub-nodes of ``node``."""
    if isinstance(node, Sequence):
        return node.children
    if isinstance(node, Loop | Guard):
        return (node.body,)
    return ()


def walk(tree: Node) -> Iterator[Node]:
    """Every node of ``tree``, pre-order (a node before its sub-nodes, children in order)."""
    stack: list[Node] = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(children(node)))


def execs(tree: Node) -> list[Exec]:
    """The :class:`Exec` leaves of ``tree``, in program order."""
    return [node for node in walk(tree) if isinstance(node, Exec)]


def loops(tree: Node) -> list[Loop]:
    """The :class:`Loop` nodes of ``tree``, pre-order."""
    return [node for node in walk(tree) if isinstance(node, Loop)]


def sequence(children: Iterable[Node]) -> Node:
    """``children`` run in order, as one node: nested sequences spliced in, one child alone
    as itself."""
    flat: list[Node] = []
    for child in children:
        flat += child.children if isinstance(child, Sequence) else (child,)
    return flat[0] if len(flat) == 1 else Sequence(tuple(flat))


def map_exprs(tree: Node, fn: Callable[[Expr], Expr]) -> Node:
    """``tree`` with ``fn`` applied to every expression (loop bounds, guards, exec points)."""
    if isinstance(tree, Exec):
        return Exec(tree.op, tuple(fn(x) for x in tree.point))
    if isinstance(tree, Alloc | Free):
        return tree
    if isinstance(tree, Guard):
        return Guard(fn(tree.cond), map_exprs(tree.body, fn))
    if isinstance(tree, Sequence):
        return Sequence(tuple(map_exprs(c, fn) for c in tree.children))
    body = map_exprs(tree.body, fn)
    return Loop(tree.dim, fn(tree.start), fn(tree.stop), body, tree.reverse, tree.trips)


def map_nodes(tree: Node, fn: Callable[[Node], Node]) -> Node:
    """``tree`` with ``fn`` applied to every leaf (execs, allocs, frees); a leaf it turns
    into a sequence is spliced into the sequence around it (:func:`sequence`)."""
    if isinstance(tree, Guard):
        return Guard(tree.cond, map_nodes(tree.body, fn))
    if isinstance(tree, Sequence):
        return sequence(map_nodes(c, fn) for c in tree.children)
    if isinstance(tree, Loop):
        return dataclasses.replace(tree, body=map_nodes(tree.body, fn))
    return fn(tree)


def substitute_tree(tree: Node, mapping: Mapping[Symbol, Expr]) -> Node:
    """``tree`` with symbols replaced in every expression (loops do not shadow: names are
    unique along any path of a tree built by the scheduler)."""
    return map_exprs(tree, lambda expr: simplify(substitute(expr, mapping)))


# ---------------------------------------------------------------------------------------------
# Concrete execution
# ---------------------------------------------------------------------------------------------


class _Env(dict):
    """Symbol -> value; bounds are found by name (``{"T": 5}`` or ``{T: 5}``)."""

    def __init__(self, by_name: Mapping[str, int]) -> None:
        super().__init__()
        self.by_name = dict(by_name)

    def __missing__(self, key: Symbol) -> int:
        if key.program != LOOP_SCOPE and key.name in self.by_name:
            return self.by_name[key.name]
        raise KeyError(key)


def points(tree: Node, bounds: Mapping[Symbol | str, int]) -> list[tuple[int, tuple[int, ...]]]:
    """Every ``(op id, domain point)`` that ``tree`` executes, in order, for concrete bounds."""
    env = _Env({getattr(k, "name", k): int(v) for k, v in bounds.items()})
    found: list[tuple[int, tuple[int, ...]]] = []
    _run(tree, env, found)
    return found


def _run(node: Node, env: _Env, found: list[tuple[int, tuple[int, ...]]]) -> None:
    if isinstance(node, Exec):
        found.append((node.op, tuple(int(x.evaluate(env)) for x in node.point)))
    elif isinstance(node, Sequence):
        for child in node.children:
            _run(child, env, found)
    elif isinstance(node, Guard):
        if node.cond.evaluate(env):
            _run(node.body, env, found)
    elif isinstance(node, Alloc | Free):
        pass
    else:
        values = range(node.start.evaluate(env), node.stop.evaluate(env))
        for value in reversed(values) if node.reverse else values:
            env[node.var] = value
            _run(node.body, env, found)
        env.pop(node.var, None)


# ---------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------


def render(tree: Node, program: Program) -> str:
    """Readable loop code, one statement per line::

    for t in 0..T-1:
        S1[t]  # s at corpus.py:39
    """
    lines: list[str] = []
    _render(tree, program, 0, lines)
    return "\n".join(lines)


def _render(node: Node, program: Program, depth: int, lines: list[str]) -> None:
    pad = "    " * depth
    if isinstance(node, Exec):
        op = program.op(node.op)
        point = ", ".join(str(x) for x in node.point)
        lines.append(f"{pad}S{op.id}[{point}]  # {op.name} ({op.kind}) at {op.source}")
    elif isinstance(node, Sequence):
        for child in node.children:
            _render(child, program, depth, lines)
    elif isinstance(node, Guard):
        lines.append(f"{pad}if {node.cond}:")
        _render(node.body, program, depth + 1, lines)
    elif isinstance(node, Alloc | Free):
        what = "alloc" if isinstance(node, Alloc) else "free"
        lines.append(f"{pad}{what} S{node.op}.{node.out}  # buffer of {program.op(node.op).name}")
    else:
        last = simplify(node.stop - Const(1))
        span = f"{node.start}..{last}"
        span = f"reversed({span})" if node.reverse else span
        lines.append(f"{pad}for {node.dim} in {span}:")
        _render(node.body, program, depth + 1, lines)
