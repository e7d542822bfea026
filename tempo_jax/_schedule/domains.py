"""Defined domains: the points of each op that can actually be computed.

Recorded ops have full-box domains, but not every point of the box is defined: a merge point
that no branch covers has no value, and a point whose reads leave the producer's defined
points cannot be computed (the body of ``s[t+1] = s[t] + x[t+1]`` at ``t = T-1`` reads
``x[T]``). Such points are harmless while nobody reads them; the reference interpreter never
evaluates them, and neither should compiled code.

:func:`defined_domains` computes, per op, the box minus every point that (transitively) reads
an undefined or out-of-bounds point, by iterating to a fixpoint over isl sets; a chain that
loses one point a round (as long as a bound) is closed in one step by isl's transitive
closure of the reads, or, where that is not exact, iterated to its end over the compiled
bounds' values.
:func:`check_reads` then raises, at compile time, the error the reference interpreter would
raise at run time when an output (transitively) reads an undefined point, naming the root
cause: the read that leaves a domain, or the point no branch defines.

Both take the bounds a program is compiled for as :class:`BoundRanges`: a static bound is one
value, a dynamic bound the range ``min..max`` it may take at call time. A read is checked at
exactly those values, so ``x[3]`` with ``T = 10`` passes (the interpreter runs it), while the
same read under a dynamic ``T`` in ``1..10`` is rejected, naming ``T = 1``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import islpy as isl

from .._ir.errors import OutOfBoundsError, TempoError, UndefinedPointError
from .._ir.expr import TRUE, Const, Slice
from .._ir.program import Edge, Op, Program
from .._ir.source import describe
from .isl_convert import (
    PRIME,
    access_map,
    branch_conditions,
    domain_set,
    fix_params,
    param_context,
    read_conditions,
    sample_values,
)

BoundRanges = Mapping[str, tuple[int, int]]  # bound name -> (least, largest) value


def bounds_context(program: Program, ctx: isl.Context, ranges: BoundRanges | None) -> isl.Set:
    """The parameter set of the compiled bounds (every bound ``>= 1`` when ``ranges`` is None).

    E.g. ``[B, T] -> { : B = 4 and 1 <= T <= 16 }`` for ``B = 4`` and a dynamic ``T``.
    """
    context = param_context(program, ctx)
    for name, (least, largest) in (ranges or {}).items():
        pos = context.find_dim_by_name(isl.dim_type.param, name)
        context = context.lower_bound_val(isl.dim_type.param, pos, least)
        context = context.upper_bound_val(isl.dim_type.param, pos, largest)
    return context


@dataclasses.dataclass(frozen=True)
class DefinedDomains:
    """Per op id, the isl set of its defined points; ``exact`` when the fixpoint was reached.

    A non-exact result over-approximates (it may keep points whose undefinedness propagates
    along an unbounded chain, e.g. every odd ``t`` of ``x[t+2] = f(x[t])`` without ``x[1]``).
    """

    sets: dict[int, isl.Set]
    exact: bool
    ranges: BoundRanges | None = None  # the bounds the sets are restricted to, None: any >= 1


def defined_domains(
    program: Program, ctx: isl.Context, max_rounds: int = 0, ranges: BoundRanges | None = None
) -> DefinedDomains:
    """Iterate ``defined = box - points reading undefined points`` to a fixpoint.

    The sets only shrink; ``max_rounds`` (default: twice the number of ops, plus 4) caps the
    iteration for chains that remove one point per round. ``ranges`` restricts the bounds to
    the values compiled for (every value ``>= 1`` when None). A chain still shrinking at the
    cap (``x[t] = f(x[t - 1])`` with no ``x[0]``: one point a round, ``T`` rounds) is taken
    in one step by isl's transitive closure of the reads (:func:`_by_closure`) where isl
    makes it exact; else, with ``ranges``, the iteration goes on to the fixpoint (the sets
    are finite): a result short of it would keep undefined points, and a read of one would
    pass the compile-time check and run on zeros.
    """
    rounds = max_rounds or 2 * len(program.ops) + 4
    within = bounds_context(program, ctx, ranges)
    sets = {op.id: _optimistic(program, op, ctx).intersect_params(within) for op in program.ops}
    reads: dict[int, list[_Read]] = {}  # made when first needed
    # ops whose reads all stay inside their producers' boxes at every point: while each
    # producer is defined on its whole box, so is the op's optimistic set (no isl needed)
    edges_in = {op.id: [_inside(program, op, e) for e in op.inputs] for op in program.ops}
    inside = {op.id for op in program.ops if all(edges_in[op.id])}
    changed = set(sets)  # ops whose set changed last round: only their readers can change
    # ops whose set is, or ever was, short of their box: a merge no branch of which holds
    # at some points, an op whose set shrank
    ever = {
        op.id
        for op in program.ops
        if op.kind == "merge"
        and not sets[op.id].is_equal(domain_set(program, op, ctx).intersect_params(within))
    }
    done = 0
    while changed:
        if done == rounds:
            closed = _by_closure(program, ctx, within)
            if closed is not None:
                return DefinedDomains(closed, exact=True, ranges=ranges)
            if ranges is None:
                return DefinedDomains(sets, exact=False, ranges=ranges)
        done += 1
        now: set[int] = set()
        for op in program.ops:
            if op.kind == "input" or not any(edge.src in changed for edge in op.inputs):
                continue
            if op.id in inside and not any(edge.src in ever for edge in op.inputs):
                continue  # every producer whole: the optimistic set stands
            if op.id not in reads:
                reads[op.id] = _reads(program, op, ctx)
            # an edge inside a producer defined on its whole box reads no undefined point
            whole = {
                k for k, edge in enumerate(op.inputs) if edge.src not in ever and edges_in[op.id][k]
            }
            new = _defined(program, op, reads[op.id], sets, ctx, whole).intersect_params(within)
            new = new.coalesce()
            if not new.is_equal(sets[op.id]):
                sets[op.id] = new
                now.add(op.id)
        changed = now
        ever |= now
    return DefinedDomains(sets, exact=True, ranges=ranges)


def _by_closure(program: Program, ctx: isl.Context, within: isl.Set) -> dict[int, isl.Set] | None:
    """Each op's defined points, from the transitive closure of every read (consumer point
    to the producer point it reads, where it reads it): a point is undefined when it reads,
    directly or through others, a merge point no branch covers or a point outside its
    producer's box. None where isl's closure is not exact (it would over-approximate what
    is undefined, and reject programs the interpreter runs)."""
    boxes = {op.id: domain_set(program, op, ctx).intersect_params(within) for op in program.ops}
    reads = isl.UnionMap.empty(within.get_space())
    roots = isl.UnionSet.empty(within.get_space())
    for op in program.ops:
        if op.kind == "input":
            continue
        box = boxes[op.id]
        if op.kind == "merge":
            roots = roots.union(isl.UnionSet.from_set(box.subtract(_optimistic(program, op, ctx))))
        for edge, where in zip(op.inputs, read_conditions(program, op, ctx), strict=True):
            access = access_map(program, op, edge, ctx).intersect_domain(box.intersect(where))
            roots = roots.union(
                isl.UnionSet.from_set(access.subtract_range(boxes[edge.src]).domain())
            )
            reads = reads.union(isl.UnionMap.from_map(access))
    closure, exact = reads.transitive_closure()
    if not exact:
        return None
    undefined = roots.union(closure.intersect_range(roots).domain())
    return {
        op_id: box.subtract(undefined.extract_set(box.get_space())).coalesce()
        for op_id, box in boxes.items()
    }


def _inside(program: Program, op: Op, edge: Edge) -> bool:
    """Whether ``edge`` reads, at every point of ``op``, points inside its producer's box:
    each index item the producer's own dim (walked by ``op`` too) or its whole range."""
    dims = program.op(edge.src).domain
    for item, dim in zip(edge.index, dims, strict=True):
        if isinstance(item, Slice):
            if item.start != Const(0) or item.stop != dim.bound:
                return False
        elif item != dim or dim not in op.domain:
            return False
    return True


