"""Split storage: a buffer read in tiles kept as one array per tile (and per unrolled index).

A loop visiting the live tiles of ``k[0:t+1]`` reads tile ``j`` of the buffer. Cut out of one
array with ``lax.dynamic_slice``, the tile is a copy: XLA's CPU back end materialises the
slice (and its mask) before the product that reads it, so every row visited is moved three
times (read, written, read again) instead of once. Stored split, tile ``j`` is an array of
its own: the loop over tiles is unrolled into one ``lax.switch`` per tile (skip it, read it
whole, or read it masked when the range covers part of it), and each branch reads its array
as it is. Axes of the buffer indexed by an unrolled dim (the layers of a decoder, ``l``) are
split one array per index too, since a constant index into a stacked array is a copy as well.

A write of one point goes straight to its piece when its coordinates are constants, and
otherwise to every candidate piece through a select (the row's old value where it does not
belong): a few rows' worth of work per write, never a buffer-sized copy. A read that is not
one whole tile (an output, a point read elsewhere) assembles the pieces first.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

MAX_SPLIT = 128  # at most this many arrays per buffer (the switches and writes per point grow)


@dataclasses.dataclass(frozen=True)
class Split:
    """How one buffer is split: ``shape`` is its logical shape (kept domain axes, then the
    value's), ``order`` the axis order it is stored in, ``unrolled`` the logical axes cut one
    piece per index, ``axis`` the logical axis cut into ``count`` tiles of ``block`` rows."""

    shape: tuple[int, ...]
    order: tuple[int, ...]
    unrolled: tuple[int, ...]
    axis: int
    block: int
    count: int

    @functools.cached_property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.unrolled)

    @functools.cached_property
    def remaining(self) -> tuple[int, ...]:
        """The logical axes a piece keeps, in logical order."""
        return tuple(a for a in range(len(self.shape)) if a not in self.unrolled)

    @functools.cached_property
    def piece_shape(self) -> tuple[int, ...]:
        """A piece's logical shape: the kept axes, the tile axis ``block`` rows long."""
        return tuple(self.block if a == self.axis else self.shape[a] for a in self.remaining)

    @functools.cached_property
    def piece_order(self) -> tuple[int, ...]:
        """A piece's stored axis order (its logical axes, as the whole buffer stores them)."""
        return tuple(self.remaining.index(a) for a in self.order if a not in self.unrolled)

    def zeros(self, dtype: Any) -> tuple[jax.Array, ...]:
        stored = tuple(self.piece_shape[p] for p in self.piece_order)
        return tuple(jnp.zeros(stored, dtype) for _ in range(math.prod(self.grid) * self.count))

    def _index(self, group: Sequence[int], tile: int) -> int:
        flat = int(np.ravel_multi_index(tuple(group), self.grid)) if self.grid else 0
        return flat * self.count + tile

    # -- reads -----------------------------------------------------------------------------------
    def tile(self, pieces: tuple[jax.Array, ...], coords: Sequence[Any], start: Any) -> Any:
        """The piece holding rows ``start ..`` at ``coords`` (values of the unrolled axes), or
        None unless all of them are constants and ``start`` is a tile's first row."""
        group = [constant(c) for c in coords]
        first = constant(start)
        if any(g is None for g in group) or first is None or first % self.block:
            return None
        return pieces[self._index(group, first // self.block)]  # type: ignore[arg-type]

    def assemble(self, pieces: tuple[jax.Array, ...]) -> jax.Array:
        """The whole buffer as one array in its stored order (a copy)."""
        tile_axis = self.piece_order.index(self.remaining.index(self.axis))
        groups = [
            jnp.concatenate(pieces[g * self.count : (g + 1) * self.count], axis=tile_axis)
            for g in range(math.prod(self.grid))
        ]
        whole = jnp.stack(groups).reshape(self.grid + groups[0].shape)
        held = [*self.unrolled, *(self.remaining[p] for p in self.piece_order)]  # logical axes
        whole = jnp.transpose(whole, [held.index(a) for a in self.order])
        return lax.slice_in_dim(whole, 0, self.shape[self.axis], axis=self.order.index(self.axis))

    # -- writes ----------------------------------------------------------------------------------
    def write(
        self, pieces: tuple[jax.Array, ...], update: jax.Array, at: Sequence[Any]
    ) -> tuple[jax.Array, ...]:
        """``pieces`` with the point ``at`` (its leading logical coordinates) set to
        ``update`` (logical shape, 1 along the point's axes)."""
        update = update.reshape(tuple(update.shape[a] for a in self.remaining))
        update = jnp.transpose(update, self.piece_order)
        row = at[self.axis]
        known = constant(row)
        tiles = [known // self.block] if known is not None else range(self.count)
        out = list(pieces)
        for group in itertools.product(*(range(n) for n in self.grid)):
            conds = []
            for axis, g in zip(self.unrolled, group, strict=True):
                coord = constant(at[axis])
                if coord is None:
                    conds.append(at[axis] == g)
                elif coord != g:
                    break
            else:
                for j in tiles:
                    k = self._index(group, j)
                    out[k] = self._write_tile(out[k], update, at, known, j, conds)
        return tuple(out)

    def write_block(
        self, pieces: tuple[jax.Array, ...], value: jax.Array, starts: Sequence[Any]
    ) -> tuple[jax.Array, ...]:
        """``pieces`` with the block ``value`` (logical shape) written at logical ``starts``:
        straight into the pieces it covers when its starts along the tile axis and the unrolled
        axes are constants, else through the whole buffer (assembled, updated, cut again)."""
        fixed = [constant(starts[a]) for a in (self.axis, *self.unrolled)]
        if fixed[0] is None and value.shape[self.axis] == 1 and None not in fixed[1:]:
            out = pieces  # one row at a computed position: one point write per unrolled index
            spans = [
                range(c, c + value.shape[a]) for a, c in zip(self.unrolled, fixed[1:], strict=True)
            ]
            for group in itertools.product(*spans):
                part, at = value, list(starts)
                for a, g, c in zip(self.unrolled, group, fixed[1:], strict=True):
                    part = lax.slice_in_dim(part, g - c, g - c + 1, axis=a)
                    at[a] = g
                out = self.write(out, part, at)
            return out
        if any(c is None for c in fixed):
            stored = jnp.transpose(value, self.order)
            whole = self.assemble(pieces)
            at = [jnp.asarray(starts[a], jnp.int32) for a in self.order]
            return self.cut(
                lax.dynamic_update_slice(
                    whole, stored.astype(whole.dtype), at, allow_negative_indices=False
                )
            )
        first, *corner = fixed
        rows = value.shape[self.axis]
        out = list(pieces)
        spans = [range(c, c + value.shape[a]) for a, c in zip(self.unrolled, corner, strict=True)]
        tile_axis = self.remaining.index(self.axis)
        for group in itertools.product(*spans):
            part = value
            for a, g, c in sorted(zip(self.unrolled, group, corner, strict=True), reverse=True):
                part = lax.index_in_dim(part, g - c, axis=a, keepdims=False)
            for j in range(first // self.block, (first + rows - 1) // self.block + 1):
                lo, hi = max(first, j * self.block), min(first + rows, (j + 1) * self.block)
                rows_j = lax.slice_in_dim(part, lo - first, hi - first, axis=tile_axis)
                at = [lo - j * self.block if a == self.axis else starts[a] for a in self.remaining]
                rows_j = jnp.transpose(rows_j, self.piece_order)
                k = self._index(group, j)
                begin = [jnp.asarray(at[p], jnp.int32) for p in self.piece_order]
                out[k] = lax.dynamic_update_slice(
                    out[k], rows_j.astype(out[k].dtype), begin, allow_negative_indices=False
                )
        return tuple(out)

    def cut(self, whole: jax.Array) -> tuple[jax.Array, ...]:
        """The pieces of the whole buffer ``whole`` (stored order; :meth:`assemble`'s inverse)."""
        held = [*self.unrolled, *(self.remaining[p] for p in self.piece_order)]  # logical axes
        grouped = jnp.transpose(whole, [self.order.index(a) for a in held])
        tile_axis = len(self.unrolled) + self.piece_order.index(self.remaining.index(self.axis))
        padded = self.count * self.block - self.shape[self.axis]
        if padded:
            widths = [(0, padded if a == tile_axis else 0) for a in range(grouped.ndim)]
            grouped = jnp.pad(grouped, widths)
        grouped = grouped.reshape((-1, *grouped.shape[len(self.unrolled) :]))
        return tuple(
            lax.slice_in_dim(
                grouped[g],
                j * self.block,
                (j + 1) * self.block,
                axis=tile_axis - len(self.unrolled),
            )
            for g in range(grouped.shape[0])
            for j in range(self.count)
        )

    def _write_tile(
        self,
        piece: jax.Array,
        update: jax.Array,
        at: Sequence[Any],
        known: int | None,
        j: int,
        conds: list[Any],
    ) -> jax.Array:
        """Tile ``j`` with the point written (``known``: its row, when a constant)."""
        row = at[self.axis]
        if known is not None:
            local: Any = known - j * self.block
        else:
            local = jnp.clip(jnp.asarray(row, jnp.int32) - j * self.block, 0, self.block - 1)
            conds = [*conds, (row >= j * self.block) & (row < (j + 1) * self.block)]
        logical = [
            local if a == self.axis else (at[a] if a < len(at) else 0) for a in self.remaining
        ]
        starts = [jnp.asarray(logical[p], jnp.int32) for p in self.piece_order]
        if conds:  # the old row wherever this point is not in this piece
            hit = functools.reduce(jnp.logical_and, conds)
            update = jnp.where(
                hit,
                update,
                lax.dynamic_slice(piece, starts, update.shape, allow_negative_indices=False),
            )
        return lax.dynamic_update_slice(
            piece, update.astype(piece.dtype), starts, allow_negative_indices=False
        )


def constant(value: Any) -> int | None:
    """``value`` as a Python int when it is known while tracing (not a tracer), else None."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
