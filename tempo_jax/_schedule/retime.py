"""Retiming: ops that stream behind a loop are scheduled that many steps late, fused into it.

A pass that keeps work in a loop over ``d`` although it reads a bounded way ahead along ``d``
(:mod:`tempo_jax._passes.streaming`: n-step returns ``r[t : min(t + n, T)]`` and the learner
after them) records those ops in ``Program.streams``. isl, preferring loops without shifts,
would run them in a second loop after the first, which needs every step of the first stored.
:func:`shifts` gives each such op the delay ``s`` along ``d`` that makes every read it makes
look back, never ahead: the largest reach ahead of its reads plus the delay of the op read,
a longest path over the streamed ops (``n - 1`` for n-step returns and all that follows them).
The scheduler hands isl each streamed op's domain moved ``s`` steps later (:func:`shift_map`),
and moves the points of the tree it gets back to the ops' own (:func:`unshifted`): one loop,
the streamed ops ``s`` iterations behind the ops they read, whose values a ring of ``s + 1``
rows holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import islpy as isl

from .._ir.expr import Add, Const, Expr, Max, Min, Slice, Sub, Symbol, dims_of
from .._ir.program import Program
from .._ir.simplify import simplify
from . import isl_convert as ic
from .tree import Exec, Node, map_nodes

UNBOUNDED = math.inf
Delays = dict[int, dict[str, int]]  # op -> its delay along each dim it streams over


def retimed(
    program: Program,
    domain: isl.UnionSet,
    deps: isl.UnionMap,
    compute: Callable[[isl.UnionSet, isl.UnionMap], tuple[isl.Schedule, Any] | None],
) -> tuple[isl.Schedule, Any, Delays] | None:
    """A schedule with the streamed ops delayed (module docstring): ``compute`` (the
    scheduler's, returning the schedule and its groups' members, or None) run on the delayed
    domain with the dependences and :func:`fusion_order`, unshifted, its loops
    :func:`_atomic`; and the delays, for :func:`unshifted`. None without streamed ops, or
    when no such schedule exists."""
    delays = shifts(program)
    if not delays:
        return None
    moved = shift_map(program, domain, delays)
    later = domain.apply(moved)
    held = deps.apply_domain(moved).apply_range(moved).union(fusion_order(program, later))
    domain.get_ctx().set_schedule_max_constant_term(0)
    found = compute(later, held)
    if found is None:
        return None
    sched, members = found
    return sched.map_schedule_node_bottom_up(_atomic), members, delays


def _atomic(node: isl.ScheduleNode) -> isl.ScheduleNode:
    """A band's loops as one loop each, guarded inside, rather than split where statements
    start and stop (a delayed op starts later): a loop's ring of values then spans it all."""
    if node.get_type() != isl.schedule_node_type.band:
        return node
    for k in range(node.band_n_member()):
        node = node.band_member_set_ast_loop_type(k, isl.ast_loop_type.atomic)
    return node


def reach(item: Expr | Slice, d: Symbol) -> float:
    """How far past ``d`` an index item reads: ``t + 2`` -> 2, ``t`` -> 0, ``t - 1`` -> -1,
    ``t : min(t + n, T)`` -> ``n - 1``; unbounded where no constant bounds it (``t : T``, a
    constant point)."""
    if isinstance(item, Slice):
        return _past(item.stop, d) - 1
    return _past(item, d)


def bounded(size: Expr) -> bool:
    """Whether a symbolic size has a constant bound: a window ``t : min(t + n, T)`` (size
    ``min(T, t + n) - t``), not a growing range ``0 : t + 1``."""
    return all(_past(simplify(size + d), d) < UNBOUNDED for d in dims_of(size))


def _past(e: Expr, d: Symbol) -> float:
    if isinstance(e, Min):
        return min(_past(e.a, d), _past(e.b, d))
    if isinstance(e, Max):
        return max(_past(e.a, d), _past(e.b, d))
    if isinstance(e, Add | Sub) and isinstance(e.b, Const):  # min(t + n, T) - 1
        return _past(e.a, d) + (e.b.value if isinstance(e, Add) else -e.b.value)
    shift = simplify(e - d)
    return float(shift.value) if isinstance(shift, Const) else UNBOUNDED


def shifts(program: Program) -> Delays:
    """Per streamed op, its delay along each dim it streams over (module docstring); ops whose
    delay is unbounded or zero are left out."""
    found: dict[int, dict[str, int]] = {}
    present = {op.id for op in program.ops}  # later passes may have replaced some
    for name in sorted({dim for _, dim in program.streams}):
        ops = {op_id for op_id, dim in program.streams if dim == name and op_id in present}
        for op_id, delay in _delays(program, ops, name).items():
            found.setdefault(op_id, {})[name] = delay
    return found


def _delays(program: Program, ops: set[int], name: str) -> dict[int, int]:
    reads: list[tuple[int, int | None, float]] = []  # producer None: not streamed
    for op_id in ops:
        op = program.op(op_id)
        for edge in op.inputs:
            src = program.op(edge.src)
            dims = [k for k, dim in enumerate(src.domain) if dim.name == name]
            if not dims or src.kind == "input":
                continue
            d = src.domain[dims[0]]
            ahead = max(reach(edge.index[dims[0]], d), 0.0)
            reads.append((op_id, edge.src if edge.src in ops else None, ahead))
    delay, settled = longest_paths(ops, reads)
    if not settled:
        return {}  # a cycle reading ahead: no delay holds
    return {o: int(s) for o, s in delay.items() if 0 < s < UNBOUNDED}


