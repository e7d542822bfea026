"""The bytes a compiled program holds only while it computes: transients, as planned.

The stored values (:meth:`.buffer_plan.BufferPlan.stored_values`) are what the program keeps
between the points that produce and read them. XLA holds more while it runs: values passed
from one step to the next without a buffer, the gathers of ranges that a nest of independent
points computes at once, and the arrays inside an op's own computation. :func:`transient_bytes`
plans them per top-level step of the schedule, with XLA's fusion in mind:

- an array is *materialised* by a primitive that XLA does not fuse into its consumers (a
  contraction, a reduction, a scan, a gather, a random number generator's bits...); an
  element-wise chain (``tanh``, ``*``, ``select``, broadcasts, reshapes, slices) is fused
  into whatever reads it and holds nothing of its own; a move of elements (a concatenation,
  a pad, a transpose) is fused into its readers inside the op, but makes the op's output an
  array its readers outside do not fuse;
- an op's *scratch* is the most bytes its payload's materialised arrays hold at once, its
  inputs and outputs aside (its jaxpr walked equation by equation, each array live from the
  equation making it to the last one reading it), traced at the shapes the lowering calls it
  with: a tile of its ranges when it is taken in tiles;
- an op's output that no buffer keeps is live from its execution to its last reader's: across
  top-level steps for an op run at the top level, within the step otherwise (a value of one
  iteration); not at all when the op's payload is element-wise (fused into its readers);
- a read of a range is gathered: during its reader's execution, the range's bytes (a tile's
  when the reader takes it in tiles);
- a loop nest computed at once (:mod:`.blocks`) holds each of these for all its points (for a
  block of queries when it runs in query blocks).

These are estimates of what XLA does, not a copy of its buffer assignment: it may fuse more
(a gather into a reduction) or less (an element-wise op read twice), and it keeps a few bytes
of its own (loop counters, alignment to 64 bytes) that matter only for tiny programs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp

from .._ir.expr import Slice
from .._ir.jaxprs import CALLS
from .._schedule.tree import Exec, Free, Guard, Node, walk

if TYPE_CHECKING:
    from .buffer_plan import BufferPlan

Key = tuple[int, int]

# primitives XLA fuses into their consumers: element-wise maths, and moves of elements that
# need no array of their own
FUSED = frozenset(
    """abs acos acosh add and asin asinh atan atan2 atanh bitcast_convert_type
    broadcast_in_dim cbrt ceil clamp convert_element_type copy copy_p cos cosh
    custom_jvp_call div eq erf erf_inv erfc exp exp2 expand_dims expm1 floor ge gt imag
    integer_pow iota is_finite le lgamma digamma log log1p logistic lt max min mul ne
    neg nextafter not or pow real reduce_precision rem reshape round rsqrt select_n
    shift_left shift_right_arithmetic shift_right_logical sign sin sinh slice sqrt
    square squeeze stop_gradient sub tan tanh xor dynamic_slice pjit jit closed_call""".split()  # noqa: SIM905
)

# primitives XLA fuses into their consumers within an op, whose results (moved elements) the
# op's readers do not fuse: an op using one holds its outputs as arrays
MOVES = frozenset({"concatenate", "pad", "rev", "transpose"})
VIEWS = frozenset({"reshape", "squeeze", "expand_dims", "bitcast_convert_type"})


def _nbytes(aval: Any) -> int:
    shape = getattr(aval, "shape", None)
    dtype = getattr(aval, "dtype", None)
    if shape is None or dtype is None:
        return 0
    try:
        itemsize = jnp.dtype(dtype).itemsize
    except TypeError:  # a random key: two 32-bit words
        itemsize = 8
    return math.prod(shape) * itemsize


def _jaxpr_cost(jaxpr: jex.Jaxpr) -> tuple[int, bool]:
    """The most bytes ``jaxpr``'s materialised arrays (module docstring) hold at once, its
    inputs and outputs aside; and whether every equation is fused (element-wise)."""
    last: dict[Any, int] = {}
    for k, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if isinstance(v, jex.Var):
                last[v] = k
    outs = {v for v in jaxpr.outvars if isinstance(v, jex.Var)}
    for eqn in reversed(jaxpr.eqns):  # an array an output only views is the output itself
        if eqn.primitive.name in VIEWS and eqn.outvars[0] in outs:
            outs.update(v for v in eqn.invars[:1] if isinstance(v, jex.Var))
    live: dict[Any, int] = {}
    peak, fused = 0, True
    for k, eqn in enumerate(jaxpr.eqns):
        name = eqn.primitive.name
        inner = eqn.params.get(CALLS.get(name, ""), None)
        scratch = 0
        if inner is not None:
            inner_jaxpr = inner.jaxpr if hasattr(inner, "jaxpr") else inner
            scratch, inner_fused = _jaxpr_cost(inner_jaxpr)
            made = not inner_fused
        else:
            made = name not in FUSED | MOVES
        fused = fused and not made and name not in MOVES
        size = sum(_nbytes(v.aval) for v in eqn.outvars if v not in outs) if made else 0
        peak = max(peak, sum(live.values()) + scratch + size)
        for v in eqn.outvars:
            if made and v not in outs and last.get(v, -1) > k:
                live[v] = _nbytes(v.aval)
        for v in [v for v in live if last.get(v, -1) <= k]:
            del live[v]
    return peak, fused


class Transients:
    """:func:`transient_bytes`'s pieces for one plan: per op, its payload's scratch bytes and
    whether it is element-wise, traced once; per exec, how many points it computes at once."""

    def __init__(self, plan: BufferPlan) -> None:
        self.plan = plan
        program = plan.program
        self.stored: set[Key] = {k for k in plan.plan.buffered if program.op(k[0]).kind != "input"}
        self.stored |= set(plan.plan.accumulated) | set(plan.captures)
        for rings in plan.plan.rings.values():
            self.stored |= set(rings)
        self.readers = {op: {r for r, _ in rs} for op, rs in program.readers().items()}
        self.at_once: dict[int, int] = {}  # id(exec) -> points computed at once
        self.shared: set[int] = set()  # id(exec) of a query block: one gather for its points
        for nest in plan.nests.values():
            count = 1
            for loop, (_, n) in zip(nest.loops, nest.spans, strict=False):
                query = nest.query is not None and loop.dim == str(nest.query)
                count *= min(nest.rows, n) if query and nest.rows else n
            for ex in nest.execs:
                self.at_once[id(ex)] = count
                if nest.query is not None:  # a block's queries share each tile they read
                    self.shared.add(id(ex))
        self.nested = {ex.op for nest in plan.nests.values() for ex in nest.execs}
        self._costs: dict[int, tuple[int, bool, int]] = {}

    def cost(self, op_id: int) -> tuple[int, bool, int]:
        """Per point of ``op_id``: its payload's scratch bytes, whether the payload is
        element-wise (fused into its readers), and the bytes its range reads gather."""
        if op_id not in self._costs:
            self._costs[op_id] = self._cost(op_id)
        return self._costs[op_id]

    def _cost(self, op_id: int) -> tuple[int, bool, int]:
        plan = self.plan
        op = plan.program.op(op_id)
        tiled = plan.tileable(op)
        ranges, block = tiled if tiled is not None else ({}, 0)
        args = plan.abstract_args(op, ranges, block)
        gathered = sum(
            _nbytes(arg)
            for arg, edge in zip(args, op.inputs, strict=True)
            if _gathers(plan, edge, op.id in self.nested)
        )
        if op.kind != "apply" or op.payload is None:  # merges select, inputs are arguments
            return 0, True, gathered
        fn, args = plan.abstract_call(op, ranges, block)
        try:
            closed = jax.make_jaxpr(fn)(*args)
        except Exception:  # the lowering's own trace reports what is wrong with the payload
            return 0, True, gathered
        scratch, fused = _jaxpr_cost(closed.jaxpr)
        return scratch, fused, gathered

    def output_bytes(self, op_id: int) -> int:
        """The bytes of one point of ``op_id``'s outputs that no buffer keeps."""
        op = self.plan.program.op(op_id)
        return sum(
            math.prod(self.plan.shape(spec, op.domain)) * spec.dtype.itemsize
            for k, spec in enumerate(op.outputs)
            if (op_id, k) not in self.stored
        )


