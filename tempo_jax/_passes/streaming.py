"""Streaming: work that looks a bounded way ahead along a loop stays in that loop.

An op over ``d`` that reads a value made in a loop over ``d`` a bounded number of steps ahead
(n-step returns ``r[t : min(t + n, T)]`` from a rollout) can run ``n - 1`` steps behind that
loop, inside it. Vectorised over ``d`` instead, it and everything after it would need the
loop's values at every point of ``d`` at once: stored whole, growing with ``d``'s bound. When
such work ends in a sum over all of ``d`` (a gradient summed over a rollout's steps, a mean
loss), :func:`streamed` keeps it, and what it reads at its own point, out of the vectorised
group, so its per-step values are consumed as they are made and its memory does not grow with
the bound (Tempo's n-step TD learner, which learns while acting).

The *horizon* of an op over ``d`` is how far ahead along ``d`` of its own point it depends on
values made in loops over ``d``: 0 for a forward recurrence and what it reads, ``n - 1`` for a
window ``t : min(t + n, T)`` of it, unbounded for a backward recurrence (Monte-Carlo returns,
GAE) and what reads it. By default only ops of a finite, positive horizon stream: an unbounded
horizon needs the whole loop first anyway, and vectorised, the learner takes the rollout in one
batch. Asked to (``behind=True``: ``compile(..., memory_budget=...)`` asks when the vectorised
plan misses the budget), ops of an unbounded horizon that end in such a sum stream too, behind
the backward recurrence: they stay a loop over ``d``, which the scheduler fuses with the
recurrence's reversed loop (Monte-Carlo REINFORCE's and PPO's learner, one step of the rollout
at a time), so the rollout's per-step values are read one step at a time (from host memory,
under a budget) and the learner's activations are one step's, not the episode's.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from .._ir.expr import TRUE, Slice, Symbol
from .._ir.program import Edge, Op, Payload, Program
from .._schedule.retime import UNBOUNDED, longest_paths, reach
from .picks import next_id
from .unread import trace_sized


def streamed(
    program: Program,
    d: Symbol,
    over: set[int],
    looped: set[int],
    cycles: list[set[int]],
    behind: bool = False,
) -> tuple[set[int], set[int]]:
    """The ops of ``over`` (ops over ``d``) that stream, given the dependence ``cycles``
    (module docstring): those of finite positive horizon whose values reach a sum over all of
    ``d`` (some, such as the window's reader, loops over ``d`` anyway: ``looped``), and the
    ops they read at their own point that would otherwise be vectorised; then, with
    ``behind``, those of unbounded horizon alike (none without), which need no delay."""
    horizon = _horizons(program, d, over, cycles)
    readers = program.readers()
    finite = {o for o in over if 0 < horizon[o] < UNBOUNDED}
    ahead = _pulled(program, d, over, looped, finite, readers)
    if not behind:
        return ahead, set()
    late = {o for o in over if horizon[o] == UNBOUNDED}
    return ahead, _pulled(program, d, over, looped | ahead, late, readers) - ahead


def _pulled(
    program: Program,
    d: Symbol,
    over: set[int],
    looped: set[int],
    candidates: set[int],
    readers: dict[int, list[tuple[int, Edge]]],
) -> set[int]:
    """The ``candidates`` whose values reach a whole-range sum over ``d``, and the ops over
    ``d`` they read at their own point that would otherwise be vectorised (``readers``: per
    op, the ops reading it and their edges)."""
    if not candidates:
        return set()
    summed = {  # candidates read over a range of d by an op without d: a reduction
        o
        for o in candidates
        for r, edge in readers[o]
        if d not in program.op(r).domain and _reads_range(program, edge, d)
    }
    feeding = set(summed)  # the candidates whose values reach such a reduction
    stack = list(summed)
    while stack:
        for edge in program.op(stack.pop()).inputs:
            if edge.src in candidates and edge.src not in feeding:
                feeding.add(edge.src)
                stack.append(edge.src)
    pulled = set(feeding)  # and what they read at their own point, vectorised otherwise
    stack = list(feeding)
    while stack:
        op = program.op(stack.pop())
        for edge in op.inputs:
            src = program.op(edge.src)
            if (
                edge.src in over
                and edge.src not in pulled
                and edge.src not in looped
                and src.kind in ("apply", "merge")
                and set(src.domain) >= set(op.domain)  # not one hoisted out of an outer loop
                and edge.index[src.domain.index(d)] == d
            ):
                pulled.add(edge.src)
                stack.append(edge.src)
    return pulled


def _reads_range(program: Program, edge: Edge, d: Symbol) -> bool:
    producer = program.op(edge.src)
    return d in producer.domain and isinstance(edge.index[producer.domain.index(d)], Slice)


def _horizons(
    program: Program, d: Symbol, over: set[int], cycles: list[set[int]]
) -> dict[int, float]:
    """Per op over ``d``, its horizon (module docstring): the largest reach of its reads of
    ops over ``d`` plus theirs (:func:`~tempo_jax._schedule.retime.longest_paths`); a read
    ahead within a dependence cycle (a backward recurrence) is unbounded."""
    cycle_of = {m: c for c in cycles for m in c}
    reads: list[tuple[int, int | None, float]] = []  # ops over d only; inputs are there whole
    for op in program.ops:
        if op.id not in over:
            continue
        for edge in op.inputs:
            src = program.op(edge.src)
            if edge.src not in over or src.kind == "input":
                continue
            ahead = reach(edge.index[src.domain.index(d)], d)
            if ahead > 0 and edge.src in cycle_of.get(op.id, ()):
                ahead = UNBOUNDED
            reads.append((op.id, edge.src, max(ahead, 0.0)))
    horizon, settled = longest_paths(over, reads)
    if settled:
        return horizon
    return {o: UNBOUNDED if h > 0 else h for o, h in horizon.items()}  # no fixed point: growing


def running_sums(program: Program, d: Symbol, streams: set[int]) -> tuple[Program, set[int]]:
    """``program`` with each whole-range sum over ``d`` of a streamed op's values (a
    parameter's gradient summed over a rollout's steps) made accumulating: the lowering keeps
    a running sum, added to as each step is made, rather than every step's value
    (``Payload.accumulates``); and the ops it adds, which stream too.

    Where that sum is then summed over its leading axis (the per-environment gradients over
    the environments, vectorised), the two sums swap: each step's value is summed over the
    environments first (an op per step, which ``contract_sums`` folds into the gradient's
    contraction), and the steps' sums are accumulated; no per-environment gradient is kept."""
    added: set[int] = set()
    for op in list(program.ops):
        if (
            d not in op.domain
            and len(op.inputs) == 1
            and op.inputs[0].src in streams
            and _reads_range(program, op.inputs[0], d)
            and _sums_rows(program, op)
        ):
            assert op.payload is not None
            swapped = _summed_first(program, op)
            if swapped is not None:
                program, new = swapped
                added.add(new)
                continue
            marked = op.replace(payload=dataclasses.replace(op.payload, accumulates=True))
            program = program.replace(ops=tuple(marked if o is op else o for o in program.ops))
    return program, added


