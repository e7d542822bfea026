"""Copy elimination: reads of a merge that only copies another op read that op instead.

A merge whose single branch is unconditional and reads an op of the same domain at its own
point (``y[True] = x``, the gradient placeholders of ``tj.grad``) adds an op to schedule and
a value to store, and computes nothing. :func:`remove_copies` redirects every read of such a
merge (op inputs, merge branches, outputs) to its source, transitively, and drops it. The
program's values are unchanged; isl has fewer statements to schedule.
"""

from __future__ import annotations

import dataclasses

from .._ir.expr import TRUE
from .._ir.program import Edge, Op, Program


def remove_copies(program: Program) -> Program:
    """``program`` without copy merges (see the module docstring)."""
    source = {op.id: _copied(program, op) for op in program.ops}
    source = {k: v for k, v in source.items() if v is not None}
    if not source:
        return program

    def resolve(key: tuple[int, int]) -> tuple[int, int]:
        seen = set()
        while key[0] in source and key[0] not in seen:
            seen.add(key[0])
            key = source[key[0]]
        return key

    def redirect(edge: Edge) -> Edge:
        if edge.src not in source:
            return edge
        src, out = resolve((edge.src, edge.out))
        return dataclasses.replace(edge, src=src, out=out)

    ops = tuple(
        op.replace(inputs=tuple(redirect(e) for e in op.inputs))
        for op in program.ops
        if op.id not in source
    )
    outputs = tuple(dataclasses.replace(out, edge=redirect(out.edge)) for out in program.outputs)
    return program.replace(ops=ops, outputs=outputs)


def _copied(program: Program, op: Op) -> tuple[int, int] | None:
    """The (op, output) a merge copies at its own point, if that is all it does."""
    if op.kind != "merge" or len(op.inputs) != 1:
        return None
    (edge,) = op.inputs
    src = program.op(edge.src)
    if edge.cond != TRUE or src.domain != op.domain or edge.index != op.domain:
        return None
    if src.outputs[edge.out] != op.outputs[0] or src.id == op.id:
        return None
    return edge.src, edge.out
