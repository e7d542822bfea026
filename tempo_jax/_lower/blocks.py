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

from .._ir.expr import Const, Slice, Symbol, dims_of, substitute, symbols_of
from .._ir.program import Op, Program
from .._ir.simplify import simplify
from .._schedule.tree import LOOP_SCOPE, Exec, Loop, Node, Sequence, walk
from .masking import NotAligned, when_finite
from .reading import LANE, ROWS

if TYPE_CHECKING:
    from .execute import TreeLowering


@dataclasses.dataclass(frozen=True)
class Nest:
    """A loop nest around ops whose points are independent (module docstring).

    ``loops`` are the nest's loops, outermost first; ``execs`` the ops' executions at the
    nest's variables, in order; ``query`` the loop variable the ranges grow along (None: none
    in the nest), run in blocks of ``rows``; ``local`` the reads ``(id(exec), input)`` of a
    value computed in the nest at the same point, taken from the point's own computation.
    """

    loops: tuple[Loop, ...]
    execs: tuple[Exec, ...]
    query: Symbol | None
    rows: int
    local: frozenset[tuple[int, int]] = frozenset()
    # per exec, its point with every nest loop's item as the loop's variable standing for the
    # dim's value (an exec at ``t - T`` in ``for t in T..2T-1`` computes dim value ``t - T``)
    points: tuple[tuple[Any, ...], ...] = ()
    # per loop, the values of the dim it stands for: (first value, an expression; count). A
    # loop may cover part of the dim (``for u in 0..min(S, U)-1``: a cache's prompt rows)
    spans: tuple[tuple[Any, int], ...] = ()

    def point(self, ex: Exec) -> tuple[Any, ...]:
        return self.points[self.execs.index(ex)] if self.points else ex.point


def plan_nests(
    program: Program,
    tree: Node,
    tile_size: Callable[[int], int | None],
    stored: Callable[[int], bool | None],
    sizes: dict[Symbol, int],
    dropped: Callable[[int], frozenset[int]] = lambda op_id: frozenset(),
    refused: frozenset[int] = frozenset(),
) -> dict[Loop, Nest]:
    """The loop nests of ``tree`` to compute at once, by their outermost loop; none whose
    outermost loop's ``id`` is in ``refused`` (a nest inside it may still run at once).

    ``tile_size(op id)`` is the op's tile size when it is taken in tiles (else None): the
    queries run in blocks of as many rows; ``stored(op id)`` True when the op's outputs are
    full buffers in domain order written only by its own points, False when they are not
    stored at all (read at the point that computes them only), None otherwise; ``sizes`` the
    static bounds (a dynamic bound is not one); ``dropped(op id)`` the domain positions its
    buffers leave out (scoped to the current iteration of enclosing loops).
    """
    found: dict[Loop, Nest] = {}
    inner: set[int] = set()  # loops already inside a found nest
    for node in walk(tree):
        if not isinstance(node, Loop) or id(node) in inner or id(node) in refused:
            continue
        nest = _nest(program, node, tile_size, stored, sizes, dropped)
        if nest is not None:
            found[node] = nest
            inner.update(id(loop) for loop in nest.loops)
    return found