def _summed_first(program: Program, total: Op) -> tuple[Program, int] | None:
    """``total`` (a sum over ``d`` of a streamed op's rows) and its one reader summing its
    leading axis, swapped (:func:`running_sums`); None where ``total`` has another reader or
    its reader does more."""
    readers = [op for op in program.ops if any(e.src == total.id for e in op.inputs)]
    if len(readers) != 1 or any(o.edge.src == total.id for o in program.outputs):
        return None
    (outer,) = readers
    (edge,) = total.inputs
    if (
        len(outer.inputs) != 1
        or outer.domain != total.domain
        or outer.inputs[0].index != total.domain
        or outer.inputs[0].cond != TRUE
        or edge.cond != TRUE
        or not _sums_rows(program, outer)
        or outer.payload is None
        or outer.payload.uses_point
    ):
        return None
    rows = program.op(edge.src)
    step = Op(
        next_id(program),
        "apply",
        outer.name,
        rows.domain,
        (Edge(rows.id, edge.out, rows.domain, TRUE, edge.source),),
        outer.outputs,
        outer.payload,
        outer.source,
    )
    dtype = outer.outputs[0].dtype
    accumulated = outer.replace(
        inputs=(dataclasses.replace(edge, src=step.id, out=0),),
        payload=Payload(functools.partial(_sum_rows, dtype), "sum", accumulates=True),
    )
    ops = []
    for op in program.ops:
        if op.id == outer.id:
            ops += [step, accumulated]
        elif op.id != total.id:
            ops.append(op)
    return program.replace(ops=tuple(ops)), step.id


def _sum_rows(dtype: Any, rows: Any) -> tuple[Any]:
    """The sum of ``rows`` over their stacked axis."""
    return (rows.sum(axis=0).astype(dtype),)


def _sums_rows(program: Program, op: Op) -> bool:
    """Whether ``op``'s payload only sums its one input over the first (stacked) axis: a
    lifted sum, vectorised over other dims or not (traced at the static sizes)."""
    found = trace_sized(program, op, bounds_as_point=True)
    if found is None or len(op.inputs) != 1:
        return False
    closed = found[0]
    eqns = closed.jaxpr.eqns
    kinds = [e.primitive.name for e in eqns]
    if kinds.count("reduce_sum") != 1 or set(kinds) - {"reduce_sum", "convert_element_type"}:
        return False
    (summed,) = [e for e in eqns if e.primitive.name == "reduce_sum"]
    return tuple(summed.params["axes"]) == (0,) and summed.invars[0] is closed.jaxpr.invars[0]
