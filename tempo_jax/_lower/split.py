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
            update = jnp.where(hit, update, lax.dynamic_slice(piece, starts, update.shape))
        return lax.dynamic_update_slice(piece, update.astype(piece.dtype), starts)


def constant(value: Any) -> int | None:
    """``value`` as a Python int when it is known while tracing (not a tracer), else None."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