def longest_paths(
    nodes: set[int], reads: list[tuple[int, int | None, float]]
) -> tuple[dict[int, float], bool]:
    """Per node, the largest sum of weights along ``reads`` (reader, node read or None for
    one outside ``nodes``, weight) leading to it, from 0; and whether that settled (no cycle
    of positive weight), trying as many rounds as there are nodes."""
    value = dict.fromkeys(nodes, 0.0)
    for _ in range(len(nodes) + 1):
        changed = False
        for reader, src, weight in reads:
            need = weight + (0.0 if src is None else value[src])
            if need > value[reader]:
                value[reader] = need
                changed = True
        if not changed:
            return value, True
    return value, False


def shift_map(program: Program, domain: isl.UnionSet, delays: Delays) -> isl.UnionMap:
    """The map taking each statement of ``domain`` to its point ``delays`` later (the
    identity for the others)."""
    ctx = domain.get_ctx()
    params = ", ".join(bound.name for bound in program.bounds)
    parts = []
    for op_id, by in delays.items():
        op = program.op(op_id)
        names = [dim.name for dim in op.domain]
        moved = [f"{n} + {by[n]}" if n in by else n for n in names]
        name = ic.tuple_name(op)
        parts.append(f"{name}[{', '.join(names)}] -> {name}[{', '.join(moved)}]")
    shifted = isl.UnionMap.read_from_str(ctx, f"[{params}] -> {{ {'; '.join(parts)} }}")
    rest = domain.subtract(shifted.domain())
    return rest.identity().union(shifted.intersect_domain(domain))


def unshifted(tree: Node, program: Program, delays: Delays) -> Node:
    """``tree``, scheduled with delayed points (:func:`shift_map`), running each op at its
    own points: a delayed op's point moved back by its delay."""

    def back(node: Node) -> Node:
        by = delays.get(node.op) if isinstance(node, Exec) else None
        if not by:
            return node
        assert isinstance(node, Exec)
        dims = program.op(node.op).domain
        point = tuple(
            simplify(x - by[d.name]) if d.name in by else x
            for d, x in zip(dims, node.point, strict=True)
        )
        return Exec(node.op, point)

    return map_nodes(tree, back)


def fusion_order(program: Program, domain: isl.UnionSet) -> isl.UnionMap:
    """Orderings that hold a streamed op inside the loop it streams behind: its point at
    (delayed) step ``t`` runs before step ``t + 1`` of an op of that loop it reads (directly,
    or through streamed ops it reads); one reading nothing of the loop, after step ``t - 1``
    and before step ``t + 1`` of its readers' loop op. isl, free to run the streamed ops in a
    loop of their own, must fuse them; ``domain`` is the delayed one. Legal where the delays
    make every read look back; where not, isl finds no schedule and the plain one is used."""
    ctx = domain.get_ctx()
    params = ", ".join(bound.name for bound in program.bounds)
    present = {op.id for op in program.ops}
    parts = []
    for name in sorted({dim for _, dim in program.streams}):
        streamed = {o for o, dim in program.streams if dim == name and o in present}
        anchor: dict[int, int] = {}  # streamed op -> an op of the loop it streams behind
        for op_id in sorted(streamed):  # ids grow along reads (a reader is recorded later)
            for edge in program.op(op_id).inputs:
                src = program.op(edge.src)
                if edge.src in streamed:
                    found = anchor.get(edge.src)
                elif src.kind in ("apply", "merge") and any(d.name == name for d in src.domain):
                    found = edge.src
                else:
                    found = None
                if found is not None:
                    anchor[op_id] = min(anchor.get(op_id, found), found)
        free = sorted(streamed - set(anchor), reverse=True)
        for op_id in free:  # reading no loop: its readers' loop
            readers = [
                anchor[o]
                for o in streamed
                if o in anchor and any(e.src == op_id for e in program.op(o).inputs)
            ]
            if readers:
                anchor[op_id] = min(readers)
        for op_id, to in sorted(anchor.items()):
            mine, theirs = program.op(op_id), program.op(to)
            own = [f"m_{d.name}" for d in mine.domain]
            other = [f"o_{d.name}" for d in theirs.domain]
            same = [
                f"o_{d.name} = m_{d.name}"
                for d in theirs.domain
                if d.name != name and d in mine.domain
            ]
            left = f"{ic.tuple_name(mine)}[{', '.join(own)}]"
            right = f"{ic.tuple_name(theirs)}[{', '.join(other)}]"
            after = " and ".join([*same, f"o_{name} = m_{name} - 1"])
            before = " and ".join([*same, f"o_{name} = m_{name} + 1"])
            parts.append(f"{left} -> {right} : {before}")
            if op_id in free:  # reading nothing of the loop: held after its previous step too
                parts.append(f"{right} -> {left} : {after}")
    if not parts:
        return isl.UnionMap.empty(domain.get_space())
    order = isl.UnionMap.read_from_str(ctx, f"[{params}] -> {{ {'; '.join(parts)} }}")
    return order.intersect_domain(domain).intersect_range(domain)
