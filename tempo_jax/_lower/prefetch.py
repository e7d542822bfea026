"""Prefetching: a read from host memory in a loop is brought to the device one iteration ahead.

A value kept in host memory (:mod:`.memory_plan`) and read one point per iteration of a loop
(a streamed learner's step ``t`` of the rollout's observations) would be copied to the device
at the step that reads it, the copy and the step's work one after the other. :func:`plan_prefetches`
lists such reads (data, in ``BufferPlan.prefetches``); the lowering then reads each one
iteration ahead: the first iteration's value before the loop, and in each iteration the next
iteration's value, carried by the loop to the iteration that uses it. The copy of step
``t + 1`` has nothing to wait for in step ``t``, so XLA may run it during step ``t``'s work.

A read is prefetched when it is an input of an ``apply`` op run directly in the loop's body
(not under a guard, a nested loop or a block nest), reads its value in host memory at one
point that moves with the loop's variable, and the loop writes nothing of that value (it was
filled before: the prefetched point holds its final value). The last iteration fetches its
own point again (clamped), which is not used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from .._ir.expr import TRUE, Slice, substitute, symbols_of
from .._ir.program import describe_op
from .._schedule.tree import Exec, Loop, Node, steps, walk
from .reading import read as read_value

if TYPE_CHECKING:
    from .buffer_plan import BufferPlan
    from .execute import Buffers, Env, TreeLowering

PREFETCH = 6  # third key element of a value fetched one iteration ahead


@dataclasses.dataclass(frozen=True)
class Prefetch:
    """Input ``k`` of ``node`` (an exec in ``loop``'s body), read one iteration ahead."""

    loop: Loop
    node: Exec
    k: int

    @property
    def key(self) -> tuple[int, int, int]:
        return (id(self.node), self.k, PREFETCH)


def plan_prefetches(
    plan: BufferPlan, hosted: Collection[tuple[int, int]] | None = None
) -> dict[Loop, tuple[Prefetch, ...]]:
    """The reads the lowering prefetches, per loop (module docstring), with the buffers of
    ``hosted`` in host memory (default: those of ``plan.memory_kinds``; the memory planner
    asks with the ones it is trying)."""
    hosted = plan.memory_kinds.keys() if hosted is None else hosted
    if not hosted:
        return {}
    found: dict[Loop, tuple[Prefetch, ...]] = {}
    in_nests = {id(n) for top in plan.nests for n in walk(top)}  # keyed by their top loop
    for loop in (n for n in walk(plan.tree) if isinstance(n, Loop)):
        if id(loop) in in_nests or loop.dim in plan.unroll:
            continue
        written = {n.op for n in walk(loop.body) if isinstance(n, Exec)}
        reads = [
            Prefetch(loop, node, k)
            for node in steps(loop.body)
            if isinstance(node, Exec)
            for k in _fetchable(plan, loop, node, written, hosted)
        ]
        if reads:
            found[loop] = tuple(reads)
    return found


def _fetchable(
    plan: BufferPlan,
    loop: Loop,
    node: Exec,
    written: set[int],
    hosted: Collection[tuple[int, int]],
) -> list[int]:
    op = plan.program.op(node.op)
    if op.kind != "apply" or op.payload is None or op.payload.accumulates:
        return []
    if any(isinstance(item, Slice) for edge in op.inputs for item in edge.index):
        return []  # ranges are read in tiles or gathered: not one point
    at = dict(zip(op.domain, node.point, strict=True))
    found = []
    for k, edge in enumerate(op.inputs):
        if (edge.src, edge.out) not in hosted or edge.src in written:
            continue
        if edge.cond != TRUE:  # read at some points only
            continue
        if any(loop.var in symbols_of(substitute(item, at)) for item in edge.index):
            found.append(k)
    return found


def describe(plan: BufferPlan, fetch: Prefetch) -> str:
    """One line naming the value read ahead, its reader and the loop."""
    op = plan.program.op(fetch.node.op)
    edge = op.inputs[fetch.k]
    source = describe_op(plan.program.op(edge.src))
    return f"{source} read by `{op.name}`, one iteration ahead in the loop over {fetch.loop.dim}"


def fetched(lowering: TreeLowering, fetch: Prefetch, env: Env, buffers: Buffers, value: Any) -> Any:
    """``fetch``'s read at iteration ``value`` of its loop (``env``: the loop's context)."""
    op = lowering.program.op(fetch.node.op)
    _, op_env = lowering.at_point(op, fetch.node, {**env, fetch.loop.var: value})
    return read_value(lowering, op.inputs[fetch.k], op_env, buffers, op.domain)


def in_piece(fetches: tuple[Prefetch, ...], piece: Node) -> tuple[Prefetch, ...]:
    """The prefetches of a loop whose exec is run directly by ``piece`` (a piece of the loop's
    body, :func:`.peeling.loop_pieces`)."""
    here = {id(node) for node in steps(piece)}
    return tuple(f for f in fetches if id(f.node) in here)