def _optimistic(program: Program, op: Op, ctx: isl.Context) -> isl.Set:
    box = domain_set(program, op, ctx)
    if op.kind != "merge":
        return box
    covered = isl.Set.empty(box.get_space())
    for where in branch_conditions(program, op, ctx):
        covered = covered.union(where)
    return covered.coalesce()


@dataclasses.dataclass
class _Read:
    """An input edge of an op: where it is read, and (made when first needed) the points
    each of those reads."""

    op: Op
    edge: Edge
    where: isl.Set
    found: isl.Map | None = None

    def access(self, program: Program, ctx: isl.Context) -> isl.Map:
        if self.found is None:
            self.found = access_map(program, self.op, self.edge, ctx).intersect_domain(self.where)
        return self.found


def _reads(program: Program, op: Op, ctx: isl.Context) -> list[_Read]:
    """Per input edge of ``op``: where it is read (its access map made when first needed)."""
    return [
        _Read(op, edge, where)
        for edge, where in zip(op.inputs, read_conditions(program, op, ctx), strict=True)
    ]


def _defined(
    program: Program,
    op: Op,
    reads: list[_Read],
    sets: dict[int, isl.Set],
    ctx: isl.Context,
    whole: set[int],
) -> isl.Set:
    """``op``'s points none of whose reads is of an undefined point (a merge's: those where
    a branch holds that reads none); the reads ``whole`` are known to be all defined."""
    box = domain_set(program, op, ctx)
    parts = isl.Set.empty(box.get_space())
    result = box
    for k, read in enumerate(reads):
        if k in whole:
            if op.kind == "merge":
                parts = parts.union(read.where)
            continue
        bad = read.access(program, ctx).subtract_range(sets[read.edge.src]).domain()
        if op.kind == "merge":
            parts = parts.union(read.where.subtract(bad))
        else:
            result = result.subtract(bad)
    return (parts if op.kind == "merge" else result).coalesce()


