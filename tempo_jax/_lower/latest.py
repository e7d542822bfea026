"""Values kept as their latest point alone: one value in place of a buffer of every point.

A producer that runs once per point of a forward loop nest walking its domain, every read of
which is of the point it produced last at the time of the read, needs one value, not a
buffer (:func:`plan_latest`): an optimiser's state stepped over ``(i, e, m)``, a rollout's
environment state. The storage plan (:mod:`.storage`) keeps such values as scoped buffers with
every position left out, drops their rings (the one value serves those reads too) and reads a
one-point output at the nest's last point from that value.

Under ``p.stop_when`` a point past the stop is never computed and reads as zeros; a read from
outside the loop the stop ends may be of such a point, so it never takes the latest value.

Such a value's recurrence usually starts from an input: ``w[0, 0, 0] = w0`` and
``w[p] = step(w[p - 1])`` are one merge, which at every point would select between the input
and the kept value. :func:`plan_seeds` finds those merges whose first branch holds at the
nest's first point alone: the kept value starts as the input (not zeros), and the merge reads
it at every point, without a select, as a hand-written ``lax.scan`` carries its state.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .._ir.expr import (
    TRUE,
    And,
    Cmp,
    Const,
    Expr,
    Slice,
    Symbol,
    conjuncts,
    substitute,
    symbols_of,
)
from .._ir.program import Edge, Output, Program
from .._ir.simplify import simplify
from .._schedule.tree import Exec, Guard, Loop, Node, Sequence

if TYPE_CHECKING:
    from .storage import StoragePlan


@dataclasses.dataclass(frozen=True)
class Site:
    """Where an exec sits: its loops (outermost first), the guards around it, its order."""

    loops: tuple[Loop, ...]
    guards: tuple[Expr, ...]
    order: int


def readers_of(program: Program) -> dict[tuple[int, int], list[tuple[int, Edge]]]:
    """Per op output, the ops reading it with the edge each reads it through."""
    readers: dict[tuple[int, int], list[tuple[int, Edge]]] = {}
    for src, reading in program.readers().items():
        for reader, edge in reading:
            readers.setdefault((src, edge.out), []).append((reader, edge))
    return readers


def _where(tree: Node) -> dict[int, list[tuple[Exec, Site]]]:
    """Per op, its execs with their sites."""
    where: dict[int, list[tuple[Exec, Site]]] = {}
    for ex, site in exec_sites(tree, (), (), []):
        where.setdefault(ex.op, []).append((ex, site))
    return where


def exec_sites(node: Node, loops: tuple[Loop, ...], guards: tuple[Expr, ...], out: list) -> list:
    """Every exec with its :class:`Site`, in execution order within an iteration."""
    if isinstance(node, Exec):
        out.append((node, Site(loops, guards, len(out))))
    elif isinstance(node, Loop):
        exec_sites(node.body, (*loops, node), guards, out)
    elif isinstance(node, Guard):
        exec_sites(node.body, loops, (*guards, node.cond), out)
    elif isinstance(node, Sequence):
        for child in node.children:
            exec_sites(child, loops, guards, out)
    return out


def equalities(cond: Expr, found: dict[Symbol, Expr]) -> None:
    """The ``symbol == value`` facts of a conjunction."""
    if isinstance(cond, And):
        equalities(cond.a, found)
        equalities(cond.b, found)
    elif isinstance(cond, Cmp) and cond.op == "==":
        for a, b in ((cond.a, cond.b), (cond.b, cond.a)):
            if isinstance(a, Symbol) and not symbols_of(b) & {a}:
                found[a] = b
                return


def plan_latest(
    program: Program, tree: Node, plan: StoragePlan
) -> dict[tuple[int, int], frozenset[int]]:
    """The full buffers of ``plan`` that keep one value (module docstring), each with every
    position of its domain left out (a scoped buffer); their rings are dropped from ``plan``
    and a one-point output at their nest's last point is no longer captured."""
    where = _where(tree)
    nests = _latest_nests(program, plan, where)
    _unring(program, plan, where, set(nests))
    _read_last(program, plan, nests)
    return {key: frozenset(range(len(bounds))) for key, bounds in nests.items()}


