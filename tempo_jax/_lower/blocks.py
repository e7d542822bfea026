"""Independent points of an op over growing ranges, computed at once: query blocks.

An op reading a growing range (``attend(q[b, t], k[b, 0:t+1], v[b, 0:t+1])``) has a shape that
varies over its domain, so no pass vectorises its dims and the schedule is a loop nest
``for b: for t: S[b, t]`` around it. When that nest holds the op alone and the op does not
read its own values, the iterations are independent: :func:`plan_nests` records such a nest
as a :class:`Nest`, and :func:`run_nest` computes all its points at once, without the loops:

- every dim the ranges do not grow along (``b``) is a ``jax.vmap`` axis;
- the dim they grow along (``t``, the *query* dim) runs in blocks of ``rows`` queries, a
  ``fori_loop`` over the blocks; each block is one ``jax.vmap`` over its queries of the tiled
  evaluation (:mod:`.tiling`) with the tile range taken over the whole block: from the first
  tile holding a row of some query's range to the last. Tiles past every query's range are
  never visited (block-causal: the tiles above the diagonal are skipped), a tile is read once
  per block and shared by its queries, and each query masks the rows outside its own range.

This is flash attention derived from the range expressions, for any payload the tiler takes
(a map-then-reduce over the range, online softmax included). The last block starts at
``N - rows`` (it overlaps the one before: the same values are written twice), so no query is
padded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax import lax

from .._ir.expr import Const, Slice, Symbol, dims_of, symbols_of
from .._ir.program import Program
from .._schedule.tree import Exec, Loop, Node, walk

if TYPE_CHECKING:
    from .execute import TreeLowering


@dataclasses.dataclass(frozen=True)
class Nest:
    """A loop nest around one op whose points are independent (module docstring).

    ``loops`` are the nest's loops, outermost first; ``exec`` the op's execution at the
    nest's variables; ``query`` the op's dim its ranges grow along (None: none in the nest),
    run in blocks of ``rows``.
    """

    loops: tuple[Loop, ...]
    exec: Exec
    query: Symbol | None
    rows: int


def plan_nests(
    program: Program,
    tree: Node,
    tile_size: Callable[[int], int | None],
    own_buffers: Callable[[int], bool],
    sizes: dict[Symbol, int],
) -> dict[Loop, Nest]:
    """The loop nests of ``tree`` to compute at once, by their outermost loop.

    ``tile_size(op id)`` is the op's tile size when it is taken in tiles (else None): the
    queries run in blocks of as many rows;
    ``own_buffers(op id)`` whether its outputs are full buffers in domain order, written
    nowhere else; ``sizes`` the static bounds (a dynamic bound is not one).
    """
    found: dict[Loop, Nest] = {}
    inner: set[int] = set()  # loops already inside a found nest
    for node in walk(tree):
        if not isinstance(node, Loop) or id(node) in inner:
            continue
        nest = _nest(program, node, tile_size, own_buffers, sizes)
        if nest is not None:
            found[node] = nest
            inner.update(id(loop) for loop in nest.loops)
    return found


def _nest(
    program: Program,
    top: Loop,
    tile_size: Callable[[int], int | None],
    own_buffers: Callable[[int], bool],
    sizes: dict[Symbol, int],
) -> Nest | None:
    loops: list[Loop] = []
    node: Node = top
    while isinstance(node, Loop):
        loops.append(node)
        node = node.body
    if not isinstance(node, Exec):
        return None
    op = program.op(node.op)
    block = tile_size(op.id)
    if op.kind != "apply" or block is None or not own_buffers(op.id):
        return None
    if any(edge.src == op.id for edge in op.inputs) or (
        program.stop is not None and program.stop.edge.src == op.id
    ):
        return None
    dims = {loop.var: loop for loop in loops}
    if len(dims) != len(op.domain) or any(x not in dims for x in node.point):
        return None  # every coordinate of the op is one loop of the nest, as is
    if len(set(node.point)) != len(node.point):
        return None
    for loop, dim in ((dims[x], d) for x, d in zip(node.point, op.domain, strict=True)):
        if loop.start != Const(0) or loop.stop != dim.bound or dim.bound not in sizes:
            return None
    mine = set(op.domain)
    grows = set()
    for edge in op.inputs:
        for item in edge.index:
            if isinstance(item, Slice) and dims_of(item.size):
                grows |= symbols_of(item.start) | symbols_of(item.stop)
    query = grows & mine
    if len(query) > 1:
        return None
    return Nest(tuple(loops), node, next(iter(query), None), block)


def run_nest(lowering: TreeLowering, nest: Nest, env: dict, buffers: dict) -> dict:
    """Every point of ``nest``'s op, computed at once (module docstring); its buffers
    written."""
    op = lowering.program.op(nest.exec.op)
    keys = [(op.id, k) for k in range(len(op.outputs))]
    extent = {d: lowering.bounds[d.bound] for d in op.domain}
    query = nest.query
    rows = min(nest.rows, extent[query]) if query is not None else 0

    def points(first: Any) -> tuple[Any, ...]:
        """The op's outputs at every point of the nest (queries ``first .. first+rows-1``)."""
        coords = {
            d: (first + jnp.arange(rows, dtype=jnp.int32))
            if d == query
            else jnp.arange(extent[d], dtype=jnp.int32)
            for d in op.domain
        }
        span = _span(lowering, op, nest, coords, env) if query is not None else None
        fast = _grid(lambda *point: _point(lowering, nest, env, buffers, point, span), coords, op)
        if span is None:
            return fast
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in fast]))
        return lax.cond(
            finite, lambda: fast, lambda: _one_by_one(lowering, nest, env, buffers, coords)
        )

    def write(carried: dict, first: Any) -> dict:
        carried = dict(carried)
        for (src, k), value in zip(keys, points(first), strict=True):
            buf = carried[(src, k)]
            starts = [first if d == query else jnp.int32(0) for d in op.domain]
            starts += [jnp.int32(0)] * (buf.ndim - len(starts))
            carried[(src, k)] = lax.dynamic_update_slice(buf, value.astype(buf.dtype), starts)
        return carried

    own = {key: buffers[key] for key in keys}
    if query is None:
        own = write(own, jnp.int32(0))
    else:
        total = extent[query]
        count = -(-total // rows)
        own = lax.fori_loop(
            0, count, lambda j, c: write(c, jnp.minimum(j * rows, total - rows)), own
        )
    return {**buffers, **own}


def _point(
    lowering: TreeLowering, nest: Nest, env: dict, buffers: dict, point: tuple, span: Any
) -> tuple[Any, ...]:
    """The op's outputs at one point (its own tiles, or the block's ``span``)."""
    op = lowering.program.op(nest.exec.op)
    op_env = {**lowering.runtime, **env, **dict(zip(op.domain, point, strict=True))}
    values = lowering._tiled(nest.exec, op, op_env, buffers, {}, span)
    if values is None:
        values = lowering.compute(op, op_env, lowering._inputs(nest.exec, op, op_env, buffers, {}))
    return tuple(values)


def _grid(fn: Callable[..., Any], coords: dict, op: Any) -> tuple[Any, ...]:
    """``fn`` at every point of the grid of ``coords`` (one vector per dim), in domain order."""
    rank = len(op.domain)
    for axis in reversed(range(rank)):
        fn = jax.vmap(fn, in_axes=tuple(0 if a == axis else None for a in range(rank)))
    return fn(*(coords[d] for d in op.domain))


def _one_by_one(
    lowering: TreeLowering, nest: Nest, env: dict, buffers: dict, coords: dict
) -> tuple[Any, ...]:
    """The block point by point, each over its own tiles with the sequential tiler's checks:
    the exact values where the block's shared tiles gave a value that is not finite (an inf or
    a nan in a row outside some point's range, times zero)."""
    op = lowering.program.op(nest.exec.op)
    grids = jnp.meshgrid(*(coords[d] for d in op.domain), indexing="ij")
    shape = grids[0].shape
    flat = tuple(g.reshape(-1) for g in grids)
    values = lax.map(lambda point: _point(lowering, nest, env, buffers, point, None), flat)
    return tuple(v.reshape(shape + v.shape[1:]) for v in values)


def _span(lowering: TreeLowering, op: Any, nest: Nest, coords: dict, env: dict) -> tuple[Any, Any]:
    """The tiles holding a row of some query's range, over the block's queries."""
    query = nest.query
    assert query is not None
    ranges = lowering._ranges(op)
    assert ranges
    item = next(iter(ranges.values()))[1]
    at = {**lowering.runtime, **env, query: coords[query]}
    start = jnp.asarray(item.start.evaluate(at), jnp.int32)
    stop = jnp.asarray(item.stop.evaluate(at), jnp.int32)
    shape = lowering._tile_shape(op)
    assert shape is not None
    block = shape[1]
    return jnp.min(start) // block, (jnp.max(stop) + block - 1) // block
