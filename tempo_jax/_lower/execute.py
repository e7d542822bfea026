"""Lowering a schedule tree to JAX: loops, guards and op executions over carried buffers.

Each value is stored as the storage plan (:mod:`.storage`) says: passed on within an
iteration, kept in a ring carried by its loop, captured (a one-point output), or written
with ``lax.dynamic_update_slice`` into a *full* buffer ``(*domain bounds, *shape)`` that the
loops carry. A loop becomes ``lax.fori_loop`` (a ``scan`` when its trip count is static),
split first where guards or merge branches on its variable change (:mod:`.peeling`); a
remaining guard becomes ``lax.cond``; a merge op selects its first branch whose condition
holds.

A buffer every reader takes in tiles is stored split, one array per tile (and per index of an
unrolled dim), so that each tile is read as stored (:mod:`.split`); stacked inputs over an
unrolled dim are sliced once per index before the loops. A buffer read only through windows,
in tiles, inside the loop writing it keeps its last rows only. Every such decision (cycles,
layouts, splits, nests, tiles) is the buffer plan's (:mod:`.buffer_plan`): this module only
executes it.

A spatial axis of symbolic size (a growing range such as ``x[0:t+1]``, or a range as long as a
dynamic bound) is stored padded to the largest size it takes over the domain; payloads reading
it run through :func:`masking.masked_call`, which keeps the padding out of every reduction.

Points scheduled but never demanded (the body of ``x[t+1] = f(x[t], y[t+1])`` at the last
step) read clamped indices and write values nobody reads; the compile-time read check
(``_schedule.domains``) guarantees every *demanded* point is defined.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as Sequence_
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._ir.expr import Expr, Slice, Symbol
from .._ir.program import Edge, Op, Output, Program, describe_op
from .._schedule.tree import Alloc, Exec, Free, Guard, Loop, Node, Sequence, execs
from .blocks import run_nest, scope
from .buffer_plan import BufferPlan
from .evaluate import Evaluator
from .loops import fori, stoppable
from .masking import Pads, masked_call
from .merges import merge_value
from .peeling import loop_pieces, same_point
from .prefetch import PREFETCH, Prefetch, fetched, in_piece
from .reading import ROWS, capture_key
from .reading import read as read_value
from .sinks import SinkErrors
from .stopping import stop_loop
from .tiling import Tiles, tiled_call

Buffers = dict[tuple, jax.Array]  # (op id, output) -> full buffer; (op, output, RING) -> window
RING = 1  # third key element of a window ring carried by a loop
ACCUMULATE = 3  # third key element of the running sum of an accumulated value
# third key element of a ring of depth 1 (a value read at the previous iteration only): the
# value itself, not a stack of one, so the loop carries it as computed. XLA copies a
# loop-carried stack of one on every iteration where its old value has two readers (an
# optimiser's moments: the update and the new moment)
LAST = 4
STOPPED = (-1, 0)  # whether the stop condition of `p.stop_when` has held
RAN = (-2, 0)  # how many points of the stopped dim have run
Env = Mapping[Symbol, Any]  # symbol -> Python int (bounds) or traced int32 (dims, loop vars)
PaddedSize = Callable[[Expr, tuple[Symbol, ...]], int]  # largest value of a size over a box


class TreeLowering:
    """Runs a schedule tree inside one JAX trace, for fixed bounds and input arrays."""

    def __init__(
        self,
        program: Program,
        bounds: dict[Symbol, int],
        inputs: dict[str, Any],
        tree: Node,
        runtime: Env | None = None,
        padded: PaddedSize | None = None,
        unroll: tuple[str, ...] = (),
        sink_errors: SinkErrors | None = None,
        memory_budget: int | None = None,
        offload: bool = True,
        exact_masks: bool = False,
        covering: frozenset[int] = frozenset(),
    ):
        self.program = program
        # masked tiles computed exactly (both operands of a product masked), not fast with a
        # finiteness check: the check is one predicate over the whole value, which on a mesh
        # is an all-reduce per tile (:class:`.sharding.ShardPlan` decides)
        self.exact_masks = exact_masks
        self.sink_errors = sink_errors or SinkErrors(program)  # what sink functions raised
        self.unroll = frozenset(unroll)  # dims whose loops run unrolled (static trip counts)
        self.bounds = bounds  # static: sizes (a dynamic bound at its max)
        self.padded = padded or (lambda size, dims: size.evaluate(bounds))
        self.runtime = runtime or bounds  # values: a dynamic bound as a traced scalar
        self.inputs = {op.id: inputs[op.name] for op in program.ops if op.kind == "input"}
        # an input over an unrolled dim (stacked layer weights) is read at constant indices:
        # each index's slice is taken once here, outside every loop, not per iteration
        self.unstacked: dict[int, list[jax.Array]] = {}
        for op in program.ops:
            if op.kind == "input" and op.domain and op.domain[0].name in self.unroll:
                array = self.inputs[op.id]
                self.unstacked[op.id] = [array[i] for i in range(array.shape[0])]
        shapes = {k: tuple(v.shape) for k, v in self.inputs.items()}
        # every decision on how values are stored: the lowering executes it
        self.layout = BufferPlan(
            program,
            bounds,
            shapes,
            tree,
            self.runtime,
            self.padded,
            self.unroll,
            memory_budget,
            offload,
            covering,
        )
        # merge op -> its one active branch (-1: none); captured output name -> 0/1
        self.branches: dict[int | str, int] = {}
        self.stop_loop = stop_loop(program, tree)  # the loop `p.stop_when` ends, or None
        self.evaluate = Evaluator()  # each index expression computed once per trace
        self.covering = covering  # merges a branch of which holds at every point

    # -- buffers ---------------------------------------------------------------------------------
    def allocate(self) -> Buffers:
        """A zero-filled full buffer per output of every computed op."""
        buffers: Buffers = {}
        for op in self.program.ops:
            if op.kind == "input":
                continue
            for k in range(len(op.outputs)):
                if (op.id, k) not in self.layout.plan.buffered or (op.id, k) in self.layout.placed:
                    continue  # point or window storage, or allocated by an Alloc node
                buffers[(op.id, k)] = self._zeros(op.id, k)
        for src, k in self.layout.plan.accumulated:
            spec = self.program.op(src).outputs[k]
            shape = self.layout.shape(spec, self.program.op(src).domain)
            buffers[(src, k, ACCUMULATE)] = jnp.zeros(shape, spec.dtype)
        if self.stop_loop is not None:
            (dim,) = self.program.stop.domain
            buffers[STOPPED] = jnp.bool_(False)
            buffers[RAN] = jnp.asarray(self.runtime[dim.bound], jnp.int32)
        captured = [o for o in self.program.outputs if o.name in self.layout.plan.captured]
        for out in captured + list(self.layout.held.values()):
            producer = self.program.op(out.edge.src)
            spec = producer.outputs[out.edge.out]
            buffers[capture_key(out)] = jnp.zeros(
                self.layout.shape(spec, producer.domain), spec.dtype
            )
        return buffers

    def _zeros(self, op_id: int, out: int) -> Any:
        """A new buffer of ``(op_id, out)``: zeros, or the input a merge starts the value
        from (``BufferPlan.seeds``)."""
        split = self.layout.splits.get((op_id, out))
        if split is not None:
            return split.zeros(self.program.op(op_id).outputs[out].dtype)
        whole = frozenset(range(len(self.program.op(op_id).domain)))
        seed = self._seed(op_id, out)
        if seed is not None and self.layout.plan.scoped.get((op_id, out)) == whole:  # latest
            return self.placed((op_id, out), seed)
        shape = self.layout.logical_shape(op_id, out)
        order = self.layout.layouts.get((op_id, out))
        if order is not None:
            shape = tuple(shape[a] for a in order)
        return self.placed(
            (op_id, out), jnp.zeros(shape, self.program.op(op_id).outputs[out].dtype)
        )

    def _seed(self, op_id: int, out: int) -> Any:
        """The input a merge starts the value ``(op_id, out)`` from (``BufferPlan.seeds``), in
        the value's dtype; None for a value started otherwise."""
        seed = self.layout.seeds.get((op_id, out))
        if seed is None:
            return None
        return jnp.asarray(self.inputs[seed[1].src], self.program.op(op_id).outputs[out].dtype)

    def fetched(self, buffers: Buffers, keys: Iterable[tuple[int, int]]) -> Buffers:
        """``buffers`` with those of ``keys`` the plan keeps in host memory brought back to the
        device, for readers that take many points at once (a vmapped read gathers from its
        buffer, which must be on the device)."""
        moved = {
            key: jax.device_put(buffers[key], jax.memory.Space.Device)
            for key in keys
            if key in self.layout.memory_kinds and key in buffers
        }
        return {**buffers, **moved} if moved else buffers

    def placed(self, key: tuple[int, int], value: Any) -> Any:
        """``value`` (written into buffer ``key``) in the buffer's memory: host memory for a
        buffer the plan keeps there (``BufferPlan.memory_kinds``), else as it is."""
        if key in self.layout.memory_kinds:
            return jax.device_put(value, jax.memory.Space.Host)
        return value

    def buffer(self, edge: Edge, buffers: Buffers) -> jax.Array:
        if edge.src in self.inputs:  # the input, or its rows of one lane of a nest's vmap
            return buffers.get((edge.src, edge.out, ROWS), self.inputs[edge.src])
        return buffers[(edge.src, edge.out)]

    # -- the tree ------------------------------------------------------------------------------
    def run(self, node: Node, env: Env, buffers: Buffers) -> Buffers:
        """Execute ``node`` with the loop variables of ``env``; return the updated buffers."""
        if isinstance(node, Sequence):
            local: dict[int, tuple[Any, ...]] = {}  # values computed at this level's points
            for child in node.children:
                if isinstance(child, Exec):
                    buffers = self._exec(child, env, buffers, local)
                elif isinstance(child, Alloc):
                    buffers = {**buffers, (child.op, child.out): self._zeros(child.op, child.out)}
                elif isinstance(child, Free):
                    buffers = {k: v for k, v in buffers.items() if k != (child.op, child.out)}
                else:
                    buffers = self.run(child, env, buffers)
            return buffers
        if isinstance(node, Loop):
            nest = self.layout.nests.get(node)
            if nest is not None:
                return run_nest(self, nest, env, buffers)
            return self._loop(node, env, buffers)
        if isinstance(node, Guard):
            cond = self.evaluate(node.cond, env)
            if isinstance(cond, int | bool):
                return self.run(node.body, env, buffers) if cond else self._skip(node, buffers)
            return lax.cond(
                cond,
                lambda b: self.run(node.body, env, b),
                lambda b: self._skip(node, b),
                buffers,
            )
        if isinstance(node, Exec):
            return self._exec(node, env, buffers, {})
        raise TypeError(f"unknown schedule node {type(node).__name__}")

    def _skip(self, guard: Guard, buffers: Buffers) -> Buffers:
        """A guard whose condition is false: its execs' rings still shift, in padding."""
        buffers = dict(buffers)
        for ex in execs(guard.body):
            for k in range(len(self.program.op(ex.op).outputs)):
                ring = buffers.get((ex.op, k, RING))
                if ring is not None:
                    buffers[(ex.op, k, RING)] = _shift(ring, jnp.zeros_like(ring[0]))
                last = buffers.get((ex.op, k, LAST))
                if last is not None:
                    buffers[(ex.op, k, LAST)] = jnp.zeros_like(last)
        return buffers

    def _loop(self, node: Loop, env: Env, buffers: Buffers) -> Buffers:
        start, stop = node.start.evaluate(env), node.stop.evaluate(env)
        var = node.var

        rings = self.layout.plan.rings.get(node, {})
        carried = dict(buffers)
        for (op_id, out), depth in rings.items():  # the last `depth` values, newest first
            producer = self.program.op(op_id)
            shape = self.layout.shape(producer.outputs[out], producer.domain)
            dtype = producer.outputs[out].dtype
            seed = self._seed(op_id, out) if depth == 1 else None
            if seed is not None:  # the input a merge starts the value from
                carried[(op_id, out, LAST)] = seed
            elif depth == 1:
                carried[(op_id, out, LAST)] = jnp.zeros(shape, dtype)
            else:
                carried[(op_id, out, RING)] = jnp.zeros((depth, *shape), dtype)
        outer, fetches = self.branches, self.layout.prefetches.get(node, ())
        for lo, hi, piece, branches in loop_pieces(self, node, start, stop):
            peeled = isinstance(lo, int) and isinstance(hi, int) and hi - lo == 1
            # its reads from host memory, one iteration ahead (a single one: read where it is)
            ahead = () if peeled else in_piece(fetches, piece)
            first = hi - 1 if node.reverse else lo
            carried.update((f.key, fetched(self, f, env, carried, first)) for f in ahead)

            def body(
                k: Any,
                b: Buffers,
                lo: Any = lo,
                hi: Any = hi,
                piece: Node = piece,
                ahead: tuple[Prefetch, ...] = ahead,
            ) -> Buffers:
                value = lo + hi - 1 - k if node.reverse else k
                after = jnp.clip(value - 1 if node.reverse else value + 1, lo, hi - 1)
                b = self.run(piece, {**env, var: value}, b)
                return {**b, **{f.key: fetched(self, f, env, b, after) for f in ahead}}

            self.branches = {**outer, **branches}  # the body is traced inside fori_loop
            if node is self.stop_loop:
                carried = stoppable(body, lo, hi, carried, peeled, STOPPED)
            elif peeled:
                carried = body(lo, carried)  # a peeled iteration: no loop
            elif node.dim in self.unroll and isinstance(lo, int) and isinstance(hi, int):
                for k in range(lo, hi):  # each iteration traced with its index a constant
                    carried = body(k, carried)
            else:
                carried = fori(lo, hi, body, carried, node.trips)
        self.branches = outer
        for out in self.layout.from_ring.get(node, ()):  # the last iteration's value
            src, k, key = out.edge.src, out.edge.out, capture_key(out)
            last = carried.get((src, k, LAST))
            value = carried[(src, k, RING)][0] if last is None else last
            carried[key] = jnp.asarray(value, carried[key].dtype)
        mine = {(op_id, out, kind) for op_id, out in rings for kind in (RING, LAST)}
        mine |= {f.key for f in fetches}
        return {key: value for key, value in carried.items() if key not in mine}

    def _exec(
        self, node: Exec, env: Env, buffers: Buffers, local: dict[int, tuple[Any, ...]]
    ) -> Buffers:
        op = self.program.op(node.op)
        if op.kind == "input":
            return buffers
        with jax.named_scope(scope(op)):  # profiles and HLO metadata name the op
            return self._exec_op(op, node, env, buffers, local)

    def at_point(self, op: Op, node: Exec, env: Env) -> tuple[list[Any], Env]:
        """``node``'s point under the loop variables of ``env`` (a constant stays an int), and
        the environment its op runs in: the bounds, and its domain dims at that point."""
        point = [self.evaluate.index(e, env) for e in node.point]
        return point, {**self.runtime, **dict(zip(op.domain, point, strict=True))}

    def _exec_op(
        self, op: Op, node: Exec, env: Env, buffers: Buffers, local: dict[int, tuple[Any, ...]]
    ) -> Buffers:
        point, op_env = self.at_point(op, node, env)
        values = self._tiled(node, op, op_env, buffers, local)
        if values is None:
            values = self.compute(op, op_env, self._inputs(node, op, op_env, buffers, local))
        local[op.id] = tuple(values)
        buffers = dict(buffers)
        if op.payload is not None and op.payload.accumulates:
            for edge in op.inputs:  # a sum per iteration, read: the next one starts at zero
                acc = (edge.src, edge.out, ACCUMULATE)
                if (edge.src, edge.out) in self.layout.plan.reset and acc in buffers:
                    buffers[acc] = jnp.zeros_like(buffers[acc])
        stop = self.program.stop
        if stop is not None and op.id == stop.edge.src and STOPPED in buffers:
            now = jnp.asarray(values[stop.edge.out], bool) & ~buffers[STOPPED]
            buffers[RAN] = jnp.where(now, point[0] + 1, buffers[RAN])
            buffers[STOPPED] = buffers[STOPPED] | now
        for k, value in enumerate(values):
            for out in self.layout.captures.get((op.id, k), ()):
                key = capture_key(out)
                known = self.branches.get(out.name)  # resolved for this piece of the loop
                if known == 0 or out.name in self.layout.ring_taken:
                    continue
                new = jnp.asarray(value, buffers[key].dtype)
                if known is None:
                    at = {**self.runtime, **env}
                    here = self.evaluate(same_point(node.point, out.edge.index), at)
                    if isinstance(here, int) and not here:
                        continue  # never the captured point
                    if not isinstance(here, int):
                        new = jnp.where(here, new, buffers[key])
                buffers[key] = new
            summed = self.layout.plan.accumulated.get((op.id, k))
            if summed is not None:  # this point counts if the summed box holds it
                inside = _inside(summed, point, {**self.runtime, **env})
                acc = (op.id, k, ACCUMULATE)
                value_in = jnp.where(inside, jnp.asarray(value, buffers[acc].dtype), 0)
                buffers[acc] = buffers[acc] + value_in
            ring = (op.id, k, RING)
            if ring in buffers:
                buffers[ring] = _shift(buffers[ring], value)
            last = (op.id, k, LAST)
            if last in buffers:
                buffers[last] = jnp.asarray(value, buffers[last].dtype)
            if (op.id, k) not in self.layout.plan.buffered:
                continue
            buf = buffers[(op.id, k)]
            dropped = self.layout.plan.scoped.get((op.id, k), frozenset())
            at = [p for n, p in enumerate(point) if n not in dropped]  # scoped: this iteration's
            cycle = self.layout.cycles.get((op.id, k))
            if cycle is not None:  # row p at slot p mod rows
                at[cycle.axis] = at[cycle.axis] % cycle.rows
            logical = self.layout.logical_shape(op.id, k)
            update = jnp.asarray(value, op.outputs[k].dtype)  # the buffer's dtype (see _zeros)
            update = update.reshape((1,) * len(at) + logical[len(at) :])
            split = self.layout.splits.get((op.id, k))
            if split is not None:
                buffers[(op.id, k)] = split.write(buf, update, at)
                continue
            starts = [*at, *([jnp.int32(0)] * (buf.ndim - len(at)))]
            order = self.layout.layouts.get((op.id, k))
            if order is not None:
                update = jnp.transpose(update, order)
                starts = [starts[a] for a in order]
            update = self.placed((op.id, k), update)
            buffers[(op.id, k)] = lax.dynamic_update_slice(
                buf, update, starts, allow_negative_indices=False
            )
        return buffers

    # -- one point -----------------------------------------------------------------------------
    def _inputs(
        self,
        node: Exec,
        op: Op,
        env: Env,
        buffers: Buffers,
        local: dict[int, tuple[Any, ...]],
        skip: frozenset[int] = frozenset(),
        windows: dict[str, tuple[Any, Any]] | None = None,
    ) -> list[Any]:
        """``op``'s input values at the point of ``env``. With ``windows`` (a dict to fill),
        a growing range of a size class read at one window by every input is read where it
        sits in its buffer, not gathered to the front: ``windows[class]`` is set to its
        valid rows ``(lo, hi)`` (:func:`.masking.masked_call`)."""
        values: list[Any] = []
        classes = self.layout.window_classes(op) if windows is not None else {}
        windowed: list[str] = []  # per growing range read where it sits, its class
        active = self.branches.get(op.id) if op.kind == "merge" else None
        for k, edge in enumerate(op.inputs):
            if k in skip or (active is not None and k != active):
                values.append(None)  # a branch this piece of the loop never takes
            elif op.payload is not None and op.payload.accumulates:
                slices = sum(isinstance(item, Slice) for item in edge.index)
                if (edge.src, edge.out) in self.layout.plan.accumulated:
                    acc = buffers[(edge.src, edge.out, ACCUMULATE)]
                    values.append(acc.reshape((1,) * slices + acc.shape))  # one row per axis
                else:
                    values.append(self.read(edge, env, buffers, op.domain))
            elif (id(node), k, PREFETCH) in buffers:  # read at the previous iteration
                values.append(buffers[(id(node), k, PREFETCH)])
            elif (id(node), k) in self.layout.plan.local or (id(node), k) in self.layout.nest_local:
                values.append(local[edge.src][edge.out])
            elif (id(node), k) in self.layout.plan.window:
                last = buffers.get((edge.src, edge.out, LAST))
                if last is not None:  # a ring of depth 1: its one slot
                    values.append(last)
                else:
                    ring = buffers[(edge.src, edge.out, RING)]
                    values.append(ring[self.layout.plan.window[(id(node), k)]])
            else:
                values.append(self.read(edge, env, buffers, op.domain, None, classes, windowed))
        if windows is not None and windowed:
            reads = [  # every growing axis of a windowed class, over all inputs
                str(n)
                for edge in op.inputs
                for n in self.program.read_spec(edge).shape
                if str(n) in windowed
            ]
            if sorted(reads) != sorted(windowed):  # a class read both ways: read all gathered
                return self._inputs(node, op, env, buffers, local, skip)
            windows.update(
                (klass, (item.start.evaluate(env), item.stop.evaluate(env)))
                for klass, item in classes.items()
                if klass in windowed
            )
        return values

    def _tiled(
        self,
        node: Exec,
        op: Op,
        env: Env,
        buffers: Buffers,
        local: dict[int, tuple[Any, ...]],
        span: tuple[Any, Any] | None = None,
    ) -> list[Any] | None:
        """``op``'s outputs computed over the live tiles of its growing ranges, or None when it
        is not marked for tiling or its payload is not a map-then-reduce over them. ``span``,
        the tiles to visit, is given for a block of queries (:mod:`.blocks`): their ranges'
        tiles together, the rows outside this point's range masked, the results checked by the
        caller (``Tiles.unchecked``)."""
        shape = self.layout.tile_shape(op)
        if shape is None:
            return None
        ranges, block, total = shape
        payload = op.payload
        assert payload is not None
        item = next(iter(ranges.values()))[1]
        start = jnp.asarray(item.start.evaluate(env), jnp.int32)
        stop = jnp.asarray(item.stop.evaluate(env), jnp.int32)
        # split storage: tiles are whole arrays, visited by an unrolled loop, when every range
        # is cut the same way (buffers of other shapes, a KV cache and a row mask, may be)
        found = [self.layout.splits.get((op.inputs[k].src, op.inputs[k].out)) for k in ranges]
        cuts = {None if split is None else (split.block, split.count) for split in found}
        cut = cuts.pop() if len(cuts) == 1 else None
        count = None
        if cut is not None and cut[0] == block:
            count, total = cut[1], cut[1] * block
        cyclic = self.layout.cycle_of(op)
        if cyclic is not None:  # every tile of the cycle may hold rows of the range
            count = total // block

        def first(tile: Any) -> Any:  # the tile's first row in the buffer (clamped to fit)
            return tile * block if count is not None else jnp.minimum(tile * block, total - block)

        def valid(tile: Any) -> Any:
            at = first(tile) + jnp.arange(block, dtype=jnp.int32)
            if cyclic is not None:  # slot -> its row among the `total` rows up to the last read
                at = stop - 1 - jnp.remainder(stop - 1 - at, total)
                return (at >= start) & (at < stop)
            return (at >= tile * block) & (at >= start) & (at < stop)  # no row counted twice

        values = self._inputs(node, op, env, buffers, local, skip=frozenset(ranges))
        readers: list[Any] = [None] * len(op.inputs)
        axes: list[int | None] = [None] * len(op.inputs)
        for k, (axis, _, _) in ranges.items():
            edge = op.inputs[k]
            spec = self.program.read_spec(edge)
            shape = list(self.layout.shape(spec, op.domain))
            shape[axis] = block
            values[k] = jax.ShapeDtypeStruct(tuple(shape), spec.dtype)
            readers[k] = lambda i, e=edge: self.read(
                e, env, buffers, op.domain, tile=(first(i), block)
            )
            axes[k] = axis

        def fn(*args: Any) -> Any:
            return payload.fn(env, *args) if payload.uses_point else payload.fn(*args)

        if cyclic is not None:
            tiles = Tiles(0, count, valid, stop - start, count, exact=self.exact_masks)
        else:
            lo, hi = span or (start // block, (stop + block - 1) // block)
            # a block of queries shares its tiles: masking both operands of a product would
            # copy the larger one per query; the block is checked by its caller (.blocks)
            exact = self.exact_masks and span is None
            tiles = Tiles(lo, hi, valid, stop - start, count, span is not None, exact)
        what = describe_op(op)
        return tiled_call(fn, values, readers, axes, tiles, str(item.size), what)

    def compute(
        self,
        op: Op,
        env: Env,
        values: list[Any],
        unchecked: bool = False,
        windows: dict[str, tuple[Any, Any]] | None = None,
    ) -> tuple[Any, ...]:
        """The outputs of ``op`` at the point of ``env``, from its inputs' ``values``
        (``unchecked`` and ``windows``: see :func:`.masking.masked_call`)."""
        if op.kind == "sink":
            self.sink_errors.send(op, self.program.read_spec(op.inputs[0]).shape, env, values[0])
            return ()
        if op.kind == "merge":
            return (merge_value(self, op, env, values),)
        assert op.payload is not None
        payload = op.payload

        def fn(*args: Any) -> Any:
            return payload.fn(env, *args) if payload.uses_point else payload.fn(*args)

        pads, lengths = self._pads(op, env)
        if not any(pads) or payload.pads_ok:
            return fn(*values)
        what = describe_op(op)
        return tuple(masked_call(fn, values, pads, lengths | (windows or {}), what, unchecked))

    def _pads(self, op: Op, env: Env) -> tuple[list[Pads], dict[str, Any]]:
        """Per input, its padded axes (by size class), and each class's length at the point."""
        pads: list[Pads] = []
        lengths: dict[str, Any] = {}
        for edge in op.inputs:
            found: Pads = {}
            for axis, size in enumerate(self.program.read_spec(edge).shape):
                if not self.layout.is_static(size):
                    found[axis] = str(size)
                    lengths[str(size)] = size.evaluate(env)
            pads.append(found)
        return pads, lengths

    read = read_value  # ``self.read(edge, env, buffers, domain, ...)``: :func:`.reading.read`

    # -- outputs ---------------------------------------------------------------------------------
    def output(self, out: Output, buffers: Buffers) -> jax.Array:
        """An output: its read at every point of its domain, domain dims first."""
        buffers = self.fetched(buffers, [(out.edge.src, out.edge.out)])
        if out.name in self.layout.plan.captured:
            return out.arrange(buffers[capture_key(out)].astype(out.spec.dtype))
        shape = tuple(self.bounds[d.bound] for d in out.domain)
        key = (out.edge.src, out.edge.out)
        if out.name in self.layout.returned_outputs and key in buffers:  # the buffer itself
            whole = buffers[key]
            if tuple(whole.shape) == shape + self.layout.shape(out.spec, out.domain):
                return out.arrange(whole.astype(out.spec.dtype))
        if not shape:
            return out.arrange(self.read(out.edge, self.runtime, buffers, ()))
        grid = np.indices(shape).reshape(len(shape), -1)

        def at(*coords: Any) -> jax.Array:
            env = {**self.runtime, **dict(zip(out.domain, coords, strict=True))}
            return self.read(out.edge, env, buffers, out.domain)

        values = jax.vmap(at)(*(jnp.asarray(row, jnp.int32) for row in grid))
        return out.arrange(values.reshape(shape + values.shape[1:]).astype(out.spec.dtype))


def _shift(ring: jax.Array, value: Any) -> jax.Array:
    """A ring (newest first) with ``value`` pushed in and its oldest value dropped."""
    return jnp.concatenate([jnp.asarray(value, ring.dtype)[None], ring[:-1]])


def _inside(index: Sequence_[Any], point: Sequence_[Any], env: Env) -> Any:
    """Whether ``point`` lies in the box ``index`` reads (slices and points, constant ends)."""
    inside: Any = True
    for item, p in zip(index, point, strict=True):
        if isinstance(item, Slice):
            held = (p >= item.start.evaluate(env)) & (p < item.stop.evaluate(env))
        else:
            held = p == item.evaluate(env)
        inside = inside & held
    return inside
