"""The loop ``p.stop_when`` ends: its condition pinned to one op, and the loop found and checked.

- :func:`pin_stop` (after the passes, before scheduling): the lowering watches the values of
  the op the stop condition reads, so that read must be of an op over exactly the stopped dim
  ``t``, at ``t``. When it is not (the condition is an input, or passes made it a read of a
  copy of a wider value), an identity op over ``t`` is put in between.
- :func:`stop_loop` (at compile time, right after scheduling, and again when lowering): the
  loop over ``t`` computing the condition. It must run forwards, hold every op over ``t``
  (sinks included), and run each at the loop's own point, so that the iterations run are
  exactly the points before the stop. The scheduler builds such a loop by construction
  (:mod:`tempo_jax._schedule.stopped`); this check turns any departure into an
  :class:`UnsupportedError` at ``compile``, never at the first call.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .._ir.errors import UnsupportedError
from .._ir.expr import TRUE
from .._ir.program import STOP, Edge, Op, Payload, Program
from .._ir.source import describe
from .._passes.picks import next_id
from .._schedule.tree import Loop, Node, execs, walk
from .storage import iteration_execs


def pin_stop(program: Program) -> Program:
    """``program`` with its stop condition read from an op over the stopped dim, at its point."""
    stop = program.stop
    if stop is None:
        return program
    (dim,) = stop.domain
    edge = stop.edge
    producer = program.op(edge.src)
    if (
        producer.kind != "input"
        and producer.domain == (dim,)
        and tuple(edge.index) == (dim,)
        and edge.cond == TRUE
    ):
        return program
    pinned = Op(
        next_id(program),
        "apply",
        "stop",
        (dim,),
        (edge,),
        (stop.spec,),
        Payload(_identity, "stop"),
        edge.source,
    )
    read = Edge(pinned.id, 0, (dim,), TRUE, edge.source)
    outputs = tuple(
        dataclasses.replace(out, edge=read) if out.name == STOP else out for out in program.outputs
    )
    return program.replace(ops=(*program.ops, pinned), outputs=outputs)


def _identity(value: Any) -> tuple[Any]:
    return (value,)


def stop_loop(program: Program, tree: Node) -> Loop | None:
    """The loop over the dim of ``p.stop_when`` whose iterations compute its condition (see
    the module docstring), or None without a stop; :class:`UnsupportedError` if none fits."""
    stop = program.stop
    if stop is None:
        return None
    (dim,) = stop.domain
    producer = program.op(stop.edge.src)
    where = f"the stop condition{describe(stop.edge.source)}"
    if producer.domain != (dim,) or tuple(stop.edge.index) != (dim,):  # see pin_stop
        raise UnsupportedError(
            f"{where} must be computed at each point of `{dim.name}` by the loop over it; "
            "this one is not, so the loop cannot end early."
        )
    for node in walk(tree):
        if not isinstance(node, Loop):
            continue
        mine = [ex for ex in iteration_execs(node.body) if ex.op == producer.id]
        if mine and mine[0].point[0] == node.var:
            _check(program, node, where)
            return node
    raise UnsupportedError(
        f"{where} is not computed inside a loop over `{dim.name}`, so there is no loop to end: "
        f"compute it from a value carried from one `{dim.name}` to the next."
    )


def _check(program: Program, loop: Loop, where: str) -> None:
    """Every op over the stopped dim runs in ``loop``, forwards, at the loop's own point."""
    (dim,) = program.stop.domain
    if loop.reverse:
        raise UnsupportedError(f"{where}: the loop over `{dim.name}` runs backwards")
    for ex in execs(loop.body):
        op = program.op(ex.op)
        if dim in op.domain and ex.point[op.domain.index(dim)] != loop.var:
            raise UnsupportedError(
                f"{where}: `{op.name}`{describe(op.source)} runs a shifted point of "
                f"`{dim.name}` in the loop over it, so stopping would skip points before the "
                "stop."
            )
    inside = {ex.op for ex in execs(loop.body)}
    for op in program.ops:
        if op.kind != "input" and dim in op.domain and op.id not in inside:
            what = "sink" if op.kind == "sink" else "op"
            raise UnsupportedError(
                f"the {what} `{op.name}`{describe(op.source)} over `{dim.name}` runs outside "
                f"the loop that {where} ends; it would run at points past the stop."
            )