def plan_seeds(
    program: Program,
    tree: Node,
    latest: dict[tuple[int, int], frozenset[int]],
    rings: dict[Loop, dict[tuple[int, int], int]],
    covering: frozenset[int],
) -> dict[tuple[int, int], tuple[int, Edge]]:
    """Per value kept as its latest point (``latest``), or in a one-slot ring of the one loop
    its producer runs in (``rings``: the previous iteration's value), that a merge starts
    from an input: the merge and its edge reading the input (module docstring).

    The merge (one of ``covering``: a branch holds at every point) reads, through its first
    branch, an input with no domain, under a condition that holds at the first point of its
    domain alone (every dim ``== 0``), and through every other branch the kept value; it runs
    once per point of the same nest as the value's producer, before it in each iteration, so
    at the first point the value is not yet produced and holds the input. The input, the
    merge and the value have one dtype and shape (no cast or broadcast between them)."""
    where = _where(tree)
    found: dict[tuple[int, int], list[tuple[int, Edge]]] = {}
    for op in program.ops:
        if op.kind != "merge" or op.id not in covering or len(op.inputs) < 2:
            continue
        first, *rest = op.inputs
        keys = {(edge.src, edge.out) for edge in rest}
        if len(keys) != 1:
            continue
        key = next(iter(keys))
        start = program.op(first.src)
        if start.kind != "input" or start.domain or first.index:
            continue
        if not _first_point(first.cond, op.domain):
            continue
        specs = (op.outputs[0], start.outputs[first.out], program.op(key[0]).outputs[key[1]])
        if len({(spec.shape, spec.dtype) for spec in specs}) != 1:
            continue
        merge_nest = _walking_nest(program, op.id, where)
        value_nest = _walking_nest(program, key[0], where)
        if merge_nest is None or value_nest is None:
            continue
        (merge_site, merge_loops, _), (value_site, value_loops, _) = merge_nest, value_nest
        same = len(merge_loops) == len(value_loops) and all(
            a is b for a, b in zip(merge_loops, value_loops, strict=True)
        )
        ring = len(merge_loops) == 1 and rings.get(merge_loops[0], {}).get(key) == 1
        if (
            (key in latest or ring)
            and same
            and merge_site.guards == value_site.guards
            and merge_site.order < value_site.order
        ):
            found.setdefault(key, []).append((op.id, first))
    return {key: starts[0] for key, starts in found.items() if len(starts) == 1}


def plan_last_of_loop(
    program: Program,
    tree: Node,
    rings: dict[Loop, dict[tuple[int, int], int]],
    captured: list[Output],
) -> dict[Loop, list[Output]]:
    """Per forward loop, the captured one-point values (of ``captured``: outputs and values
    held for a read at one point) of its last point whose producer it carries in a ring (the
    newest slot: the last iteration's value): each is taken from the ring once the loop has
    run, not selected at every step as a capture is. The producer runs once per iteration of
    that loop alone, unguarded, over the loop's dim alone, and no op reads the point inside
    the loop; not under ``p.stop_when`` (the loop may end before its last point)."""
    if program.stop is not None:
        return {}
    where = _where(tree)
    readers = readers_of(program)
    found: dict[Loop, list[Output]] = {}
    for out in captured:
        src, k = out.edge.src, out.edge.out
        produced = where.get(src, [])
        domain = program.op(src).domain
        if len(produced) != 1 or len(domain) != 1 or out.edge.cond != TRUE:
            continue
        ex, site = produced[0]
        if len(site.loops) != 1 or site.guards:
            continue
        loop, dim = site.loops[0], domain[0]
        if (src, k) not in rings.get(loop, {}) or loop.reverse:
            continue
        walks = simplify(ex.point[0]) == loop.var and simplify(loop.start) == Const(0)
        if not walks or simplify(loop.stop) != dim.bound:
            continue
        index = tuple(simplify(item) for item in out.edge.index)
        if index != (simplify(dim.bound - 1),):
            continue
        held_inside = any(  # an op reading the held point inside the loop needs it there
            any(enclosing is loop for enclosing in reading.loops)
            for reader, edge in readers.get((src, k), [])
            if tuple(simplify(item) for item in edge.index) == index
            for _, reading in where.get(reader, [])
        )
        if not held_inside:
            found.setdefault(loop, []).append(out)
    return found


