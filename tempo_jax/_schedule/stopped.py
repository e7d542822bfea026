"""Scheduling a program that ``p.stop_when`` ends: every op over the stopped dim in one loop.

``p.stop_when(cond)``, ``cond`` over ``t``, ends the loop over ``t`` after the first point
where ``cond`` holds (a ``lax.while_loop`` once lowered). For no point past the stop to be
computed, every op over ``t`` must run inside that one loop, at the loop's own point; isl, left
to itself, may give two recurrences over ``t`` two loops, or fuse them with a shift. So a
program with a stop is scheduled in three parts, one after the other (:func:`split_at_stop`):

- *before*: the ops not over ``t`` that ops over ``t`` read, directly or through other ops;
- *the loop* ``for t in 0..T-1``, outermost, holding every op over ``t``. Inside it isl
  schedules the dependences within one point of ``t``, with ``t`` made a parameter
  (dependences on earlier points hold by the loop's order);
- *after*: every other op (those reading values over ``t``, e.g. a sum of ``x[0:T]``).

A program that cannot be split so raises :class:`UnsupportedError` at compile time: an op over
``t`` reading a later point of ``t`` of a computed op (a backward recurrence, ``x[t+1]``,
``r[t:T]``), or an op not over ``t`` that both reads values over ``t`` and is read by ops over
``t`` (it would need points of ``t`` the loop has not run yet).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import islpy as isl

from .._ir.errors import UnsupportedError
from .._ir.expr import Symbol
from .._ir.program import Program
from .._ir.source import describe
from .tree import Alloc, Exec, Free, Guard, Loop, Node, Sequence

_DT = isl.dim_type


@dataclasses.dataclass(frozen=True)
class StopSplit:
    """The three parts of a stopped program's schedule (module docstring), as isl objects.

    ``inner`` holds the domains of the ops over the stopped dim with that dim moved to the
    last parameter (named after it), ``inner_deps`` their dependences within one point of it,
    and ``inner_context`` the bounds' context with ``0 <= t < T``. ``positions`` gives, per op
    over the stopped dim, the position of that dim in its domain.
    """

    before: isl.UnionSet
    before_deps: isl.UnionMap
    inner: isl.UnionSet
    inner_deps: isl.UnionMap
    inner_context: isl.Set
    after: isl.UnionSet
    after_deps: isl.UnionMap
    positions: Mapping[int, int]


def split_at_stop(program: Program, domain: isl.UnionSet, deps: isl.UnionMap) -> StopSplit:
    """The parts of the schedule of ``program`` (which has a stop), from its computed ops'
    ``domain`` and their dependences ``deps`` (producer point -> consumer point)."""
    dim = program.stopped
    assert dim is not None
    positions = {
        op.id: op.domain.index(dim) for op in program.ops if op.kind != "input" and dim in op.domain
    }
    maps = deps.get_map_list()
    pairs = [maps.get_at(k) for k in range(maps.n_map())]
    where = _placement(program, dim, positions, pairs)
    parts = {name: isl.UnionSet.empty(domain.get_space()) for name in ("before", "inner", "after")}
    listed = domain.get_set_list()
    for k in range(listed.n_set()):
        s = listed.get_at(k)
        op_id = int(s.get_tuple_name()[1:])
        part = where.setdefault(op_id, "after")
        if part == "inner":
            s = _to_param(s, positions[op_id], dim.name)
        parts[part] = parts[part].union(isl.UnionSet.from_set(s))
    found = {name: isl.UnionMap.empty(deps.get_space()) for name in parts}
    for m in pairs:  # a dependence across parts holds by their order
        src, dst = _op_id(m, _DT.in_), _op_id(m, _DT.out)
        if where[src] != where[dst]:
            continue
        if where[src] == "inner":
            pp, pc = positions[src], positions[dst]
            if not m.order_gt(_DT.in_, pp, _DT.out, pc).is_empty():
                raise _later_point_error(program, dim, dst, src)
            m = _within_point(m, pp, pc, dim.name)
        found[where[src]] = found[where[src]].union(isl.UnionMap.from_map(m))
    return StopSplit(
        parts["before"],
        found["before"],
        parts["inner"],
        found["inner"],
        parts["inner"].params(),
        parts["after"],
        found["after"],
        positions,
    )


def _placement(
    program: Program, dim: Symbol, positions: Mapping[int, int], pairs: list[isl.Map]
) -> dict[int, str]:
    """Op id -> ``"before"`` or ``"inner"`` (ops after the loop are left out)."""
    reads: dict[int, set[int]] = {}  # consumer -> producers
    readers: dict[int, set[int]] = {}  # producer -> consumers
    for m in pairs:
        src, dst = _op_id(m, _DT.in_), _op_id(m, _DT.out)
        reads.setdefault(dst, set()).add(src)
        readers.setdefault(src, set()).add(dst)
    before = _reachable(set(positions), reads) - set(positions)
    feeding_back = before & _reachable(set(positions), readers)
    if feeding_back:
        raise _feeds_back_error(program, dim, min(feeding_back))
    return {op_id: "before" for op_id in before} | dict.fromkeys(positions, "inner")


def inner_view(program: Program) -> Program:
    """``program`` with the stopped dim dropped from every domain: the ops as the schedule of
    the loop's body (:attr:`StopSplit.inner`) sees them."""
    dim = program.stopped
    ops = tuple(
        op.replace(domain=tuple(d for d in op.domain if d != dim)) if dim in op.domain else op
        for op in program.ops
    )
    return program.replace(ops=ops)


