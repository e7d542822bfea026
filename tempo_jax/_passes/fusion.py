"""Growing values fused into their reader: a map-then-reduce written as several ops is one op.

Attention written op by op, ``s = k[b, 0:t+1] @ q[b, t]``, ``p = softmax(s)``,
``o = p @ v[b, 0:t+1]``, makes ``s`` and ``p`` values whose shape grows with ``t``. Stored,
each would be a padded ``(B, T, T)`` buffer; and only an op reading its growing ranges from
stored inputs can be taken in tiles (:mod:`.tiling`). :func:`fuse_growing` folds such a
producer into its reader when the reader reads it at the same point and is its only reader:
``o`` then reads ``k[b, 0:t+1]``, ``q[b, t]`` and ``v[b, 0:t+1]`` and computes
``softmax(k @ q) @ v`` itself, the map-then-reduce the tiler takes (flash attention, in query
blocks when ``b`` and ``t`` carry no dependence). The values are the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .._ir.expr import TRUE, dims_of
from .._ir.program import Op, Payload, Program


def fuse_growing(program: Program) -> Program:
    """``program`` with every growing value folded into its only reader (module docstring)."""
    while True:
        pair = _pair(program)
        if pair is None:
            return program
        program = _fuse(program, *pair)


def _pair(program: Program) -> tuple[Op, Op, int] | None:
    """A ``(producer, reader, input position)`` to fuse, or None."""
    readers = program.read_counts()
    for op in program.ops:
        if not _plain(op):
            continue
        for k, edge in enumerate(op.inputs):
            producer = program.op(edge.src)
            if (
                len(producer.outputs) == 1
                and readers[(producer.id, 0)] == 1
                and _plain(producer)
                and _grows(producer)
                and producer.domain == op.domain
                and edge.index == producer.domain
                and edge.cond == TRUE
            ):
                return producer, op, k
    return None


def _plain(op: Op) -> bool:
    """An ``apply`` op whose payload computes its point from its inputs alone."""
    payload = op.payload
    return (
        op.kind == "apply"
        and payload is not None
        and not (payload.accumulates or payload.pads_ok or payload.block is not None)
    )


def _grows(op: Op) -> bool:
    """Whether ``op``'s value has an axis whose size varies over its domain."""
    return any(not isinstance(n, int) and dims_of(n) for n in op.outputs[0].shape)


def _fuse(program: Program, producer: Op, reader: Op, k: int) -> Program:
    """``reader`` computing ``producer``'s value itself, from ``producer``'s inputs."""
    assert producer.payload is not None and reader.payload is not None
    inputs = (*reader.inputs[:k], *producer.inputs, *reader.inputs[k + 1 :])
    payload = dataclasses.replace(
        reader.payload,
        fn=_composed(producer.payload, reader.payload, k, len(producer.inputs)),
        uses_point=True,
        differentiable=producer.payload.differentiable and reader.payload.differentiable,
        fused=(
            *reader.payload.fused,
            (producer.name, producer.source),
            *producer.payload.fused,
        ),
    )
    fused = reader.replace(inputs=inputs, payload=payload)
    ops = tuple(fused if op.id == reader.id else op for op in program.ops if op.id != producer.id)
    return program.replace(ops=ops)


def _call(payload: Payload, env: Any, *values: Any) -> tuple[Any, ...]:
    return tuple(payload.fn(env, *values) if payload.uses_point else payload.fn(*values))


def _composed(inner: Payload, outer: Payload, k: int, n: int) -> Callable[..., tuple[Any, ...]]:
    """``outer`` with its input ``k`` computed by ``inner`` from the ``n`` values there."""

    def fn(env: Any, *values: Any) -> tuple[Any, ...]:
        (value,) = _call(inner, env, *values[k : k + n])
        return _call(outer, env, *values[:k], value, *values[k + n :])

    return fn
