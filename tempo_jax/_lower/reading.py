"""Reading a value at a point: what an edge reads from the buffer its producer is stored in.

The storage plan (:mod:`.buffer_plan`) says where each value lives; :func:`read` takes the
points an edge reads at the point of ``env`` out of it: a slice of a full buffer, the one
value of a scoped one, a tile of a growing range, a captured value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._ir.expr import Slice, Symbol
from .._ir.program import Edge, Output
from .split import constant

if TYPE_CHECKING:
    from .execute import Buffers, Env, TreeLowering

CAPTURE = 2  # third key element of the one value of a one-point output
ROWS = 5  # third key element of an input's rows handed to one lane of a nest's vmap (blocks.py)
LANE = 6  # third key element: the axes of a buffer a lane of a nest's vmap has left out (blocks.py)


def capture_key(out: Output) -> tuple:
    """The buffers key of a captured one-point output."""
    return (out.edge.src, out.edge.out, CAPTURE, out.name)


def read(
    lowering: TreeLowering,
    edge: Edge,
    env: Env,
    buffers: Buffers,
    domain: tuple[Symbol, ...],
    tile: tuple[Any, int] | None = None,
    windows: dict[str, Slice] | None = None,
    windowed: list[str] | None = None,
) -> jax.Array:
    """The value ``edge`` reads at the point of ``env`` (slices stacked in index order).

    A range of symbolic size is gathered at its padded size (``domain`` is the reader's),
    with indices past the buffer clamped: those rows are padding. With ``tile = (i, n)``,
    the growing range's axis is read as the ``n`` buffer rows from ``i`` instead.
    """
    held = lowering.layout.held.get((edge.src, edge.out))
    if held is not None:
        return buffers[capture_key(held)]
    if tile is None and (edge.src, edge.out) in lowering.layout.cycles:
        raise AssertionError(f"a cyclic buffer read whole by {edge}")  # planned away
    buf = lowering.buffer(edge, buffers)
    host = (edge.src, edge.out) in lowering.layout.memory_kinds
    items = lowering.layout.stored_index(edge)
    key = (edge.src, edge.out)
    as_is = edge.src in lowering.inputs or key not in lowering.layout.layouts
    if not items and not host and key not in lowering.layout.splits and as_is:
        return buf  # one value (the latest point of its producer), read as it is
    if edge.src in lowering.unstacked and not isinstance(items[0], Slice):
        first = constant(items[0].evaluate(env))
        if first is not None:  # a slice taken up front
            buf, items = lowering.unstacked[edge.src][first], items[1:]
    order = (
        None if edge.src in lowering.inputs else lowering.layout.layouts.get((edge.src, edge.out))
    )
    split = lowering.layout.splits.get((edge.src, edge.out))
    logical: tuple[int, ...] | None = None
    if split is not None:
        piece = None
        if tile is not None:
            coords = [items[a].evaluate(env) for a in split.unrolled]
            piece = split.tile(buf, coords, tile[0])
        if piece is not None:  # one whole tile: its own array, read as it is
            buf, order, logical = piece, split.piece_order, split.piece_shape
            items = tuple(item for a, item in enumerate(items) if a not in split.unrolled)
            tile = (0, tile[1])
        else:
            buf, order = split.assemble(buf), split.order
    if order is not None and tile is None:  # a whole read: back to domain order first
        buf = jnp.transpose(buf, np.argsort(order))
        order = None
    lane = buffers.get((edge.src, edge.out, LANE))
    if lane:  # a lane of a nest's vmap holds the one row of these axes it reads: no axis
        items = tuple(item for axis, item in enumerate(items) if axis not in lane)
    starts, sizes, keep = [], [], []
    for axis, item in enumerate(items):
        growing = isinstance(item, Slice) and not lowering.layout.is_static(item.size)
        if growing and tile is not None:  # the tile's rows of the buffer
            starts.append(tile[0])
            sizes.append(tile[1])
            keep.append(True)
        elif growing:
            if host:  # the whole buffer back on the device, then the rows gathered
                buf, host = jax.device_put(buf, jax.memory.Space.Device), False
            rows = lowering.padded(item.size, domain)
            if windows and windows.get(str(item.size)) == item and buf.shape[axis] == rows:
                # the range where it sits: the buffer's rows as they are, no gather
                assert windowed is not None
                windowed.append(str(item.size))
                starts.append(0)
                sizes.append(rows)
                keep.append(True)
                continue
            start = lowering.evaluate.index(item.start, env)
            index = jnp.clip(start + jnp.arange(rows, dtype=jnp.int32), 0, buf.shape[axis] - 1)
            buf = jnp.take(buf, index, axis=axis)
            starts.append(0)
            sizes.append(rows)
            keep.append(True)
        elif isinstance(item, Slice):
            starts.append(lowering.evaluate.index(item.start, env))
            sizes.append(item.size.evaluate(lowering.bounds))
            keep.append(True)
        else:
            starts.append(lowering.evaluate.index(item, env))
            sizes.append(1)
            keep.append(False)
    if logical is None:
        logical = lowering.layout.stored_shape(edge) if order is not None else buf.shape
    spatial = logical[len(items) :]
    starts += [0] * len(spatial)
    starts = [jnp.asarray(s, jnp.int32) for s in starts]
    every = [*sizes, *spatial]
    if order is None:
        window = lax.dynamic_slice(buf, starts, every, allow_negative_indices=False)
    else:  # sliced as stored, then viewed in domain order (a layout XLA can keep)
        stored = lax.dynamic_slice(
            buf,
            [starts[a] for a in order],
            [every[a] for a in order],
            allow_negative_indices=False,
        )
        window = jnp.transpose(stored, np.argsort(order))
    if host:  # a read of a buffer in host memory is brought to the device
        window = jax.device_put(window, jax.memory.Space.Device)
    shape = [s for s, k in zip(sizes, keep, strict=True) if k] + list(spatial)
    return window.reshape(shape)