def with_stopped_dim(tree: Node, positions: Mapping[int, int], var: Symbol) -> Node:
    """``tree`` (of :func:`inner_view`) with ``var`` put back as each op's stopped coordinate."""
    if isinstance(tree, Exec):
        if tree.op not in positions:
            return tree
        at = positions[tree.op]
        return Exec(tree.op, (*tree.point[:at], var, *tree.point[at:]))
    if isinstance(tree, Alloc | Free):
        return tree
    if isinstance(tree, Guard):
        return Guard(tree.cond, with_stopped_dim(tree.body, positions, var))
    if isinstance(tree, Sequence):
        return Sequence(tuple(with_stopped_dim(c, positions, var) for c in tree.children))
    body = with_stopped_dim(tree.body, positions, var)
    return Loop(tree.dim, tree.start, tree.stop, body, tree.reverse, tree.trips)


def _op_id(m: isl.Map, side: isl.dim_type) -> int:
    return int(m.get_tuple_name(side)[1:])


def _reachable(start: set[int], edges: Mapping[int, set[int]]) -> set[int]:
    """Every node reachable from ``start`` along ``edges`` (``start`` included)."""
    seen, stack = set(start), list(start)
    while stack:
        for nxt in edges.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _to_param(s: isl.Set, pos: int, name: str) -> isl.Set:
    """The set ``s`` with its dim ``pos`` moved to a parameter ``name``."""
    n = s.dim(_DT.param)
    moved = s.move_dims(_DT.param, n, _DT.set, pos, 1).set_dim_name(_DT.param, n, name)
    return moved.set_tuple_name(s.get_tuple_name())


def _within_point(m: isl.Map, src: int, dst: int, name: str) -> isl.Map:
    """The dependences of ``m`` between points with equal stopped coordinates (``src`` of the
    producer, ``dst`` of the consumer), with that coordinate a parameter ``name``."""
    names = (m.get_tuple_name(_DT.in_), m.get_tuple_name(_DT.out))
    m = m.equate(_DT.in_, src, _DT.out, dst).project_out(_DT.out, dst, 1)
    n = m.dim(_DT.param)
    m = m.move_dims(_DT.param, n, _DT.in_, src, 1).set_dim_name(_DT.param, n, name)
    return m.set_tuple_name(_DT.in_, names[0]).set_tuple_name(_DT.out, names[1])


def _later_point_error(program: Program, dim: Symbol, consumer: int, producer: int) -> Exception:
    reader, read = program.op(consumer), program.op(producer)
    edges = ", ".join(f"`{e.describe(read.name)}`" for e in reader.inputs if e.src == producer)
    return UnsupportedError(
        f"`{reader.name}`{describe(reader.source)} reads {edges or f'`{read.name}`'} at a later "
        f"point of `{dim.name}`, which `p.stop_when` ends: every op over `{dim.name}` runs "
        f"inside the one loop the stop ends, in order, and points past the stop are never "
        f"computed. Read earlier points only (e.g. `x[{dim.name} - 1]`), or compute this from "
        "the program's outputs after it."
    )


def _feeds_back_error(program: Program, dim: Symbol, op_id: int) -> Exception:
    op = program.op(op_id)
    return UnsupportedError(
        f"`{op.name}`{describe(op.source)} is not over `{dim.name}`, yet it reads values over "
        f"`{dim.name}` and ops over `{dim.name}` read it. `p.stop_when` ends the one loop over "
        f"`{dim.name}`, inside which every op over `{dim.name}` runs, so it would need points "
        f"the loop has not run yet. Compute it over `{dim.name}` (e.g. read `x[0]` at every "
        f"point of `{dim.name}`), or pass it as an input."
    )