def _bad_reads(
    program: Program, op: Op, edge: Edge, where: isl.Set, defined: isl.Set, ctx: isl.Context
) -> isl.Set:
    """The points of ``where`` at which ``edge`` reads some point outside ``defined``."""
    access = access_map(program, op, edge, ctx).intersect_domain(where)
    return access.subtract_range(defined).domain()


# ---------------------------------------------------------------------------------------------
# Compile-time check of every output read
# ---------------------------------------------------------------------------------------------


def check_reads(program: Program, ctx: isl.Context, domains: DefinedDomains) -> None:
    """Raise the interpreter's error, at compile time, for an output or a sink reading
    undefined points at some value of the bounds ``domains`` was computed for."""
    within = bounds_context(program, ctx, domains.ranges)
    for k, out in enumerate(program.outputs):
        # A fresh id: the reader's isl tuple name must differ from every op's.
        reader = out.reader(max((op.id for op in program.ops), default=0) + 1 + k)
        where = domain_set(program, reader, ctx).intersect_params(within)
        bad = _bad_reads(program, reader, out.edge, where, domains.sets[out.edge.src], ctx)
        example = sample_values(bad)
        if example is not None:
            params = {b.name: example[b.name] for b in program.bounds}
            _explain(program, reader, out.edge, bad, params, domains, ctx, f"output {out.name!r}")
    for op in program.ops:
        if op.kind != "sink":
            continue
        (edge,) = op.inputs
        where = domain_set(program, op, ctx).intersect_params(within)
        bad = _bad_reads(program, op, edge, where, domains.sets[edge.src], ctx)
        example = sample_values(bad)
        if example is not None:
            params = {b.name: example[b.name] for b in program.bounds}
            _explain(program, op, edge, bad, params, domains, ctx, f"`{op.name}`")


def _explain(
    program: Program,
    reader: Op,
    edge: Edge,
    bad: isl.Set,
    params: dict[str, int],
    domains: DefinedDomains,
    ctx: isl.Context,
    reader_name: str,
) -> None:
    """Walk from a bad read to its root cause and raise the matching error: a loop, one
    read a step (a chain of undefined points is as long as a bound: ``x[t] = f(x[t - 1])``
    without ``x[0]``, read at ``T - 1``)."""
    walk = _Walk(program, params, domains, ctx)
    while True:
        producer, undefined = _undefined_read(walk, reader, edge, bad, reader_name)
        reader, edge, bad = _why_undefined(walk, producer, undefined, edge)
        reader_name = f"`{reader.name}`"


@dataclasses.dataclass(frozen=True)
class _Walk:
    """What each step of :func:`_explain`'s walk reads: the program, the bounds' values of
    the example, the defined points and the isl context."""

    program: Program
    params: dict[str, int]
    domains: DefinedDomains
    ctx: isl.Context