def _first_point(cond: Expr, domain: tuple[Symbol, ...]) -> bool:
    """Whether ``cond`` is ``d == 0`` for every dim of ``domain`` and nothing else."""
    facts: dict[Symbol, Expr] = {}
    equalities(cond, facts)
    terms = conjuncts(cond)
    zero = all(simplify(facts.get(d, d)) == Const(0) for d in domain)
    return zero and set(facts) == set(domain) and len(terms) == len(domain)


def _latest_nests(
    program: Program, plan: StoragePlan, where: dict[int, list[tuple[Exec, Site]]]
) -> dict[tuple[int, int], tuple[Expr, ...]]:
    """Full buffers that can keep one value, each with its nest's bounds: the producer runs
    once per point of a forward loop nest walking its whole domain (:func:`_walking_nest`),
    and every read is of the point it produced last, at the time of the read."""
    # outputs read the buffer (one-point outputs are captured apart from it)
    kept = {(o.edge.src, o.edge.out) for o in program.outputs if o.name not in plan.captured}
    readers = readers_of(program)
    found: dict[tuple[int, int], tuple[Expr, ...]] = {}
    for key in plan.buffered:
        if key in kept or key in plan.accumulated or key in plan.held:
            continue
        nest = _walking_nest(program, key[0], where)
        if nest is None or not readers.get(key):
            continue
        producer_site, loops, bounds = nest
        if all(
            _reads_latest(program, reader_id, edge, where, producer_site, loops, bounds)
            for reader_id, edge in readers[key]
        ):
            found[key] = bounds
    return found


def _unring(
    program: Program,
    plan: StoragePlan,
    where: dict[int, list[tuple[Exec, Site]]],
    latest: set[tuple[int, int]],
) -> None:
    """Drop the rings of values kept as their latest point alone: every read of them, a ring's
    window too, is of that point, so the one value serves them all (a ring beside it would
    carry a second copy of the same value through its loop)."""
    for rings in plan.rings.values():
        for key in latest & set(rings):
            del rings[key]
    execs = {id(ex): ex for produced in where.values() for ex, _ in produced}
    for read in list(plan.window):
        ex_id, j = read
        edge = program.op(execs[ex_id].op).inputs[j]
        if (edge.src, edge.out) in latest:
            del plan.window[read]


def _read_last(
    program: Program, plan: StoragePlan, nests: dict[tuple[int, int], tuple[Expr, ...]]
) -> None:
    """A one-point output of a value kept as its latest point alone, at the last point of its
    producer's nest, is read from that value once the program has run instead of captured
    (a captured value inside a nest is a select at every step). Not under a stop: the nest
    may end before its last point."""
    if program.stop is not None:
        return
    for out in program.outputs:
        bounds = nests.get((out.edge.src, out.edge.out))
        if out.name not in plan.captured or bounds is None or out.edge.cond != TRUE:
            continue
        last = tuple(simplify(bound - 1) for bound in bounds)
        if tuple(simplify(item) for item in out.edge.index) == last:
            plan.captured.discard(out.name)


def _walking_nest(
    program: Program, op_id: int, where: dict[int, list[tuple[Exec, Site]]]
) -> tuple[Site, tuple[Loop, ...], tuple[Expr, ...]] | None:
    """``(site, loops, bounds)`` when ``op_id`` runs once per point of a forward nest whose
    loops walk its domain dims in order, from 0 to their bounds, unguarded inside the nest.

    The nest may sit inside loops its point does not name (a rollout inside the epochs and
    minibatches of a training iteration) where the guards around it pin each of them to one
    constant (``if (e == 0) & (m == 0)``) and test nothing else: it then runs in one
    iteration of each, and its points still come in the nest's order. ``loops`` are the
    domain's loops alone."""
    produced = where.get(op_id, [])
    if len(produced) != 1:
        return None
    ex, site = produced[0]
    domain = program.op(op_id).domain
    if not domain or len(site.loops) < len(domain):
        return None
    named = set().union(*(symbols_of(item) for item in ex.point))
    extra = [lp for lp in site.loops if lp.var not in named]
    if len(site.loops) - len(extra) != len(domain) or not _pinned(site.guards, extra):
        return None  # a guarded producer's last value is not a predecessor's
    loops = tuple(lp for lp in site.loops if lp.var in named)
    for loop, item, dim in zip(loops, ex.point, domain, strict=True):
        if loop.reverse or simplify(item) != loop.var:
            return None
        if simplify(loop.start) != Const(0) or simplify(loop.stop) != dim.bound:
            return None
    return site, loops, tuple(dim.bound for dim in domain)


