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

An op not over ``t`` that both reads values over ``t`` and is read by ops over ``t`` is split
point by point: its points that read an op over ``t`` run in the loop, each at the one point of
``t`` it reads (e.g. a KV cache over all positions ``u``, ``c[u < P] = k_prompt[u]``,
``c[True] = k_step[u - P]``: the point ``u = P + t`` runs at ``t``), the others before it. Its
points over ``t`` keep their own coordinates, constrained to the loop's point.

A program that cannot be split so raises :class:`UnsupportedError` at compile time: an op over
``t`` reading a later point of ``t`` of a computed op (a backward recurrence, ``x[t+1]``,
``r[t:T]``), or an op not over ``t`` that reads values over ``t`` and is read by ops over ``t``
but whose points do not each read one point of ``t`` (it would need points of ``t`` the loop
has not run yet).
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
    listed = domain.get_set_list()
    sets = {
        int(s.get_tuple_name()[1:]): s for s in (listed.get_at(k) for k in range(listed.n_set()))
    }
    where, steps = _placement(program, dim, positions, pairs)
    for op_id, s in sets.items():  # the coordinate of t each point of an op in the loop runs at
        if op_id in positions:
            steps[op_id] = _coordinate(s, positions[op_id])
    parts = {name: isl.UnionSet.empty(domain.get_space()) for name in ("before", "inner", "after")}
    pieces: dict[int, isl.Set] = {}  # op in the loop -> its points there, t a parameter
    early: dict[int, isl.Set] = {}  # split op -> its points before the loop
    for op_id, s in sets.items():
        part = where.setdefault(op_id, "after")
        if part == "split":
            early[op_id] = s.subtract(steps[op_id].domain())
            parts["before"] = parts["before"].union(isl.UnionSet.from_set(early[op_id]))
            pieces[op_id] = _at_step(steps[op_id], dim.name)
            where[op_id] = "inner"
            continue
        if part == "inner":
            pieces[op_id] = _at_step(steps[op_id], dim.name)
        else:
            parts[part] = parts[part].union(isl.UnionSet.from_set(s))
    for op_id, piece in pieces.items():
        if op_id in positions:
            piece = _to_param(sets[op_id], positions[op_id], dim.name)
        parts["inner"] = parts["inner"].union(isl.UnionSet.from_set(piece))
    found = {name: isl.UnionMap.empty(deps.get_space()) for name in parts}
    for m in pairs:  # a dependence across parts holds by their order
        src, dst = _op_id(m, _DT.in_), _op_id(m, _DT.out)
        if where[src] == "inner" and where[dst] == "inner":
            if _later(m, steps[src], steps[dst]):
                raise _later_point_error(program, dim, dst, src)
            m = _within_point(m, pieces[src], pieces[dst], positions.get(src), positions.get(dst))
            found["inner"] = found["inner"].union(isl.UnionMap.from_map(m))
        elif where[src] == where[dst]:
            found[where[src]] = found[where[src]].union(isl.UnionMap.from_map(m))
        elif where[src] == "before" and dst in early:
            m = m.intersect_range(early[dst])
            found["before"] = found["before"].union(isl.UnionMap.from_map(m))
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
) -> tuple[dict[int, str], dict[int, isl.Map]]:
    """Op id -> ``"before"``, ``"inner"`` or ``"split"`` (ops after the loop are left out), and
    per split op the point of ``t`` each of its points in the loop runs at."""
    reads: dict[int, set[int]] = {}  # consumer -> producers
    readers: dict[int, set[int]] = {}  # producer -> consumers
    for m in pairs:
        src, dst = _op_id(m, _DT.in_), _op_id(m, _DT.out)
        reads.setdefault(dst, set()).add(src)
        readers.setdefault(src, set()).add(dst)
    before = _reachable(set(positions), reads) - set(positions)
    feeding_back = before & _reachable(set(positions), readers)
    steps = {}
    for op_id in sorted(feeding_back):
        step = _step_of(op_id, pairs, positions, feeding_back)
        if step is None:
            raise _feeds_back_error(program, dim, op_id)
        steps[op_id] = step
    where = {op_id: "before" for op_id in before} | dict.fromkeys(positions, "inner")
    return where | dict.fromkeys(feeding_back, "split"), steps


def _step_of(
    op_id: int, pairs: list[isl.Map], positions: Mapping[int, int], feeding_back: set[int]
) -> isl.Map | None:
    """The point of ``t`` at which each point of ``op_id`` that reads an op over ``t`` runs: the
    one point it reads (``None`` when some point reads several, or reads another op that
    feeds back)."""
    found = None
    for m in pairs:
        src, dst = _op_id(m, _DT.in_), _op_id(m, _DT.out)
        if dst != op_id or src == op_id:
            continue
        if src in feeding_back:
            return None
        if src not in positions:
            continue
        step = m.reverse().apply_range(_coordinate(m.domain(), positions[src]))
        found = step if found is None else found.union(step)
    if found is None or not found.is_single_valued():
        return None
    return found


def _coordinate(s: isl.Set, pos: int) -> isl.Map:
    """The map from the points of ``s`` to their coordinate ``pos`` (an unnamed 1-d tuple)."""
    n = s.dim(_DT.set)
    ident = isl.Map.identity(s.get_space().map_from_set()).intersect_domain(s)
    ident = ident.project_out(_DT.out, pos + 1, n - pos - 1).project_out(_DT.out, 0, pos)
    return ident.reset_tuple_id(_DT.out).set_dim_name(_DT.out, 0, "step")


def _at_step(step: isl.Map, name: str) -> isl.Set:
    """The points of ``step``'s domain that run at the point of ``t`` given by a parameter
    ``name``."""
    n = step.dim(_DT.param)
    step = step.insert_dims(_DT.param, n, 1).set_dim_name(_DT.param, n, name)
    return step.equate(_DT.param, n, _DT.out, 0).domain()


def _later(m: isl.Map, src: isl.Map, dst: isl.Map) -> bool:
    """Whether a dependence of ``m`` goes from a later point of ``t`` to an earlier one."""
    steps = src.reverse().apply_range(m).apply_range(dst)  # producer's t -> consumer's t
    return not steps.order_gt(_DT.in_, 0, _DT.out, 0).is_empty()


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


def _within_point(
    m: isl.Map, src: isl.Set, dst: isl.Set, src_pos: int | None, dst_pos: int | None
) -> isl.Map:
    """The dependences of ``m`` between points at the same point of ``t``: ``src`` and ``dst``
    are the producer's and the consumer's points at a parameter ``t``; the coordinate of ``t``
    (at ``src_pos`` / ``dst_pos`` for ops over it) is dropped."""
    names = (m.get_tuple_name(_DT.in_), m.get_tuple_name(_DT.out))
    m = m.intersect_domain(src).intersect_range(dst)
    if dst_pos is not None:
        m = m.project_out(_DT.out, dst_pos, 1)
    if src_pos is not None:
        m = m.project_out(_DT.in_, src_pos, 1)
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