def _undefined_read(
    walk: _Walk, reader: Op, edge: Edge, bad: isl.Set, reader_name: str
) -> tuple[Op, isl.Set]:
    """The producer of a bad read and the undefined points one of its points reads; raises
    :class:`OutOfBoundsError` for a read outside the producer's box."""
    program, params, domains, ctx = walk.program, walk.params, walk.domains, walk.ctx
    point = sample_values(fix_params(bad, params))
    assert point is not None
    single = fix_params(bad, params)
    for name, value in point.items():
        pos = single.find_dim_by_name(isl.dim_type.set, name)
        if pos >= 0:
            single = single.fix_val(isl.dim_type.set, pos, value)
    producer = program.op(edge.src)
    reads = access_map(program, reader, edge, ctx).intersect_domain(single).range()
    reads = fix_params(reads, params)
    outside_box = reads.subtract(fix_params(domain_set(program, producer, ctx), params))
    at = _at(reader, point, params, domains.ranges)
    if not outside_box.is_empty():
        raise OutOfBoundsError(
            f"`{edge.describe(producer.name)}`{describe(edge.source)}, read by {reader_name}, "
            f"reads outside the domain of `{producer.name}` at {at}. Guard the read with a "
            "branch condition, or clamp the index with `tj.min`/`tj.max`."
        )
    return producer, reads.subtract(fix_params(domains.sets[producer.id], params))


def _why_undefined(walk: _Walk, op: Op, points: isl.Set, read_by: Edge) -> tuple[Op, Edge, isl.Set]:
    program, params, domains, ctx = walk.program, walk.params, walk.domains, walk.ctx
    conditions = [fix_params(w, params) for w in read_conditions(program, op, ctx)]
    for edge, where in zip(op.inputs, conditions, strict=True):
        hit = points.intersect(where)
        if hit.is_empty():
            continue
        bad = _bad_reads(program, op, edge, where, domains.sets[edge.src], ctx)
        bad = fix_params(bad, params).intersect(hit)
        if not bad.is_empty():
            return op, edge, bad
    if op.kind == "merge":
        example = sample_values(points)
        assert example is not None
        conds = " | ".join(str(e.cond) for e in op.inputs) or "nothing"
        raise UndefinedPointError(
            f"`{op.name}` is read as `{read_by.describe(op.name)}`{describe(read_by.source)}, "
            f"but no branch defines it at {_at(op, example, params, domains.ranges)} (its "
            f"branches cover {conds}). Add a branch for these points, e.g. "
            f"`{op.name}[True] = ...` as a default, or change the read."
        )
    raise TempoError(f"internal: cannot explain why `{op.name}` is undefined at {points}")


def _at(op: Op, point: dict[str, int], params: dict[str, int], ranges: BoundRanges | None) -> str:
    """``t=3 (with T=10)``: the point, then the bounds it was found at and how they were set."""
    point = {name.rstrip(PRIME): value for name, value in point.items()}  # t' (a read) -> t
    coords = ", ".join(f"{d.name}={point[d.name]}" for d in op.domain if d.name in point)
    bounds = ", ".join(f"{name}={value}" for name, value in params.items())
    if ranges is None:
        return f"{coords or 'its only point'} (for example with {bounds})"
    dynamic = [
        f"{name} is dynamic, compiled for {least}..{largest}"
        for name, (least, largest) in ranges.items()
        if least != largest
    ]
    return f"{coords or 'its only point'} (with {'; '.join([bounds, *dynamic])})"


def covering_merges(program: Program, ctx: isl.Context) -> frozenset[int]:
    """The merge ops some branch of which holds at every point of their domain, for every
    value of the bounds: no point of theirs falls through to zeros, so the compiled program
    takes the last branch wherever no earlier one holds, without testing its condition."""
    within = param_context(program, ctx)
    found = set()
    known: dict[tuple, bool] = {}  # (domain, conditions) -> covering: merges share them
    for op in program.ops:
        if op.kind != "merge" or not op.inputs:
            continue
        conds = tuple(edge.cond for edge in op.inputs)
        key = (op.domain, conds)
        if key not in known:
            if conds[-1] == TRUE:
                known[key] = True
            else:
                box = domain_set(program, op, ctx).intersect_params(within)
                known[key] = box.subtract(_optimistic(program, op, ctx)).is_empty()
        if known[key]:
            found.add(op.id)
    return frozenset(found)