def _nest(
    program: Program,
    top: Loop,
    tile_size: Callable[[int], int | None],
    stored: Callable[[int], bool | None],
    sizes: dict[Symbol, int],
    dropped: Callable[[int], frozenset[int]],
) -> Nest | None:
    loops: list[Loop] = []
    node: Node = top
    while isinstance(node, Loop):
        loops.append(node)
        node = node.body
    if isinstance(node, Exec):
        execs: tuple[Exec, ...] = (node,)
    elif isinstance(node, Sequence) and all(isinstance(c, Exec) for c in node.children):
        execs = tuple(c for c in node.children if isinstance(c, Exec))
    else:
        return None
    dims = {loop.var: loop for loop in loops}
    at: dict[int, Exec] = {}
    blocks = []
    query: set[Symbol] = set()
    local: set[tuple[int, int]] = set()
    nest_ops = {ex.op: ex for ex in execs}
    points: dict[int, tuple[Any, ...]] = {}  # op -> its point, nest coordinates normalised
    spans: dict[Symbol, tuple[Any, int]] = {}  # nest variable -> (first value, count)
    for ex in execs:
        op = program.op(ex.op)
        if op.kind not in ("apply", "merge") or stored(op.id) is None:
            return None
        if any(edge.src == op.id for edge in op.inputs) or (
            program.stop is not None and program.stop.edge.src == op.id
        ):
            return None
        # every loop of the nest is a coordinate of the op (the loop's variable less its start:
        # a loop over the dim's whole range); its other coordinates are the variables of
        # enclosing loops (fixed for the nest)
        point = _normal(ex.point, op.domain, dims, sizes, spans)
        if point is None:
            return None
        if any(point[n] in dims for n in dropped(op.id)):
            return None  # a buffer of the latest point only: written point by point
        points[op.id] = point
        to_loop = dict(zip(op.domain, point, strict=True))
        for k, edge in enumerate(op.inputs):
            if edge.src in nest_ops and edge.src not in points:  # computed later in the nest
                return None
            if edge.src in nest_ops:  # computed in the nest
                kind = _read_kind(edge.index, to_loop, points[edge.src], dims)
                if kind == "here" and edge.src in at:  # at this very point, computed before
                    local.add((id(ex), k))
                elif kind != "earlier" or not stored(edge.src):
                    return None  # another point of this nest: a dependence inside it
            for item in edge.index:
                if isinstance(item, Slice) and dims_of(item.size):
                    query |= {
                        to_loop[d]
                        for d in symbols_of(item.start) | symbols_of(item.stop)
                        if to_loop.get(d) in dims
                    }
        block = tile_size(op.id)
        if block is not None:
            blocks.append(block)
        at[op.id] = ex
    if len(query) > 1:
        return None
    if not blocks:  # ranges no longer than a tile: every point at once, each its whole range
        query = set()
    for ex in execs:  # a value read outside the nest is a full buffer the nest writes
        if not stored(ex.op) and any(
            edge.src == ex.op for op in program.ops if op.id not in at for edge in op.inputs
        ):
            return None
    rows = min(blocks) if blocks else 0
    normal = tuple(points[ex.op] for ex in execs)
    first = tuple(spans[loop.var] for loop in loops)
    return Nest(tuple(loops), execs, next(iter(query), None), rows, frozenset(local), normal, first)


def _normal(
    point: tuple, domain: tuple, dims: dict, sizes: dict[Symbol, int], spans: dict
) -> tuple[Any, ...] | None:
    """An exec's point with each item ``x + c`` of a nest loop ``x`` as ``x`` standing for the
    dim's value, and ``spans[x]`` set to the values it takes: ``(first, count)``, ``first`` an
    expression (``start + c``) and ``count`` the loop's static trip count. Other items must be
    enclosing loops' variables. None when it is not such a point."""
    out: list[Any] = []
    for item in point:
        found = [x for x in symbols_of(item) if x in dims]
        if not found:
            if not _outer(item):
                return None
            out.append(item)
            continue
        if len(found) != 1:
            return None
        x, loop = found[0], dims[found[0]]
        offset = simplify(item - x)
        if symbols_of(offset) & set(dims):
            return None
        count = _static(simplify(loop.stop - loop.start), sizes)
        if count is None or count < 1:
            return None
        span = (simplify(loop.start + offset), count)
        if spans.setdefault(x, span) != span:
            return None
        out.append(x)
    if sum(x in dims for x in out) != len(dims) or len(set(out)) != len(out):
        return None
    return tuple(out)


def _static(size: Any, sizes: dict[Symbol, int]) -> int | None:
    """``size`` evaluated at the static bounds ``sizes`` (None when it needs another value)."""
    if not symbols_of(size) <= set(sizes):
        return None
    return int(size.evaluate(dict(sizes)))