def _gathers(plan: BufferPlan, edge: Any, nested: bool) -> bool:
    """Whether reading ``edge`` gathers its range into an array of its own: a range whose
    size varies over the reader's points (padded to its largest), or any range read by an op
    of a nest computed at once (each point's range, stacked). A static range read at one
    point is a slice XLA fuses into its reader."""
    ranges = [item for item in edge.index if isinstance(item, Slice)]
    return bool(ranges) and (nested or not all(plan.is_static(item.size) for item in ranges))


def transient_bytes(plan: BufferPlan, top: list[Node]) -> list[int]:
    """Per top-level step (``top``: the schedule's steps other than allocs and frees), the
    most bytes of transients (module docstring) held at once during it."""
    found = Transients(plan)
    ops_of = [[n for n in walk(s) if isinstance(n, Exec)] for s in top]
    where: dict[int, list[int]] = {}
    for i, execs in enumerate(ops_of):
        for ex in execs:
            where.setdefault(ex.op, []).append(i)
    across = [0] * len(top)  # outputs of top-level execs read at a later step
    for i, step in enumerate(top):
        node = step.body if isinstance(step, Guard) else step
        if not isinstance(node, Exec):
            continue
        _, fused, _ = found.cost(node.op)
        size = found.output_bytes(node.op)
        reading = [j for r in found.readers[node.op] for j in where.get(r, []) if j > i]
        if fused or not size or not reading:
            continue
        for j in range(i, max(reading) + 1):
            across[j] += size
    copies = output_copies(plan)
    return [copies + across[i] + _within(found, execs) for i, execs in enumerate(ops_of)]


