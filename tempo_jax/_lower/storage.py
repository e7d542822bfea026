"""Storage planning: how each read gets its value, from how the schedule tree reads it.

- *point*: the producer ran earlier in the same sequence at exactly the point read; the read
  takes the value directly (no storage at all).
- *window*: the producer runs in the same loop body and the read is ``d`` iterations back
  (``x[t - d]`` in a forward loop, ``x[t + d]`` in a reversed one); the loop carries a ring
  of the producer's last values, newest first.
- *full*: anything else (program outputs, ranges, reads across loops) reads a full buffer
  ``(*domain bounds, *shape)``.
- *cyclic* (decided by the lowering from :func:`cyclic_candidates`): a full buffer read only
  through windows inside the loop that writes it keeps its last rows, row ``p`` at slot
  ``p mod rows``.
- *captured*: an output of one point (``m[T - 1]``) keeps just that value, written when the
  producer runs at that point.
- *scoped*: a full buffer whose every read is of the iteration of an enclosing loop that
  wrote it (a rollout's steps, read by the learner of the same training iteration) leaves
  out the dim that loop walks: it holds one iteration and is rewritten by the next.
- *latest* (a scoped buffer with every dim left out): a producer whose domain its loop nest
  walks, every read of which is of the value it produced last (parameters stepped over
  nested ``(i, e, m)``: ``w[i, e, m + 1]``, ``w[i, e + 1, 0]`` from ``w[i, e, M - 1]``,
  ``w[i + 1, 0, 0]``, and reads of ``w[i, 0, 0]`` at ``e = m = 0``), keeps one value. The
  nest may sit in loops its domain does not walk where a guard pins each to one iteration (a
  rollout's environment state, run at the first minibatch of each iteration). It
  serves its window reads too (no ring of the inner loop carries a second copy beside it),
  and a one-point output at the nest's last point reads it once the program has run instead
  of being captured (a capture inside a nest is a select at every step).

Reads are planned per loop body through its guards: a guarded producer shifts its ring every
iteration all the same (padding when the guard is false), so a slot counts iterations.

An op output is stored in full only if some read needs it, so recurrences whose values are
read at the same or a recent step live in loop carries, and full buffers are only written
inside loops, never read back there (which would make XLA copy them every iteration).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from .._ir.expr import And, Cmp, Const, Expr, IndexItem, Slice, Symbol, substitute, symbols_of
from .._ir.program import Edge, Program
from .._ir.simplify import simplify
from .._schedule.tree import LOOP_SCOPE, Alloc, Exec, Free, Guard, Loop, Node, Sequence, execs
from .latest import exec_sites, plan_latest, plan_seeds, readers_of
from .running import per_iteration

Read = tuple[int, int]  # (id of the executing node: equal execs in two loops differ, input edge)


@dataclasses.dataclass
class StoragePlan:
    local: set[Read] = dataclasses.field(default_factory=set)
    window: dict[Read, int] = dataclasses.field(default_factory=dict)  # read -> ring slot
    rings: dict[Loop, dict[tuple[int, int], int]] = dataclasses.field(default_factory=dict)
    buffered: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    captured: set[str] = dataclasses.field(default_factory=set)  # outputs of one point
    # (op, out) read at one constant point only (ring and local reads aside): that value alone
    # is kept, captured when produced
    held: dict[tuple[int, int], tuple[IndexItem, ...]] = dataclasses.field(default_factory=dict)
    _after: dict[tuple[int, int], set[tuple[IndexItem, ...]]] = dataclasses.field(
        default_factory=dict
    )
    # (op, out) whose only full read is summed by an accumulating op: a running sum is kept
    accumulated: dict[tuple[int, int], tuple[IndexItem, ...]] = dataclasses.field(
        default_factory=dict
    )
    # (op, out) stored in full but only read in the iteration of an enclosing loop that wrote
    # it: the buffer leaves out the domain positions that loop walks (reused each iteration)
    scoped: dict[tuple[int, int], frozenset[int]] = dataclasses.field(default_factory=dict)
    # op -> the variables of enclosing loops that its point does not name but a guard around
    # it tests (``if i == 0`` around an op invariant in ``i``): it runs at some iterations of
    # those loops only, and its values are read at the others too, so no ring of a loop inside
    # them and no buffer rewritten per iteration of one (scoped, cyclic) may hold them
    intermittent: dict[int, frozenset[Symbol]] = dataclasses.field(default_factory=dict)
    _summed: dict[tuple[int, int], set[tuple[IndexItem, ...]]] = dataclasses.field(
        default_factory=dict
    )
    # accumulated values summed per iteration of the loops their box pins (a gradient summed
    # over a rollout's steps, per training iteration): zeroed once their reader has read them
    reset: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    # value kept as its latest point -> the merge starting it from an input and that merge's
    # edge reading the input: the value starts as the input, the merge reads the value alone
    seeds: dict[tuple[int, int], tuple[int, Edge]] = dataclasses.field(default_factory=dict)


def plan_storage(
    program: Program, tree: Node, covering: frozenset[int] = frozenset()
) -> StoragePlan:
    """Classify every read of the tree as point, window or full (see the module docstring);
    ``covering``: the merges a branch of which holds at every point (values kept as their
    latest point are started from an input by such merges, :func:`.latest.plan_seeds`)."""
    plan = StoragePlan()
    for out in program.outputs:
        one_point = not out.domain and not any(isinstance(i, Slice) for i in out.edge.index)
        if one_point and program.op(out.edge.src).kind != "input":
            plan.captured.add(out.name)
        else:
            plan.buffered.add((out.edge.src, out.edge.out))
    seen: dict[int, int] = {}
    for ex in _all_execs(tree):
        seen[ex.op] = seen.get(ex.op, 0) + 1
    split = frozenset(op for op, n in seen.items() if n > 1)  # ops the schedule runs in pieces
    plan.intermittent = _intermittent(tree)
    _plan(program, tree, None, plan, split)
    for key, reads in plan._summed.items():
        box = per_iteration(program, tree, key, next(iter(reads))) if len(reads) == 1 else None
        if box is None or key in plan.buffered:
            plan.buffered.add(key)
            continue
        plan.accumulated[key] = box
        if box != next(iter(reads)):
            plan.reset.add(key)
    for key, points in plan._after.items():
        if len(points) == 1 and key not in plan.buffered:
            plan.held[key] = next(iter(points))
        else:
            plan.buffered.add(key)
    scoped = _scoped(program, tree, plan)
    latest = plan_latest(program, tree, plan)
    plan.scoped = {**scoped, **latest}
    plan.seeds = plan_seeds(program, tree, latest, plan.rings, covering)
    return plan


def _intermittent(tree: Node) -> dict[int, frozenset[Symbol]]:
    """Per op, the variables of enclosing loops its point does not name that a guard around
    one of its execs tests (see :attr:`StoragePlan.intermittent`)."""
    found: dict[int, frozenset[Symbol]] = {}
    for ex, site in exec_sites(tree, (), (), []):
        named = set().union(*(symbols_of(item) for item in ex.point))
        skipped = {lp.var for lp in site.loops} - named
        tested = skipped & set().union(*(symbols_of(cond) for cond in site.guards))
        if tested:
            found[ex.op] = found.get(ex.op, frozenset()) | tested
    return found


def _scoped(
    program: Program, tree: Node, plan: StoragePlan
) -> dict[tuple[int, int], frozenset[int]]:
    """Full buffers whose every read is of the iteration of an enclosing loop that wrote them
    (a rollout's values read by the learner of the same training iteration): per buffer, the
    domain positions those loops walk, which the buffer leaves out."""
    where: dict[int, list[tuple[Exec, tuple[Loop, ...]]]] = {}
    for ex, loops in _execs_in_loops(tree, ()):
        where.setdefault(ex.op, []).append((ex, loops))
    kept = {(out.edge.src, out.edge.out) for out in program.outputs}
    readers = readers_of(program)
    found: dict[tuple[int, int], frozenset[int]] = {}
    for key in plan.buffered:
        if key in kept or key in plan.accumulated or key in plan.held or key[0] not in where:
            continue
        produced = where[key[0]]
        skips = plan.intermittent.get(key[0], frozenset())
        shared = set.intersection(*({id(lp) for lp in ls} for _, ls in produced))
        drop = set()
        # a loop's dim may be left out only if the reads are of the same iteration of it and
        # of every loop around it: each outer iteration runs the loop again, rewriting the
        # buffer (a window over an outer dim would read rows the inner loop overwrote)
        outer_ok = True
        for loop in (lp for lp in produced[0][1] if id(lp) in shared):
            # a loop some of whose iterations skip the producer does not rewrite the buffer
            outer_ok = outer_ok and loop.var not in skips
            pos = _walked(produced, loop)
            same = pos is not None and _read_in_iteration(
                program, readers.get(key, []), where, loop, pos, produced[0][0]
            )
            if same and outer_ok:
                drop.add(pos)
            outer_ok = outer_ok and (same or pos is None)
        if drop:
            found[key] = frozenset(drop)
    return found


def _execs_in_loops(node: Node, loops: tuple[Loop, ...]) -> list[tuple[Exec, tuple[Loop, ...]]]:
    if isinstance(node, Exec):
        return [(node, loops)]
    if isinstance(node, Loop):
        return _execs_in_loops(node.body, (*loops, node))
    if isinstance(node, Guard):
        return _execs_in_loops(node.body, loops)
    if isinstance(node, Sequence):
        return [found for child in node.children for found in _execs_in_loops(child, loops)]
    return []


def _walked(produced: list[tuple[Exec, tuple[Loop, ...]]], loop: Loop) -> int | None:
    """The one domain position whose point the loop's variable sets, the same in every exec."""
    positions = set()
    for ex, _ in produced:
        hits = [k for k, item in enumerate(ex.point) if loop.var in symbols_of(item)]
        if len(hits) != 1:
            return None
        positions.add((hits[0], simplify(ex.point[hits[0]])))
    return positions.pop()[0] if len(positions) == 1 else None


def _read_in_iteration(
    program: Program,
    reads: list[tuple[int, Edge]],
    where: dict[int, list[tuple[Exec, tuple[Loop, ...]]]],
    loop: Loop,
    pos: int,
    producer: Exec,
) -> bool:
    """Whether every read is inside ``loop`` and reads position ``pos`` at the point the
    producer writes in the same iteration."""
    if not reads:
        return False
    written = simplify(producer.point[pos])
    for reader_id, edge in reads:
        reader = program.op(reader_id)
        if reader.payload is not None and reader.payload.accumulates:
            return False
        if isinstance(edge.index[pos], Slice) or reader_id not in where:
            return False
        for ex, loops in where[reader_id]:
            if not any(lp is loop for lp in loops):
                return False
            at = dict(zip(reader.domain, ex.point, strict=True))
            if simplify(substitute(edge.index[pos], at)) != written:
                return False
    return True


def _all_execs(node: Node) -> list[Exec]:
    if isinstance(node, Exec):
        return [node]
    if isinstance(node, Loop | Guard):
        return _all_execs(node.body)
    if isinstance(node, Sequence):
        return [ex for child in node.children for ex in _all_execs(child)]
    return []


def _plan(
    program: Program, node: Node, loop: Loop | None, plan: StoragePlan, split: frozenset[int]
) -> None:
    """Plan the reads of the execs reached from ``node`` without entering a loop, then plan
    each loop reached the same way (``loop`` is the loop whose body ``node`` is, if any)."""
    if isinstance(node, Loop):
        _plan(program, node.body, node, plan, split)
        return
    _plan_sequence(program, _flatten(node, (), ()), loop, plan, split)
    for inner in _inner_loops(node):
        _plan(program, inner, None, plan, split)


Context = tuple[int, ...]  # the guards and sequences around an exec, innermost last


def _flatten(
    node: Node, context: Context, zeros: tuple[Expr, ...]
) -> list[tuple[Exec, Context, tuple[Expr, ...]]]:
    """The execs of ``node`` in execution order, through sequences and guards, not loops,
    each with its context and the expressions its guards hold at zero (``T - t == 0`` gives
    ``T - t``)."""
    if isinstance(node, Exec):
        return [(node, context, zeros)]
    if isinstance(node, Guard):
        return _flatten(node.body, (*context, id(node)), (*zeros, *_equal_facts(node.cond)))
    if isinstance(node, Sequence):
        inner = (*context, id(node))
        return [item for child in node.children for item in _flatten(child, inner, zeros)]
    return []


def _equal_facts(cond: Expr) -> tuple[Expr, ...]:
    if isinstance(cond, And):
        return (*_equal_facts(cond.a), *_equal_facts(cond.b))
    if isinstance(cond, Cmp) and cond.op == "==":
        return (simplify(cond.a - cond.b),)
    return ()


def iteration_execs(body: Node) -> list[Exec]:
    """The execs one iteration of a loop with this ``body`` runs (not those of inner loops)."""
    return [ex for ex, _, _ in _flatten(body, (), ())]


def _inner_loops(node: Node) -> list[Loop]:
    if isinstance(node, Loop):
        return [node]
    if isinstance(node, Guard):
        return _inner_loops(node.body)
    if isinstance(node, Sequence):
        return [loop for child in node.children for loop in _inner_loops(child)]
    return []


def _plan_sequence(
    program: Program,
    flat: list[tuple[Exec, Context, tuple[Expr, ...]]],
    loop: Loop | None,
    plan: StoragePlan,
    split: frozenset[int],
) -> None:
    """Plan the reads of the execs of one loop body (or of the top level when no ``loop``).

    A guarded exec still shifts its rings once per iteration (the lowering shifts in padding
    when the guard is false), so a window slot counts iterations, guarded or not. A guard's
    equalities (each exec's zeros, :func:`_flatten`) count: under ``if t == T``, a read of
    ``x[T - 1]`` is of the previous iteration's ``x[t]`` (the critic's value of a rollout's
    last step, read inside the loop a streamed learner runs behind).
    """
    execs = [ex for ex, _, _ in flat]
    contexts = {ex.op: context for ex, context, _ in flat}
    zeros = {id(ex): found for ex, _, found in flat}
    points = {ex.op: tuple(simplify(e) for e in ex.point) for ex in execs}
    position = {ex.op: k for k, ex in enumerate(execs)}
    for k, ex in enumerate(execs):
        op = program.op(ex.op)
        at = dict(zip(op.domain, ex.point, strict=True))
        for j, edge in enumerate(op.inputs):
            if program.op(edge.src).kind == "input":
                continue
            if op.payload is not None and op.payload.accumulates:
                plan._summed.setdefault((edge.src, edge.out), set()).add(edge.index)
                continue  # decided once every read is known: accumulated, or stored in full
            target = tuple(simplify(substitute(item, at)) for item in edge.index)
            earlier = edge.src in points and position[edge.src] < k
            if earlier and points[edge.src] == target and contexts[edge.src] == contexts[ex.op]:
                plan.local.add((id(ex), j))
                continue
            if _constant_point(target):  # one point: captured when produced (legality: before)
                plan._after.setdefault((edge.src, edge.out), set()).add(target)
                continue  # decided once every read is known: held, or stored in full
            distance = _distance(loop, points.get(edge.src), target, earlier, zeros.get(id(ex), ()))
            # a ring does not cross loops: an op run in several loops is stored in full, unless
            # the read is of the value it produced this very iteration; nor does it hold values
            # of a producer that skips iterations of an outer loop
            if (
                distance is None
                or (edge.src in split and distance > 0)
                or edge.src in plan.intermittent
            ):
                plan.buffered.add((edge.src, edge.out))
                continue
            # A producer that already ran this iteration has shifted its ring by one.
            slot = distance - 1 + earlier
            plan.window[(id(ex), j)] = slot
            depths = plan.rings.setdefault(loop, {})
            key = (edge.src, edge.out)
            depths[key] = max(depths.get(key, 0), slot + 1)


def _constant_point(index: tuple[IndexItem, ...]) -> bool:
    """Whether ``index`` is one point whatever the loop variables (bounds and constants only)."""
    return not any(
        isinstance(item, Slice)
        or any(not s.is_bound or s.program == LOOP_SCOPE for s in symbols_of(item))
        for item in index
    )


def _distance(
    loop: Loop | None,
    produced: tuple[Expr, ...] | None,
    target: tuple[Expr, ...],
    earlier: bool,
    zeros: tuple[Expr, ...] = (),
) -> int | None:
    """How many iterations of ``loop`` back ``target`` was produced, if a constant >= 1 (or 0,
    when the producer ran ``earlier`` in this iteration), where the reader's guards hold
    ``zeros`` at zero."""
    if loop is None or produced is None or len(produced) != len(target):
        return None
    if any(isinstance(item, Slice) for item in target):
        return None  # a range: stored in full
    var: Symbol = loop.var
    if produced == target:  # this iteration, unless the point is one the loop does not walk
        walks = any(var in symbols_of(item) for item in produced)
        return 0 if earlier and walks else None
    for p_item, t_item in zip(produced, target, strict=True):
        gap = _constant(p_item - t_item, zeros)
        if gap is not None and gap != 0:
            # the point produced ``distance`` iterations ago (the loop variable may enter the
            # point with either sign: ``T - t`` walks down as ``t`` walks up)
            distance = abs(gap)
            step = var - distance if not loop.reverse else var + distance
            shifted = tuple(simplify(substitute(e, {var: step})) for e in produced)
            same = all(_constant(a - b, zeros) == 0 for a, b in zip(shifted, target, strict=True))
            return distance if same else None
    return None


def _constant(e: Expr, zeros: tuple[Expr, ...]) -> int | None:
    """``e``'s value where it is a constant, or one where each of ``zeros`` is zero (``e``
    plus or minus one of them a constant), else None."""
    for z in (Const(0), *zeros):
        for sign in (1, -1):
            found = simplify(e + sign * z)
            if isinstance(found, Const):
                return found.value
    return None


def place_buffers(program: Program, tree: Node) -> Node:
    """``tree`` with an :class:`Alloc` before the first top-level step using each full buffer
    and a :class:`Free` after the last (never for a buffer an output reads): a buffer lives
    only as long as it is needed, and loops before or after that do not carry it."""
    if not isinstance(tree, Sequence):
        return tree
    plan = plan_storage(program, tree)
    kept = {(out.edge.src, out.edge.out) for out in program.outputs}
    readers: dict[tuple[int, int], set[int]] = {key: set() for key in plan.buffered}
    for op in program.ops:
        for e in op.inputs:
            readers.get((e.src, e.out), set()).add(op.id)
    users: dict[tuple[int, int], list[int]] = {}
    for k, child in enumerate(tree.children):
        ops = {ex.op for ex in execs(child)}
        for key in plan.buffered:
            if key[0] in ops or ops & readers[key]:
                users.setdefault(key, []).append(k)
    before: dict[int, list[Node]] = {}
    after: dict[int, list[Node]] = {}
    for key, found in sorted(users.items()):
        before.setdefault(found[0], []).append(Alloc(*key))
        if key not in kept:
            after.setdefault(found[-1], []).append(Free(*key))
    placed: list[Node] = []
    for k, child in enumerate(tree.children):
        placed += [*before.get(k, []), child, *after.get(k, [])]
    return Sequence(tuple(placed))


@dataclasses.dataclass(frozen=True)
class CyclicRead:
    """A read that may take its rows from a cyclic buffer: ``op``'s input ``input`` reads a
    range at the buffer's cyclic position; ``latest`` is the loop's iteration as an expression
    of the reader's domain dims (no row past it has been written when the read runs)."""

    op: int
    input: int
    latest: Expr


@dataclasses.dataclass(frozen=True)
class CyclicCandidate:
    """A full buffer whose producer writes the point ``position`` = the iteration of a forward
    loop, every read of which is a range read inside that loop (see :func:`cyclic_candidates`)."""

    position: int
    reads: tuple[CyclicRead, ...]


def cyclic_candidates(
    program: Program, tree: Node, plan: StoragePlan, sizes: Mapping[Symbol, int]
) -> dict:
    """Full buffers that may keep only their last rows along one domain position, modulo a
    length the lowering chooses (a window's keys: ``k[t-w+1:t+1]`` needs the last ``w`` rows).

    The producer runs once in the schedule, inside a forward loop whose variable plus a
    constant ``c`` is the producer's point at ``position``; so when that loop is at iteration
    ``i``, no row past ``i + c`` has been written and row ``p <= i + c`` was written at
    iteration ``p - c`` of the current walk. Every read of the buffer (those served by loop
    carries aside: point and window storage) is a range at ``position``, by an op whose every
    exec runs inside that loop, at a point with one coordinate the loop's variable plus a
    constant (giving the read's ``latest`` row, ``i + c``). A range whose rows lie within
    the last ``R`` positions up to ``latest`` then finds each of its rows at slot
    ``row mod R``, not yet overwritten. Outputs, accumulated, held and scoped buffers are
    left out. The lowering decides the length ``R`` and whether
    each reader's payload can take its rows in any order (a map-then-reduce).

    The producer may also run before that loop, in loops writing rows in order (the loop's
    variable is the row) that all end, at the static bounds ``sizes``, before the loop's first
    row: the prompt's keys of a KV cache, written before the steps' (:func:`_written_before`).
    """
    where: dict[int, list[tuple[Exec, tuple[Loop, ...]]]] = {}
    for ex, loops in _execs_in_loops(tree, ()):
        where.setdefault(ex.op, []).append((ex, loops))
    kept = {(out.edge.src, out.edge.out) for out in program.outputs}
    readers: dict[tuple[int, int], list[tuple[int, int, Edge]]] = {}
    for op in program.ops:
        for k, edge in enumerate(op.inputs):
            readers.setdefault((edge.src, edge.out), []).append((op.id, k, edge))
    found: dict[tuple[int, int], CyclicCandidate] = {}
    for key in sorted(plan.buffered):
        skip = key in kept or key in plan.accumulated or key in plan.held or key in plan.scoped
        produced = [(ex, loops) for ex, loops in where.get(key[0], []) if _runs(loops, sizes)]
        if skip or not produced or not readers.get(key):
            continue
        ex, loops = produced[-1]
        skips = plan.intermittent.get(key[0], frozenset())
        for depth, loop in enumerate(loops):
            hits = [j for j, item in enumerate(ex.point) if loop.var in symbols_of(item)]
            if loop.reverse or len(hits) != 1:
                continue
            if any(lp.var in skips for lp in loops[: depth + 1]):
                break  # rows of one walk are not rewritten by the next
            offset = simplify(ex.point[hits[0]] - loop.var)  # the row is the iteration + offset
            if not _loop_free(offset):
                continue
            if not _written_before(produced[:-1], loop, hits[0], offset, sizes):
                continue
            reads = _cyclic_reads(program, plan, readers[key], where, loop, hits[0], offset)
            if reads is not None:
                found[key] = CyclicCandidate(hits[0], reads)
                break
    return found


def _runs(loops: tuple[Loop, ...], sizes: Mapping[Symbol, int]) -> bool:
    """False when one of ``loops`` has no iteration at the static bounds ``sizes``."""
    for loop in loops:
        found = symbols_of(loop.start) | symbols_of(loop.stop)
        if found <= set(sizes) and loop.stop.evaluate(dict(sizes)) <= loop.start.evaluate(
            dict(sizes)
        ):
            return False
    return True


def _loop_free(expr: Expr) -> bool:
    """Whether ``expr`` names no loop variable."""
    return not any(sym.program == LOOP_SCOPE for sym in symbols_of(expr))


def _written_before(
    earlier: list[tuple[Exec, tuple[Loop, ...]]],
    loop: Loop,
    position: int,
    offset: Expr,
    sizes: Mapping[Symbol, int],
) -> bool:
    """Whether each exec of ``earlier`` writes rows (at ``position``) in order, its loop's
    variable being the row, all before ``loop``'s first row (its start plus ``offset``)."""
    first = simplify(loop.start + offset)
    for ex, loops in earlier:
        own = [lp for lp in loops if simplify(ex.point[position]) == lp.var and not lp.reverse]
        if len(own) != 1 or not symbols_of(own[0].stop) | symbols_of(first) <= set(sizes):
            return False
        if own[0].stop.evaluate(dict(sizes)) > first.evaluate(dict(sizes)):
            return False
    return True


def _cyclic_reads(
    program: Program,
    plan: StoragePlan,
    reads: list[tuple[int, int, Edge]],
    where: dict[int, list[tuple[Exec, tuple[Loop, ...]]]],
    loop: Loop,
    position: int,
    offset: Expr,
) -> tuple[CyclicRead, ...] | None:
    """The reads of :func:`cyclic_candidates`, or None when one of them is not such a read."""
    found = []
    for reader_id, k, edge in reads:
        served = [
            (id(ex), k) in plan.local or (id(ex), k) in plan.window
            for ex, _ in where.get(reader_id, [])
        ]
        if served and all(served):  # taken from the loop's carries, never from the buffer
            continue
        reader = program.op(reader_id)
        if reader.payload is None or reader.payload.accumulates or reader_id not in where:
            return None
        if not isinstance(edge.index[position], Slice):
            return None
        latest = set()
        for ex, loops in where[reader_id]:
            if not any(lp is loop for lp in loops):
                return None
            at = [  # the newest row written: the loop's iteration (from the reader's dim at
                # ``loop.var + shift``) plus the producer's offset
                simplify(d - (item - loop.var) + offset)
                for d, item in zip(reader.domain, ex.point, strict=True)
                if loop.var in symbols_of(item) and _loop_free(simplify(item - loop.var))
            ]
            if len(at) != 1:
                return None
            latest.add(at[0])
        if len(latest) != 1:
            return None
        found.append(CyclicRead(reader_id, k, latest.pop()))
    return tuple(found)