def _read_kind(index: tuple, to_loop: dict, point: tuple, dims: dict) -> str:
    """A read of a nest op's value at ``index`` (over the reader's domain, ``to_loop`` its dims'
    loop variables), the producer computing its point ``point``: ``"here"`` (this very point),
    ``"earlier"`` (an enclosing loop's earlier iteration: a buffer the nest does not write
    now), or ``"other"``."""
    read = tuple(
        simplify(substitute(i, to_loop)) if not isinstance(i, Slice) else None for i in index
    )
    if read == tuple(point):
        return "here"
    for item, x in zip(read, point, strict=True):
        if item is None or x in dims:
            continue
        shift = simplify(x - item)
        if isinstance(shift, Const) and shift.value > 0:
            return "earlier"
    return "other"


def run_nest(lowering: TreeLowering, nest: Nest, env: dict, buffers: dict) -> dict:
    """Every point of ``nest``'s ops, computed at once (module docstring); their buffers
    written."""
    program = lowering.program
    ops = [program.op(ex.op) for ex in nest.execs]
    # the nest's points read at once: what they read from host memory comes back first
    reading = lowering.fetched(buffers, [(e.src, e.out) for op in ops for e in op.inputs])
    written = [op for op in ops if lowering.layout.stored(op.id)]
    variables = [loop.var for loop in nest.loops]
    extent = {x: count for x, (_, count) in zip(variables, nest.spans, strict=True)}
    at = {**lowering.runtime, **env}
    lows = {  # a Python int when known while tracing (the pieces of a split are static)
        x: lowering.evaluate.index(lo, at) for x, (lo, _) in zip(variables, nest.spans, strict=True)
    }
    query = nest.query
    rows = min(nest.rows, extent[query]) if query is not None else 0
    lanes = _batched(lowering, nest, ops, reading)

    def points(first: Any) -> list[Any]:
        """The written ops' outputs at every point of the nest (queries ``first ..``), each
        with the nest's loops leading, in loop order."""
        coords = {
            x: (first + jnp.arange(rows, dtype=jnp.int32))
            if x == query
            else lows[x] + jnp.arange(extent[x], dtype=jnp.int32)
            for x in variables
        }
        spans = _spans(lowering, nest, coords, env) if query is not None else {}
        cut = {
            key: (_lanes(lowering, key, reading, axes, lows, extent), axes)
            for key, axes in lanes.items()
        }
        fast = _grid(
            lambda p, own: _point(lowering, nest, env, {**reading, **own}, p, spans),
            coords,
            variables,
            cut,
        )
        return when_finite(
            fast[1],
            lambda: fast[0],
            lambda: _one_by_one(lowering, nest, env, reading, coords, variables, cut)[0],
        )

    def write(carried: dict, first: Any) -> dict:
        carried = dict(carried)
        values = iter(points(first))
        for ex, op in zip(nest.execs, ops, strict=True):
            if op not in written:
                continue
            # the nest's axes in domain order, one row at each enclosing loop's value (none
            # for an enclosing dim the buffer drops: it holds this iteration's values only)
            order = [variables.index(x) for x in nest.point(ex) if x in variables]
            for k in range(len(op.outputs)):
                dropped = lowering.layout.plan.scoped.get((op.id, k), frozenset())
                kept = [(n, x) for n, x in enumerate(nest.point(ex)) if n not in dropped]
                outer = [pos for pos, (_, x) in enumerate(kept) if x not in variables]
                value = next(values)
                value = jnp.transpose(value, (*order, *range(len(order), value.ndim)))
                value = jnp.expand_dims(value, outer) if outer else value
                buf = carried[(op.id, k)]
                split = lowering.layout.splits.get((op.id, k))
                starts = [
                    first
                    if x == query
                    else (lows[x] if x in variables else jnp.asarray(env[x], jnp.int32))
                    for _, x in kept
                ]
                starts += [jnp.int32(0)] * (value.ndim - len(starts))
                if split is not None:  # one array per tile: the rows go to their tiles
                    carried[(op.id, k)] = split.write_block(buf, value, starts)
                    continue
                stored_as = lowering.layout.layouts.get((op.id, k))
                if stored_as is not None:  # the buffer's axis order
                    value = jnp.transpose(value, stored_as)
                    starts = [starts[a] for a in stored_as]
                value = lowering.placed((op.id, k), value.astype(buf.dtype))
                carried[(op.id, k)] = lax.dynamic_update_slice(
                    buf, value, starts, allow_negative_indices=False
                )
        return carried

    keys = [(op.id, k) for op in written for k in range(len(op.outputs))]
    own = {key: buffers[key] for key in keys}
    if query is None:
        own = write(own, jnp.int32(0))
    else:
        total = extent[query]
        count = -(-total // rows)
        low = lows[query]
        own = lax.fori_loop(
            0, count, lambda j, c: write(c, low + jnp.minimum(j * rows, total - rows)), own
        )
    return {**buffers, **own}


def _point(
    lowering: TreeLowering, nest: Nest, env: dict, buffers: dict, point: tuple, spans: Any
) -> tuple[list[Any], list[Any]]:
    """The nest's ops at one point (loop variable values, in loop order), each over its own
    tiles or the block's span: (the written ops' outputs, the outputs to check). ``spans``
    None: every op checked as it goes (the exact values); otherwise the block's tiled ops run
    over their span of the block and the untiled ones over padding filled in one operand of a
    product only (:func:`.masking.masked_call`), both to be checked by the caller."""
    at = dict(zip((loop.var for loop in nest.loops), point, strict=True))
    local: dict[int, tuple[Any, ...]] = {}
    written, checked = [], []
    for ex in nest.execs:
        op = lowering.program.op(ex.op)
        op_env = {**lowering.runtime, **env}
        op_env.update(
            (d, at.get(x, env.get(x))) for d, x in zip(op.domain, nest.point(ex), strict=True)
        )
        span = None if spans is None else spans.get(op.id)
        with jax.named_scope(scope(op)):
            values = lowering._tiled(ex, op, op_env, buffers, local, span)
            if values is None:
                fast = (
                    spans is not None
                    and op.kind == "apply"
                    and op.payload is not None
                    and not op.payload.pads_ok
                    and any(lowering._pads(op, op_env)[0])
                )
                values = _padded(lowering, ex, op, op_env, buffers, local, fast)
                if fast:
                    checked.extend(values)
            elif span is not None:
                checked.extend(values)
        local[op.id] = tuple(values)
        if lowering.layout.stored(op.id):
            written.extend(values)
    return written, checked


def _padded(
    lowering: TreeLowering,
    ex: Exec,
    op: Op,
    env: dict,
    buffers: dict,
    local: dict,
    fast: bool,
) -> tuple[Any, ...]:
    """``op`` at one point over the padded rows of its ranges. ``fast`` (a point of a block,
    checked by the caller): its ranges read where they sit in their buffers (every point
    reads the same rows: no gathered copy per point) and one operand of a product masked;
    a payload that needs its rows from the first is read gathered."""
    if fast:
        windows: dict[str, Any] = {}
        inputs = lowering._inputs(ex, op, env, buffers, local, windows=windows)
        try:
            return lowering.compute(op, env, inputs, unchecked=True, windows=windows)
        except NotAligned:
            pass
    inputs = lowering._inputs(ex, op, env, buffers, local)
    return lowering.compute(op, env, inputs, unchecked=fast)


def scope(op: Op) -> str:
    """The name scope of ``op``'s computation: ``S<id>:<name>`` (as in the schedule), so that
    HLO metadata and profiles name the op."""
    return f"S{op.id}:{op.name}"


def _outer(x: Any) -> bool:
    """Whether ``x`` is a loop variable (of a loop enclosing the nest)."""
    return isinstance(x, Symbol) and x.program == LOOP_SCOPE


def _grid(fn: Callable[..., Any], coords: dict, variables: list, rows: dict | None = None) -> Any:
    """``fn(point, buffers)`` at every point of the grid of ``coords`` (one vector per loop
    variable). ``rows``: per buffer key (an input's: ``(id, 0, ROWS)``, which
    ``TreeLowering.buffer`` takes before the whole input), the buffer cut to the grid's rows
    and the axis each variable walks in it (:func:`_batched`); each lane gets its own rows,
    without the walked axes (``(id, out, LANE)`` lists them for :func:`.reading.read`)."""
    rank = len(variables)
    given = rows or {}
    keys = sorted(given)

    def lane(*args: Any) -> Any:
        own = {}
        for key, array in zip(keys, args[rank:], strict=True):
            own[key] = array
            own[(key[0], key[1], LANE)] = frozenset(given[key][1].values())
        return fn(args[:rank], own)

    f = lane
    for level in reversed(range(rank)):
        x = variables[level]
        walked = []
        for key in keys:
            axes = given[key][1]
            outer = sum(1 for y in variables[:level] if y in axes and axes[y] < axes.get(x, -1))
            walked.append(axes[x] - outer if x in axes else None)
        point = tuple(0 if a == level else None for a in range(rank))
        f = jax.vmap(f, in_axes=(*point, *walked))
    return f(*(coords[x] for x in variables), *(given[key][0] for key in keys))


def _batched(
    lowering: TreeLowering, nest: Nest, ops: list[Op], reading: dict
) -> dict[tuple, dict[Symbol, int]]:
    """Buffers (and inputs) that the nest reads only at the point of some of its vmapped
    loops, each along an axis of its own: per buffer key, the axis each such loop walks.

    Handed to the vmaps cut along those axes, they are a batch axis of the computation, not
    rows gathered by the loops' coordinates: XLA's partitioner keeps a buffer split over
    devices along a sharded dim split (a gather by coordinates makes it all-gather the
    buffer). Inside a lane the axis is gone: the lane holds the row its reads take. Buffers
    kept in other forms (tiles, host memory, a layout, one captured value) are read as
    before."""
    layout = lowering.layout
    found: dict[tuple, dict[Symbol, int]] = {}
    refused: set[tuple] = set()
    vmapped = {loop.var for loop in nest.loops} - {nest.query}
    for ex, op in zip(nest.execs, ops, strict=True):
        point = nest.point(ex)
        for k, edge in enumerate(op.inputs):
            pair = (edge.src, edge.out)
            is_input = edge.src in lowering.inputs
            key = (*pair, ROWS) if is_input else pair
            if (id(ex), k) in nest.local or key in refused:
                continue
            if (
                pair in layout.held
                or pair in layout.cycles
                or pair in layout.splits
                or (pair in layout.layouts and not is_input)
                or pair in layout.memory_kinds
                or edge.src in lowering.unstacked
                or (not is_input and pair not in reading)
            ):
                refused.add(key)
                continue
            axes: dict[Symbol, int] | None = {}
            for axis, item in enumerate(layout.stored_index(edge)):
                x = point[op.domain.index(item)] if item in op.domain else None
                if x in vmapped and x not in axes:
                    axes[x] = axis
                elif any(y in vmapped for y in _loop_vars(item, op, point)):
                    axes = None  # a vmapped loop indexes it otherwise too: gathered
                    break
            if not axes or found.get(key, axes) != axes:
                refused.add(key)
                found.pop(key, None)
                continue
            found[key] = axes
    return found


def _loop_vars(item: Any, op: Op, point: tuple[Any, ...]) -> set[Any]:
    """The nest's loop variables an index item depends on (through the reader's dims)."""
    dims = (
        symbols_of(item.start) | symbols_of(item.stop)
        if isinstance(item, Slice)
        else symbols_of(item)
    )
    return {point[op.domain.index(d)] for d in dims if d in op.domain}


def _lanes(
    lowering: TreeLowering, key: tuple, reading: dict, axes: dict, lows: dict, extent: dict
) -> Any:
    """Buffer ``key`` cut to the rows of the nest's loops along the axes they walk."""
    array = lowering.inputs[key[0]] if len(key) == 3 else reading[key]
    for x, axis in axes.items():
        if not (isinstance(lows[x], int) and lows[x] == 0 and extent[x] == array.shape[axis]):
            array = lax.dynamic_slice_in_dim(array, lows[x], extent[x], axis)
    return array


def _one_by_one(
    lowering: TreeLowering,
    nest: Nest,
    env: dict,
    buffers: dict,
    coords: dict,
    variables: list,
    cut: dict,
) -> Any:
    """The block's exact values, each point over its own tiles with the sequential tiler's
    checks, where the block's shared tiles gave a value that is not finite (an inf or a nan
    in a row outside some point's range, times zero): the points of the loops a range grows
    along one after another (``lax.map``), those of the other loops at once, over the lanes'
    own rows (``cut``, as the shared path reads them: on a mesh, each device's rows, nothing
    gathered)."""

    def exact(grid: dict, lanes: dict) -> Any:
        return _grid(
            lambda p, own: _point(lowering, nest, env, {**buffers, **own}, p, None),
            grid,
            variables,
            lanes,
        )

    mapped = _growing(lowering, nest, variables)
    if not mapped:
        return exact(coords, cut)
    sizes = [coords[x].shape[0] for x in mapped]
    grids = jnp.meshgrid(*(jnp.arange(n) for n in sizes), indexing="ij")
    flat = tuple(g.reshape(-1) for g in grids)

    def one(at: tuple) -> Any:  # the point of the mapped loops at positions ``at``
        picked = dict(zip(mapped, at, strict=True))
        grid = {
            x: lax.dynamic_slice_in_dim(coords[x], picked[x], 1) if x in picked else c
            for x, c in coords.items()
        }
        lanes = {}
        for key, (array, axes) in cut.items():
            for x, axis in axes.items():
                if x in picked:  # the lane's row of that loop
                    array = lax.dynamic_slice_in_dim(array, picked[x], 1, axis)
            lanes[key] = (array, axes)
        return exact(grid, lanes)

    values = lax.map(one, flat)
    positions = [variables.index(x) for x in mapped]

    def place(v: Any) -> Any:  # (points, loops with 1 for the mapped ones, ...) -> loops, ...
        v = jnp.squeeze(v, [p + 1 for p in positions])
        v = v.reshape(*sizes, *v.shape[1:])
        return jnp.moveaxis(v, list(range(len(mapped))), positions)

    return jax.tree.map(place, values)


def _growing(lowering: TreeLowering, nest: Nest, variables: list) -> list:
    """The loop variables of ``variables`` that a range read by the nest grows along (its
    queries), in order: vmapped, their points would each hold their own copy of the range."""
    grows = set()
    for ex in nest.execs:
        op = lowering.program.op(ex.op)
        var = dict(zip(op.domain, nest.point(ex), strict=True))
        for edge in op.inputs:
            for item in edge.index:
                if isinstance(item, Slice) and not lowering.layout.is_static(item.size):
                    grows |= {var[d] for d in symbols_of(item.size) if d in var}
    return [x for x in variables if x in grows or x == nest.query]


def _spans(lowering: TreeLowering, nest: Nest, coords: dict, env: dict) -> dict[int, Any]:
    """Per tiled op of the nest: the tiles holding a row of some query's range."""
    spans = {}
    for ex in nest.execs:
        op = lowering.program.op(ex.op)
        if lowering.layout.tile_shape(op) is None:
            continue
        at = {d: env[x] for d, x in zip(op.domain, nest.point(ex), strict=True) if x in env}
        query = next(d for d, x in zip(op.domain, nest.point(ex), strict=True) if x == nest.query)
        spans[op.id] = _span(lowering, op, query, coords[nest.query], {**env, **at})
    return spans


def _span(lowering: TreeLowering, op: Any, query: Symbol, at_query: Any, env: dict) -> Any:
    """The tiles holding a row of some query's range, over the block's queries."""
    ranges = lowering.layout.ranges(op)
    assert ranges
    item = next(iter(ranges.values()))[1]
    at = {**lowering.runtime, **env, query: at_query}
    start = jnp.asarray(item.start.evaluate(at), jnp.int32)
    stop = jnp.asarray(item.stop.evaluate(at), jnp.int32)
    shape = lowering.layout.tile_shape(op)
    assert shape is not None
    block = shape[1]
    return jnp.min(start) // block, (jnp.max(stop) + block - 1) // block