def _pinned(guards: tuple[Expr, ...], extra: list[Loop]) -> bool:
    """Whether ``guards`` are conjunctions of ``var == constant`` that pin every loop of
    ``extra`` and nothing else."""
    facts: dict[Symbol, Expr] = {}
    terms: list[Expr] = []
    for cond in guards:
        equalities(cond, facts)
        terms += conjuncts(cond)
    wanted = {lp.var for lp in extra}
    if set(facts) != wanted or any(symbols_of(value) for value in facts.values()):
        return False
    return len(terms) == len(wanted)  # one equality per loop: no other condition


def _reads_latest(
    program: Program,
    reader_id: int,
    edge: Edge,
    where: dict[int, list[tuple[Exec, Site]]],
    producer: Site,
    loops: tuple[Loop, ...],
    bounds: tuple[Expr, ...],
) -> bool:
    """Whether every exec of the reader reads, through ``edge``, the point the producer
    (at ``producer``; ``loops``, the nest its domain walks) ran at last. A loop around the
    producer that its domain does not walk (:func:`_walking_nest`) and that the reader shares
    must be pinned there to the producer's iteration of it."""
    reader = program.op(reader_id)
    if reader.payload is not None and reader.payload.accumulates:
        return False
    if any(isinstance(item, Slice) for item in edge.index) or reader_id not in where:
        return False
    pins: dict[Symbol, Expr] = {}
    for cond in producer.guards:
        equalities(cond, pins)
    domain = program.op(edge.src).domain
    # under a stop, a point past it reads as zeros: a read from outside the loop the stop
    # ends may be of such a point, where the latest value is the one before the stop
    stop = domain.index(program.stopped) if program.stopped in domain else None
    for ex, site in where[reader_id]:
        shared = 0
        while (
            shared < len(producer.loops)
            and shared < len(site.loops)
            and site.loops[shared] is producer.loops[shared]
        ):
            shared += 1
        at = dict(zip(reader.domain, ex.point, strict=True))
        facts: dict[Symbol, Expr] = {}
        for cond in (*site.guards, substitute(edge.cond, at)):
            equalities(cond, facts)
        common = producer.loops[:shared]
        if any(
            lp.var in pins and simplify(facts.get(lp.var, lp.var)) != simplify(pins[lp.var])
            for lp in common
        ):
            return False  # the reader may run in another iteration of a pinned loop
        walked = sum(1 for lp in common if lp.var not in pins)
        if stop is not None and walked <= stop:
            return False
        target = tuple(simplify(substitute(substitute(item, at), facts)) for item in edge.index)
        if not _is_latest(target, loops, bounds, walked, site.order > producer.order, facts):
            return False
    return True


def _is_latest(
    target: tuple[Expr, ...],
    loops: tuple[Loop, ...],
    bounds: tuple[Expr, ...],
    shared: int,
    after: bool,
    facts: dict[Symbol, Expr],
) -> bool:
    """Whether ``target`` is the last point of the nest run before a read inside its first
    ``shared`` loops, ``after`` the producer's exec in execution order or before it."""

    def same(candidate: list[Expr]) -> bool:
        cand = tuple(simplify(substitute(c, facts)) for c in candidate)
        return cand == target

    current = [loop.var for loop in loops[:shared]]
    last = [bound - 1 for bound in bounds[shared:]]
    if after:  # this iteration's point of the shared loops, the inner ones finished
        return same(current + last)
    # before: the predecessor of (current, 0, ...): one level steps back, the inner ones last
    for level in range(shared - 1, -1, -1):
        candidate = current[:level] + [current[level] - 1] + [b - 1 for b in bounds[level + 1 :]]
        if same(candidate):
            return all(simplify(substitute(v, facts)) == Const(0) for v in current[level + 1 :])
    return False
