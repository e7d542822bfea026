"""Static tiling of growing ranges: ops reducing ``x[0:t+1]``-like reads run over tiles.

A read whose size grows with a dim (``k[0:t+1]``, ``x[max(0, t-w+1):t+1]``, ``r[t:T]``) is
stored padded to its largest size. :func:`tile_dynamic_ranges` marks every op reading one
with a tile size (``Payload.block``); the compiled program then visits only the
``ceil(size / block)`` tiles holding data, masks the boundary tile and combines the
reductions across tiles, in one sweep for softmax attention (online max rescaling); see
:mod:`tempo_jax._lower.tiling`. An op whose payload is not a map-then-reduce over the range
falls back to the padded evaluation, with the same values.

The tile size is a pass option: ``functools.partial(tile_dynamic_ranges, block=128)`` in a
``Pipeline``; by default (0) it is chosen from the range's largest size at compile time.
"""

from __future__ import annotations

import dataclasses

from .._ir.expr import Slice, dims_of
from .._ir.program import Edge, Op, Program


def tile_dynamic_ranges(program: Program, block: int = 0) -> Program:
    """``program`` with every op that reads a growing range marked to run over tiles."""
    if block < 0:
        raise ValueError(f"a tile size must be positive (or 0: automatic), not {block}")
    ops = tuple(_marked(program, op, block) for op in program.ops)
    if all(a is b for a, b in zip(ops, program.ops, strict=True)):
        return program
    return program.replace(ops=ops)


def _range_read(program: Program, edge: Edge) -> bool:
    """Whether the only growing axis of the read is one range of its index."""
    spec = program.op(edge.src).outputs[edge.out]
    own = any(not isinstance(n, int) and dims_of(n) for n in spec.shape)
    ranges = [i for i in edge.index if isinstance(i, Slice) and dims_of(i.size)]
    return not own and len(ranges) == 1


def _marked(program: Program, op: Op, block: int) -> Op:
    payload = op.payload
    if op.kind != "apply" or payload is None or payload.pads_ok or payload.accumulates:
        return op
    if payload.block == block:
        return op
    growing = [
        edge
        for edge in op.inputs
        if any(not isinstance(n, int) and dims_of(n) for n in program.read_spec(edge).shape)
    ]
    if not growing or any(not _range_read(program, edge) for edge in growing):
        return op  # a growing value computed by another op arrives whole, not in tiles
    return op.replace(payload=dataclasses.replace(payload, block=block))