def output_copies(plan: BufferPlan) -> int:
    """The bytes of the outputs read from a full buffer other than as the buffer is (another
    axis order, a part of it): each is an array of its own, held, as XLA holds every output,
    throughout the program. An output that is its buffer whole is the buffer itself."""
    total = 0
    for out in plan.program.outputs:
        key = (out.edge.src, out.edge.out)
        if key not in plan.plan.buffered or plan.program.op(key[0]).kind == "input":
            continue
        if out.name in plan.plan.captured or _whole_buffer(plan, out):
            continue
        lead = math.prod(plan.bounds[d.bound] for d in out.domain)
        total += lead * math.prod(plan.shape(out.spec, out.domain)) * out.spec.dtype.itemsize
    return total


def _whole_buffer(plan: BufferPlan, out: Any) -> bool:
    """Whether output ``out`` is its full buffer as stored: every point read, in order."""
    key = (out.edge.src, out.edge.out)
    freed = any(isinstance(n, Free) and (n.op, n.out) == key for n in walk(plan.tree))
    if key in plan.cycles or key in plan.splits or key in plan.layouts or freed:
        return False
    if out.perm is not None and tuple(out.perm) != tuple(range(len(out.perm))):
        return False
    shape = plan.logical_shape(*key)
    index = plan.stored_index(out.edge)
    if len(out.domain) + sum(isinstance(i, Slice) for i in index) != len(index):
        return False
    return all(  # a point read per domain dim in order, or a slice of a whole axis
        (
            not isinstance(item, Slice) and str(item) == str(out.domain[k])
            if k < len(out.domain)
            else isinstance(item, Slice)
            and str(item.start) == "0"
            and plan.is_static(item.size)
            and int(item.size.evaluate(plan.runtime)) == shape[axis]
        )
        for k, (axis, item) in enumerate(enumerate(index))
    )


def _within(found: Transients, execs: list[Exec]) -> int:
    """The most transient bytes one step's execs hold at once (in program order): each exec's
    scratch and gathers while it runs, and the unkept outputs of the execs before it that a
    later exec of the step still reads."""
    order = [ex.op for ex in execs]
    last = {op: k for k, op in enumerate(order)}
    live: dict[int, int] = {}
    peak = 0
    for k, ex in enumerate(execs):
        count = found.at_once.get(id(ex), 1)
        scratch, fused, gathered = found.cost(ex.op)
        readers = found.readers[ex.op]
        later = any(last.get(r, -1) > k for r in readers)
        size = 0 if fused or not later else found.output_bytes(ex.op) * count
        gathered *= 1 if id(ex) in found.shared else count
        peak = max(peak, sum(live.values()) + scratch * count + gathered + size)
        if size:
            live[ex.op] = size
        for op in [op for op in live if not any(last.get(r, -1) > k for r in found.readers[op])]:
            del live[op]
    return peak
