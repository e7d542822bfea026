"""The buffer plan: how every stored value is kept, decided before the lowering runs.

:func:`.storage.plan_storage` decides, from the schedule tree, which values are passed on
within an iteration, kept in a loop's ring, captured, scoped or stored in full.
:class:`BufferPlan` adds what depends on the bounds and on the payloads: which full buffers
keep their last rows only (:class:`Cycle`), which read in tiles keep their range axis next to
the last (``layouts``), which are cut into one array per tile (``splits``, :mod:`.split`),
which loop nests run all their points at once (``nests``, :mod:`.blocks`), and which ops a
map-then-reduce takes in tiles (:meth:`BufferPlan.tileable`). The lowering
(:class:`.execute.TreeLowering`) only reads these decisions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .._ir.expr import Expr, Slice, Symbol, symbols_of
from .._ir.program import Edge, Op, Output, Program, TensorSpec
from .._ir.simplify import simplify
from .._ir.source import describe
from .._schedule.tree import Alloc, Node, walk
from .blocks import plan_nests
from .latest import plan_last_of_loop
from .memory_plan import plan_memory
from .nest_budget import fit_nests
from .output_plan import plan_whole_outputs
from .prefetch import plan_prefetches
from .split import MAX_SPLIT, Split
from .storage import CyclicCandidate, cyclic_candidates, plan_storage
from .tiling import auto_block, plan_tiles

Env = Mapping[Symbol, Any]
PaddedSize = Callable[[Expr, tuple[Symbol, ...]], int]  # largest value of a size over a box


@dataclasses.dataclass(frozen=True)
class Cycle:
    """A buffer kept cyclic along its logical ``axis``: row ``p`` lives at slot ``p mod rows``,
    so the buffer holds only the last ``rows`` rows. Every read takes it in tiles of ``block``
    rows (``rows`` is a multiple of it), its ``readers`` (op ids)."""

    axis: int
    rows: int
    block: int
    readers: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class StoredValue:
    """One value a compiled program keeps between the points that produce and read it (a row
    of :meth:`BufferPlan.stored_values`).

    ``kind``: ``full`` (every point of its domain), ``scoped`` (the points of one iteration of
    an enclosing loop), ``cyclic`` (the last rows of a window), ``split`` (one array per tile),
    ``ring`` (the last values a loop carries), ``accumulated`` (a running sum) or ``captured``
    (one point, e.g. an output). ``shape`` is as stored, ``bytes`` its size; ``memory_kind``
    where it lives; ``live`` when it exists.
    """

    name: str
    output: int
    source: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int
    memory_kind: str
    live: str


class BufferPlan:
    """Every storage decision for one program, schedule tree and set of bounds (the module
    docstring). ``input_shapes``: the shape of each input op's array; ``runtime``: each
    bound's value (a dynamic bound as a traced scalar); ``padded``: the largest value of a
    symbolic size over a box of dims; ``unroll``: the dims whose loops run unrolled."""

    def __init__(
        self,
        program: Program,
        bounds: Mapping[Symbol, int],
        input_shapes: Mapping[int, tuple[int, ...]],
        tree: Node,
        runtime: Env,
        padded: PaddedSize,
        unroll: frozenset[str],
        memory_budget: int | None = None,
        offload: bool = True,
        covering: frozenset[int] = frozenset(),
    ) -> None:
        self.program = program
        self.bounds = bounds
        self.input_shapes = input_shapes
        self.runtime = runtime
        self.padded = padded
        self.unroll = unroll
        self.plan = plan_storage(program, tree, covering)
        self.tree = tree
        self.placed = {(n.op, n.out) for n in walk(tree) if isinstance(n, Alloc)}
        self.captures: dict[tuple[int, int], list[Output]] = {}
        for out in program.outputs:
            if out.name in self.plan.captured:
                self.captures.setdefault((out.edge.src, out.edge.out), []).append(out)
        # a value read elsewhere at one constant point only: captured like a one-point output
        self.held: dict[tuple[int, int], Output] = {}
        for (src, k), index in self.plan.held.items():
            spec = program.op(src).outputs[k]
            held = Output(f"@held{src}.{k}", (), Edge(src, k, index), spec)
            self.held[(src, k)] = held
            self.captures.setdefault((src, k), []).append(held)
        # loop -> the captured values of its last point taken from its ring once it has run
        captured = [out for outs in self.captures.values() for out in outs]
        self.from_ring = plan_last_of_loop(program, tree, self.plan.rings, captured)
        self.ring_taken = {out.name for outs in self.from_ring.values() for out in outs}
        self._planned: dict[tuple[int, int], bool] = {}  # (op, tile size) -> takes tiles
        self.payload_costs: dict[int, Any] = {}  # op -> its payload's transients' cost, traced
        # op -> the ops reading one of its outputs
        self.readers = {op: {r for r, _ in rs} for op, rs in program.readers().items()}
        static = {b: v for b, v in self.runtime.items() if isinstance(v, int)}
        # values the user placed in host memory (tj.offload) are stored plainly: in full, in
        # domain order, one array
        plain = {op.id for op in program.ops if op.memory == "offload"}
        candidates = cyclic_candidates(program, tree, self.plan, static)
        self.cycles = self._cycles({k: c for k, c in candidates.items() if k[0] not in plain})
        # buffers -> the (axis, tile size) of each read taking them in tiles; buffers read
        # some other way by some op
        self._tile_reads, self._whole_reads = self._tiled_reads()
        # (op, output) -> the axis order its buffer is stored in
        self.layouts = {k: v for k, v in self._layouts().items() if k[0] not in plain}
        self._plain = plain
        self._static = static
        self.plan_from_nests(frozenset(), offload, memory_budget)
        if offload and memory_budget is not None:
            # nests computed at once whose gathers keep the peak over the budget run as loops
            fit_nests(self, memory_budget)

    def plan_from_nests(self, refused: frozenset[int], offload: bool, budget: int | None) -> None:
        """The decisions that follow from which loop nests run at once: the nests (but none
        whose top loop's ``id`` is in ``refused``), the buffers cut into arrays, the seeded
        values, the outputs that are their buffer, the memory kinds, the prefetches."""
        program, tree, plain = self.program, self.tree, self._plain
        self.refused = refused
        # loop nests of ops with independent points: computed at once
        self.splits: dict[tuple[int, int], Split] = {}
        self.nests = plan_nests(
            program, tree, self._nest_tiles, self.stored, self._static, self._dropped, refused
        )
        # (op, output) -> how its buffer is cut into arrays; not for an op of a nest that runs
        # in query blocks (each block's rows start at a computed row)
        blocked = {ex.op for nest in self.nests.values() if nest.query for ex in nest.execs}
        self.splits = {key: s for key, s in self._splits().items() if key[0] not in blocked | plain}
        self.nest_local = frozenset().union(*(nest.local for nest in self.nests.values()))
        # values kept as their latest point that start as an input (``plan.seeds``), but not
        # one cut into arrays, stored in another axis order or of a nest computed at once
        at_once = {ex.op for nest in self.nests.values() for ex in nest.execs}
        self.seeds = {
            key: (merge, edge)
            for key, (merge, edge) in self.plan.seeds.items()
            if key not in self.splits and key not in self.layouts and not {key[0], merge} & at_once
        }
        self.seeded = frozenset(merge for merge, _ in self.seeds.values())  # merges read them
        # outputs that are their full buffer as stored; those returned as the buffer itself
        self.whole_outputs, self.returned_outputs = plan_whole_outputs(self)
        # (op, output) -> "pinned_host" for the full buffers kept in host memory
        self.memory_kinds: dict[tuple[int, int], str] = {}
        if offload:
            self.memory_kinds = plan_memory(self, budget)
        # loop -> its reads from host memory brought to the device one iteration ahead
        self.prefetches = plan_prefetches(self)

    def _cycles(self, candidates: dict[tuple[int, int], CyclicCandidate]) -> dict:
        """Buffers kept cyclic (:class:`Cycle`): windows read by a map-then-reduce.

        A candidate (:func:`storage.cyclic_candidates`) is read only through growing ranges
        whose rows lie within the last ``need`` rows up to the read's ``latest`` (for
        ``k[max(0, t-w+1):t+1]`` at ``t``, ``need = w``), by ops marked for tiling. Its buffer
        keeps ``need`` rows (the most any read needs), rounded up to the tile size (the
        smallest of the ops' ``block``, each at most its ``need``: one tile of ``need`` rows
        when the size is left to the compiler), when that is shorter than the dim. The rows of
        a cyclic buffer come in rotated order, so every op reading it must take them in tiles
        as a map-then-reduce (planned on abstract values here), with all its ranges read from
        cyclic buffers of the same length and tile size.
        """
        cycles: dict[tuple[int, int], Cycle] = {}
        for key, candidate in candidates.items():
            producer = self.program.op(key[0])
            length = self.bounds[producer.domain[candidate.position].bound]
            needs, blocks = [], []
            for read in candidate.reads:
                op = self.program.op(read.op)
                item = op.inputs[read.input].index[candidate.position]
                assert op.payload is not None and isinstance(item, Slice)
                if op.payload.block is None or self.is_static(item.size):
                    break
                try:
                    need = self.padded(simplify(read.latest - item.start + 1), op.domain)
                except Exception:  # no bound found: the buffer stays whole
                    break
                needs.append(need)
                blocks.append(min(op.payload.block or need, need))
            else:
                block = min(blocks)
                rows = -(-max(needs) // block) * block
                if rows >= length:
                    continue
                axis = candidate.position  # not scoped: the buffer keeps every domain axis
                cycles[key] = Cycle(axis, rows, block, tuple(read.op for read in candidate.reads))
        reading = sorted({op for cycle in cycles.values() for op in cycle.readers})
        changed = True
        while changed:  # drop buffers whose readers cannot take every range cyclically
            changed = False
            for op_id in reading:
                op = self.program.op(op_id)
                keys = {(e.src, e.out) for e in op.inputs} & set(cycles)
                if keys and not self._reads_cyclic(op, cycles):
                    for key in keys:
                        del cycles[key]
                    changed = True
        return cycles

    def _reads_cyclic(self, op: Op, cycles: dict[tuple[int, int], Cycle]) -> bool:
        """Whether ``op`` reads all its growing ranges from ``cycles`` alike, in tiles."""
        ranges = self.ranges(op)
        if not ranges:
            return False
        found = set()
        for k, edge in enumerate(op.inputs):
            cycle = cycles.get((edge.src, edge.out))
            if cycle is not None and k not in ranges:
                return False
            if k in ranges:
                if cycle is None or cycle.axis != self.buffer_axis(edge, ranges[k][2]):
                    return False
                found.add((cycle.rows, cycle.block))
        if len(found) != 1:
            return False
        ((_, block),) = found
        return self._plannable(op, ranges, block)

    def cycle_of(self, op: Op) -> Cycle | None:
        """The cyclic buffer layout ``op`` reads its ranges from, if any."""
        for edge in op.inputs:
            cycle = self.cycles.get((edge.src, edge.out))
            if cycle is not None:
                return cycle
        return None

    def _tiled_reads(self) -> tuple[dict[tuple[int, int], set[tuple[int, int]]], set]:
        """Per computed buffer, the ``(axis, block)`` of every read that takes it in tiles;
        and the buffers some op reads another way (whole, a point, an input's range)."""
        tiled: dict[tuple[int, int], set[tuple[int, int]]] = {}
        other: set[tuple[int, int]] = set()
        for op in self.program.ops:
            tiling = self.tileable(op)
            ranges, block = tiling if tiling is not None else ({}, 0)
            for k, edge in enumerate(op.inputs):
                key = (edge.src, edge.out)
                if k not in ranges:
                    other.add(key)
                elif edge.src not in self.input_shapes and key in self.plan.buffered:
                    axis = self.buffer_axis(edge, ranges[k][2])
                    tiled.setdefault(key, set()).add((axis, block))
        return tiled, other

    def _layouts(self) -> dict[tuple[int, int], tuple[int, ...]]:
        """Buffers read in tiles keep their range axis next to their last axis.

        A buffer ``k`` over ``(t, l)`` of ``(B, H, d)`` values is stored ``(L, B, H, T, d)``
        when an op reads ``k[0:t+1, l]`` in tiles: a tile is then ``(B, H, block, d)`` in
        memory, the layout a batched contraction over ``d`` (attention scores) or over the
        rows (weighted values) reads as it is. Stored in domain order, every tile would be
        transposed first: a copy of the rows visited per point. A buffer some op reads whole
        (a range it does not take in tiles) gets the layout only when another op takes it in
        tiles; the whole read is transposed back.
        """
        layouts = {}
        for key, uses in self._tile_reads.items():
            axes = {axis for axis, _ in uses}
            rank = len(self.logical_shape(*key))
            if len(axes) != 1 or rank - min(axes) < 3:  # already next to the last axis
                continue
            (axis,) = axes
            order = [a for a in range(rank) if a != axis]
            layouts[key] = (*order[:-1], axis, order[-1])
        return layouts

    def _splits(self) -> dict[tuple[int, int], Split]:
        """Buffers read in tiles, stored one array per tile and per index of an unrolled dim
        (:mod:`.split`): every read of the buffer takes it in tiles, all cutting the same
        axis into tiles of the same size, and the pieces number at most ``MAX_SPLIT``."""
        splits = {}
        for key, uses in self._tile_reads.items():
            if len(uses) != 1 or key in self._whole_reads:
                continue
            if self.plan.scoped.get(key) or key in self.plan.accumulated:
                continue
            ((axis, block),) = uses
            shape = self.logical_shape(*key)
            domain = self.program.op(key[0]).domain
            unrolled = tuple(a for a, d in enumerate(domain) if d.name in self.unroll and a != axis)
            count = -(-shape[axis] // block)
            pieces = count * math.prod(shape[a] for a in unrolled)
            if (count == 1 and not unrolled) or pieces > MAX_SPLIT:
                continue
            order = self.layouts.get(key, tuple(range(len(shape))))
            splits[key] = Split(shape, order, unrolled, axis, block, count)
        return splits

    def _nest_tiles(self, op_id: int) -> int | None:
        """The tile size of ``op_id`` when it is taken in tiles of a computed layout."""
        op = self.program.op(op_id)
        tiling = self.tileable(op)
        return tiling[1] if tiling is not None and self.cycle_of(op) is None else None

    def _own_buffers(self, op_id: int, layouts: bool = False) -> bool:
        """Whether every output of ``op_id`` is a full buffer in domain order, written only by
        its own points (no ring, capture, sum, cycle or layout of its own; maybe split)."""
        for k in range(len(self.program.op(op_id).outputs)):
            key = (op_id, k)
            if key not in self.plan.buffered or key in self.captures or key in self.held:
                return False
            if key in self.plan.accumulated or (self.plan.scoped.get(key) and not layouts):
                return False
            if key in self.cycles or (key in self.layouts and not layouts):
                return False
            if any(key in rings for rings in self.plan.rings.values()):
                return False
        return True

    def _dropped(self, op_id: int) -> frozenset[int]:
        """The domain positions some buffer of ``op_id`` leaves out (``plan.scoped``)."""
        return frozenset().union(
            *(
                self.plan.scoped.get((op_id, k), frozenset())
                for k in range(len(self.program.op(op_id).outputs))
            )
        )

    def stored(self, op_id: int) -> bool | None:
        """True when ``op_id``'s outputs are full buffers of its own (:meth:`_own_buffers`;
        some maybe in another axis order, ``self.layouts``, or holding only the current
        iteration of enclosing dims, ``plan.scoped``), False when none is kept at all (read
        only where it is computed), else None."""
        if self._own_buffers(op_id, layouts=True):
            return True
        for k in range(len(self.program.op(op_id).outputs)):
            key = (op_id, k)
            if key in self.plan.buffered or key in self.captures or key in self.held:
                return None
            if key in self.plan.accumulated or key in self.cycles:
                return None
            if any(key in rings for rings in self.plan.rings.values()):
                return None
        return False

    def tile_shape(self, op: Op) -> tuple[dict[int, tuple[int, Slice, int]], int, int] | None:
        """``op``'s growing ranges (see :meth:`ranges`), tile size and buffer rows, when it
        is marked for tiling and a tile is shorter than both its range and its buffer."""
        payload = op.payload
        if payload is None or payload.block is None:
            return None
        ranges = self.ranges(op)
        if not ranges:
            return None
        cyclic = self.cycle_of(op)
        if cyclic is not None:  # all ranges read from cyclic buffers: tiles of the cycle
            return ranges, cyclic.block, cyclic.rows
        item = next(iter(ranges.values()))[1]
        rows = {
            self.stored_shape(op.inputs[k])[self.buffer_axis(op.inputs[k], a)]
            for k, (_, _, a) in ranges.items()
        }
        padded = self.padded(item.size, op.domain)
        block = payload.block or auto_block(padded)
        if len(rows) != 1 or block >= min(rows) or block >= padded:
            return None
        return ranges, block, rows.pop()

    def tileable(self, op: Op) -> tuple[dict[int, tuple[int, Slice, int]], int] | None:
        """``op``'s ranges and tile size when :meth:`_tiled` will take it in tiles: its
        payload is a map-then-reduce over them (planned here on abstract values)."""
        shape = self.tile_shape(op)
        if shape is None:
            return None
        ranges, block, _ = shape
        return (ranges, block) if self._plannable(op, ranges, block) else None

    def _plannable(self, op: Op, ranges: dict[int, tuple[int, Slice, int]], block: int) -> bool:
        """Whether ``op``'s payload is a map-then-reduce over tiles of ``block`` rows of its
        ``ranges`` (planned on abstract values, once per op and tile size)."""
        if (op.id, block) not in self._planned:
            self._planned[(op.id, block)] = self._plan_abstract(op, ranges, block)
        return self._planned[(op.id, block)]

    def abstract_args(
        self, op: Op, ranges: Mapping[int, tuple[int, Slice, int]], block: int
    ) -> list[jax.ShapeDtypeStruct]:
        """The abstract inputs ``op`` is called with: each as read, a range in ``ranges`` cut
        to a tile of ``block`` rows."""
        args = []
        for k, edge in enumerate(op.inputs):
            spec = self.program.read_spec(edge)
            dims = list(self.shape(spec, op.domain))
            if k in ranges:
                dims[ranges[k][0]] = block
            args.append(jax.ShapeDtypeStruct(tuple(dims), spec.dtype))
        return args

    def abstract_call(
        self, op: Op, ranges: Mapping[int, tuple[int, Slice, int]], block: int
    ) -> tuple[Callable[..., Any], list[jax.ShapeDtypeStruct]]:
        """``op``'s payload as a function of its inputs alone (at a point of zeros), and its
        abstract inputs (:meth:`abstract_args`)."""
        assert op.payload is not None
        payload = op.payload
        args = self.abstract_args(op, ranges, block)
        point = {d: jnp.int32(0) for d in op.domain}

        def fn(*values: Any) -> Any:
            env = {**self.runtime, **point}
            return payload.fn(env, *values) if payload.uses_point else payload.fn(*values)

        return fn, args

    def _plan_abstract(self, op: Op, ranges: dict[int, tuple[int, Slice, int]], block: int) -> bool:
        fn, args = self.abstract_call(op, ranges, block)
        axes = [ranges[k][0] if k in ranges else None for k in range(len(op.inputs))]
        item = next(iter(ranges.values()))[1]
        try:
            return plan_tiles(fn, args, axes, str(item.size), op.name)
        except Exception:  # the real trace reports what is wrong with the payload
            return False

    def logical_shape(self, op_id: int, out: int) -> tuple[int, ...]:
        """The shape of ``op_id``'s buffer in domain order: kept domain dims, then the value's."""
        op = self.program.op(op_id)
        spec = op.outputs[out]
        dropped = self.plan.scoped.get((op_id, out), frozenset())
        lead = tuple(self.bounds[d.bound] for k, d in enumerate(op.domain) if k not in dropped)
        cycle = self.cycles.get((op_id, out))
        if cycle is not None:  # the last rows only
            lead = tuple(cycle.rows if a == cycle.axis else n for a, n in enumerate(lead))
        return lead + self.shape(spec, op.domain)

    def window_classes(self, op: Op) -> dict[str, Slice]:
        """Per size class of ``op``'s growing axes that a point of a query block may read
        where it sits in its buffer (a window of valid rows, no gathered copy): every input
        with an axis of that size reads it as one growing range, the same for all, from a
        buffer; ``op``'s outputs have no growing axis (they would not start at row 0)."""
        if any(not self.is_static(n) for spec in op.outputs for n in spec.shape):
            return {}
        found: dict[str, set[Slice]] = {}
        mixed: set[str] = set()
        for edge in op.inputs:
            ranged = {
                str(item.size): item
                for item in edge.index
                if isinstance(item, Slice) and not self.is_static(item.size)
            }
            sized = {str(n) for n in self.program.read_spec(edge).shape if not self.is_static(n)}
            mixed |= sized - set(ranged)
            for klass, item in ranged.items():
                found.setdefault(klass, set()).add(item)
        return {
            klass: items.pop()
            for klass, items in found.items()
            if len(items) == 1 and klass not in mixed
        }

    def is_static(self, size: int | Expr) -> bool:
        """Whether a size is the same at every point and for every call."""
        return isinstance(size, int) or all(
            isinstance(self.runtime.get(sym), int) for sym in symbols_of(size)
        )

    def shape(self, spec: TensorSpec, domain: tuple[Symbol, ...]) -> tuple[int, ...]:
        """The static shape of a value of ``spec`` over ``domain``: symbolic sizes padded."""
        return tuple(d if isinstance(d, int) else self.padded(d, domain) for d in spec.shape)

    def ranges(self, op: Op) -> dict[int, tuple[int, Slice, int]] | None:
        """Per input reading a growing range: (its stacked axis, the range, the buffer axis);
        None unless every growing read is one such range, all of them the same."""
        ranges: dict[int, tuple[int, Slice, int]] = {}
        for k, edge in enumerate(op.inputs):
            growing = [
                (sum(isinstance(i, Slice) for i in edge.index[:a]), item, a)
                for a, item in enumerate(edge.index)
                if isinstance(item, Slice) and not self.is_static(item.size)
            ]
            shape = self.program.read_spec(edge).shape
            if len(growing) > 1 or (edge.src, edge.out) in self.held:
                return None
            if not growing and not all(self.is_static(n) for n in shape):
                return None  # a padded value computed elsewhere: not read in tiles
            if growing:
                ranges[k] = growing[0]
        if len({(str(item.start), str(item.stop)) for _, item, _ in ranges.values()}) != 1:
            return None
        return ranges

    def stored_shape(self, edge: Edge) -> tuple[int, ...]:
        """The shape of the buffer ``edge`` reads, in domain order."""
        if edge.src in self.input_shapes:
            return self.input_shapes[edge.src]
        return self.logical_shape(edge.src, edge.out)

    def buffer_axis(self, edge: Edge, position: int) -> int:
        """The buffer axis of index position ``position`` of ``edge``."""
        dropped = self.plan.scoped.get((edge.src, edge.out), frozenset())
        if edge.src in self.input_shapes:
            return position
        return position - sum(1 for k in dropped if k < position)

    def stored_index(self, edge: Edge) -> tuple[Any, ...]:
        """The index items of ``edge`` for the axes its producer's buffer has (a scoped buffer
        leaves out the positions its loop walks)."""
        dropped = self.plan.scoped.get((edge.src, edge.out))
        if not dropped or edge.src in self.input_shapes:
            return edge.index
        return tuple(item for k, item in enumerate(edge.index) if k not in dropped)

    # -- the report ------------------------------------------------------------------------------
    def stored_values(self) -> list[StoredValue]:
        """Every value kept between the points that produce and read it, as planned."""
        found = []
        for key in sorted(self.plan.buffered):
            if self.program.op(key[0]).kind == "input":
                continue
            shape = self.logical_shape(*key)
            split = self.splits.get(key)
            if split is not None:  # the pieces together: the tile axis rounded up to tiles
                shape = tuple(
                    split.count * split.block if a == split.axis else n for a, n in enumerate(shape)
                )
            kind = self._kind(key)
            live = "its schedule's alloc..free" if key in self.placed else "whole program"
            found.append(self._value(key, kind, shape, live))
        for key in sorted(self.plan.accumulated):
            op = self.program.op(key[0])
            found.append(
                self._value(
                    key, "accumulated", self.shape(op.outputs[key[1]], op.domain), "whole program"
                )
            )
        outputs = {(o.edge.src, o.edge.out) for o in self.program.outputs}
        for key, outs in sorted(self.captures.items()):
            op = self.program.op(key[0])
            shape = self.shape(op.outputs[key[1]], op.domain)
            live = "its step to the end" if key in outputs else "its step to last reader"
            for _ in outs:
                found.append(self._value(key, "captured", shape, live))
        for loop, rings in self.plan.rings.items():
            for key, depth in sorted(rings.items()):
                op = self.program.op(key[0])
                shape = (depth, *self.shape(op.outputs[key[1]], op.domain))
                found.append(self._value(key, "ring", shape, f"loop over {loop.dim}"))
        return found

    def value_keys(self) -> list[tuple[tuple[int, int], str, Any]]:
        """Per row of :meth:`stored_values`: its ``(op, output)``, how it is counted and its
        loop (rings)."""
        keys: list[tuple[tuple[int, int], str, Any]] = []
        for key in sorted(self.plan.buffered):
            if self.program.op(key[0]).kind != "input":
                keys.append((key, "buffer", None))
        keys += [(key, "accumulated", None) for key in sorted(self.plan.accumulated)]
        for key, outs in sorted(self.captures.items()):
            keys += [(key, "captured", None)] * len(outs)
        for loop, rings in self.plan.rings.items():
            keys += [(key, "ring", loop) for key in sorted(rings)]
        return keys

    def _kind(self, key: tuple[int, int]) -> str:
        """How the full buffer ``key`` is kept (:class:`StoredValue`'s kinds)."""
        if key in self.cycles:
            return "cyclic"
        if key in self.splits:
            return "split"
        return "scoped" if self.plan.scoped.get(key) else "full"

    def _value(
        self, key: tuple[int, int], kind: str, shape: tuple[int, ...], live: str
    ) -> StoredValue:
        op = self.program.op(key[0])
        dtype = op.outputs[key[1]].dtype
        nbytes = math.prod(shape) * dtype.itemsize
        where = describe(op.source).removeprefix(" at ")
        memory = self.memory_kinds.get(key, "device") if kind != "captured" else "device"
        return StoredValue(op.name, key[1], where, kind, shape, dtype.name, nbytes, memory, live)
