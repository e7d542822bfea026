"""The bytes a compiled program holds only while it computes: transients, as planned.

The stored values (:meth:`.buffer_plan.BufferPlan.stored_values`) are what the program keeps
between the points that produce and read them. XLA holds more while it runs: values passed
from one step to the next without a buffer, the gathers of ranges that a nest of independent
points computes at once, and the arrays inside an op's own computation. :func:`transient_bytes`
plans them per top-level step of the schedule, with XLA's fusion in mind:

- an array is *materialised* by a primitive that XLA does not fuse into its consumers (a
  contraction, a reduction, a scan, a gather, a random number generator's bits, which work on
  two more arrays of their size); an element-wise chain (``tanh``, ``*``, ``select``,
  broadcasts, reshapes, slices) is fused into whatever reads it and holds nothing of its own,
  unless XLA would rather keep it than compute it again per reader: read by a contraction or
  a loop (which take arrays), by a reduction and another reader, or by two readers when it is
  expensive (a transcendental) or computed from two arrays or more with more elements than it
  makes (each level of an associative scan). A move of elements (a concatenation, a pad, a
  transpose) is fused into its readers inside the op, but makes the op's output an array its
  readers outside do not fuse;
- an op's *scratch* is the most bytes its payload's materialised arrays hold at once, its
  inputs and outputs aside (its jaxpr walked equation by equation, each array live from the
  equation making it to its last reader, a fused reader reading for its own readers), traced
  at the shapes the lowering calls it with: a tile of its ranges when it is taken in tiles,
  with the tile loop's carried result. An element-wise result takes the buffer of a same-sized
  array it reads that dies there (a contraction's result, then its activation), so an array
  that becomes an output's buffer is the output;
- an op's output that no buffer keeps is live from its execution to its last reader's: across
  top-level steps for an op run at the top level, within the step otherwise (a value of one
  iteration); not at all when the op's payload is element-wise (fused into its readers) or
  when the output is computed element-wise from one array the op holds anyway (``1 - t``
  beside ``t``: its readers compute it again). When the op's outputs are a fused tail over
  its materialised arrays, those arrays stand for them at the op's own step;
- a read of a range is gathered: during its reader's execution, the range's bytes (a tile's
  when the reader takes it in tiles); in a nest computed at once (one fused computation over
  all its points) each gather is held until the nest's last op;
- a loop nest computed at once (:mod:`.blocks`) holds each of these for all its points (for a
  block of queries when it runs in query blocks).

These are estimates of what XLA does, not a copy of its buffer assignment: XLA also removes
common subexpressions, orders computations to lower its peak and keeps a few bytes of its own
(loop counters, alignment to 64 bytes) that matter only for tiny programs. Each rule is
tested against ``memory_analysis()`` of a payload compiled alone (``tests/lower/
test_transients.py``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.extend.core as jex
import jax.numpy as jnp

from .._ir.expr import Slice
from .._ir.jaxprs import CALLS
from .._schedule.tree import Exec, Guard, Node, walk
from .output_plan import buffered_outputs

if TYPE_CHECKING:
    from .._ir.program import Op
    from .buffer_plan import BufferPlan

Key = tuple[int, int]

# primitives XLA fuses into their consumers: element-wise maths, and moves of elements that
# need no array of their own
FUSED = frozenset(
    """abs acos acosh add add_any and asin asinh atan atan2 atanh bitcast_convert_type
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

# primitives that read their operands as arrays: XLA fuses no element-wise producer into a
# contraction, a sort or a loop (a transpose into a contraction is its dimension numbers)
TAKES_ARRAYS = frozenset(
    """dot_general conv_general_dilated sort scan while cond fft triangular_solve cholesky
    lu eigh svd qr""".split()  # noqa: SIM905
)

REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or argmax argmin".split()  # noqa: SIM905
)

CONTRACTIONS = frozenset({"dot_general", "conv_general_dilated"})

# fused primitives that read other elements than the ones they make (a slice, a broadcast):
# a value computed from two of them over one array reads that array twice
REINDEX = frozenset(
    "broadcast_in_dim concatenate dynamic_slice pad rev slice transpose".split()  # noqa: SIM905
)

# element-wise primitives XLA does not copy into more than one reader: their result, read by
# two equations or more, is an array
EXPENSIVE = frozenset(
    """acos acosh asin asinh atan atan2 atanh cbrt cos cosh digamma erf erf_inv erfc exp
    exp2 expm1 lgamma log log1p logistic pow rsqrt sin sinh sqrt tan tanh""".split()  # noqa: SIM905
)


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


class JaxprCost(NamedTuple):
    """What a jaxpr holds (:func:`_jaxpr_cost`)."""

    scratch: int  # the most bytes its materialised arrays hold at once, in- and outputs aside
    fused: bool  # every equation is fused (element-wise)
    tail: bool  # its outputs are made by fused equations (from its materialised arrays,
    # which stand for them until a reader fuses those equations)
    free: frozenset[int]  # outputs computed by fused equations from one array, an input or
    # a materialised output: a reader computes them again rather than XLA holding them
    constant: frozenset[int] = frozenset()  # outputs made from literals alone (zeros):
    # XLA folds them into their readers, no array of their own


def _jaxpr_cost(jaxpr: jex.Jaxpr) -> JaxprCost:
    """:class:`JaxprCost` of ``jaxpr``: its materialised arrays (module docstring), traced
    equation by equation.

    An array is live from the equation making it to its last reader, where a fused reader
    reads it on behalf of the readers of its own result (XLA computes the fused equation
    inside them)."""
    eqns = _live_equations(jaxpr)
    reads: dict[Any, int] = {}
    reduced: set[Any] = set()  # read by a reduction
    constant: set[Any] = set()  # made from literals alone: folded or fused by XLA
    for eqn in eqns:
        for v in {v for v in eqn.invars if isinstance(v, jex.Var)}:
            reads[v] = reads.get(v, 0) + 1
        if eqn.primitive.name in REDUCTIONS:
            reduced.update(_vars(eqn))
        if eqn.primitive.name in FUSED | MOVES and all(
            not isinstance(v, jex.Var) or v in constant for v in eqn.invars
        ):
            constant.update(eqn.outvars)
    # read as arrays: by a contraction, a loop..., or by a reduction and another reader (XLA
    # fuses an element-wise producer into one reduction, not into it and another reader)
    needed: set[Any] = {v for v in reduced if reads[v] >= 2}
    for eqn in reversed(eqns):
        name = eqn.primitive.name
        if name in TAKES_ARRAYS:
            needed.update(_vars(eqn))
        elif name in VIEWS | {"transpose"} and eqn.outvars[0] in needed:
            needed.update(_vars(eqn))  # a view of an array is that array
    # what a value is computed from: (array, how it is indexed) of the inputs and materialised
    # arrays it reads through fused equations, scalars aside
    roots: dict[Any, frozenset[Any]] = {v: _root(v) for v in jaxpr.invars}
    results = {v for v in jaxpr.outvars if isinstance(v, jex.Var)}  # arrays, as outputs
    computed_from: dict[Any, frozenset[Any]] = {}  # an output's roots
    made: list[bool] = []
    inner_cost: list[tuple[int, bool]] = []  # (scratch, fused) of a called jaxpr
    for k, eqn in enumerate(eqns):
        name = eqn.primitive.name
        inner = eqn.params.get(CALLS.get(name, ""), None)
        if inner is not None:
            scratch, inner_fused, *_ = _jaxpr_cost(
                inner.jaxpr if hasattr(inner, "jaxpr") else inner
            )
            inner_cost.append((scratch, inner_fused))
            made.append(not inner_fused)
        else:  # a random generator's hash works on two arrays of its output's size
            working = 2 * sum(_nbytes(v.aval) for v in eqn.outvars) if name == "random_bits" else 0
            inner_cost.append((working, True))
            made.append(
                name not in FUSED | MOVES
                or _not_copied(eqn, reads, constant, roots)
                or (name not in VIEWS | {"transpose"} and eqn.outvars[0] in needed - constant)
            )
        for v in eqn.outvars:
            if made[-1]:
                roots[v] = _root(v)
            elif v not in constant:
                read = _sources(eqn, roots)
                if name in REINDEX:  # other elements of the same arrays: other reads
                    read = frozenset(((key, k), n) for key, n in read)
                roots[v] = read
            if v in results:
                computed_from[v] = roots.get(v, frozenset())
                roots[v] = _root(v)
    last: dict[Any, int] = {v: len(eqns) for v in jaxpr.outvars if isinstance(v, jex.Var)}
    for k in range(len(eqns) - 1, -1, -1):  # a fused reader reads for its result's readers
        eqn = eqns[k]
        until = k if made[k] else max([k] + [last.get(v, k) for v in eqn.outvars])
        for v in eqn.invars:
            if isinstance(v, jex.Var):
                last[v] = max(last.get(v, -1), until)
    outs = set(results)
    producer = {v: eqn.primitive.name for eqn in eqns for v in eqn.outvars}
    for eqn in reversed(eqns):  # an array an output only views is the output itself
        name, arg = eqn.primitive.name, eqn.invars[0] if eqn.invars else None
        if eqn.outvars[0] not in outs or not isinstance(arg, jex.Var):
            continue
        # a contraction whose transpose is an output makes it in that layout (XLA's layout
        # assignment), read once
        laid = name == "transpose" and producer.get(arg) in CONTRACTIONS and reads.get(arg) == 1
        if name in VIEWS or laid:
            outs.add(arg)
    outputs_made = any(made[k] for k, eqn in enumerate(eqns) for v in eqn.outvars if v in outs)
    reused = _reused(eqns, made, roots, last, outs)
    for u in list(reused)[::-1]:  # an array whose buffer becomes an output's is the output
        if reused[u] in outs:
            outs.add(u)
    live: dict[Any, int] = {}
    peak, fused = 0, True
    for k, eqn in enumerate(eqns):
        fused = fused and not made[k] and eqn.primitive.name not in MOVES
        kept = [v for v in eqn.outvars if v not in outs] if made[k] else []
        size = sum(_nbytes(v.aval) for v in kept if v not in reused.values())
        peak = max(peak, sum(live.values()) + inner_cost[k][0] + size)
        live.update((v, _nbytes(v.aval)) for v in kept if last.get(v, -1) > k)
        for v in [v for v in live if last.get(v, -1) <= k]:
            del live[v]
    held = set(jaxpr.invars)  # inputs, and outputs readers do not compute again
    for k, eqn in enumerate(eqns):
        for v in eqn.outvars:
            sources = {_untagged(key) for key, _ in computed_from.get(v, ())}
            if v in results and (made[k] or len(sources) > 1 or not sources <= held):
                held.add(v)
    free = frozenset(
        j for j, v in enumerate(jaxpr.outvars) if isinstance(v, jex.Var) and v not in held
    )
    constants = frozenset(
        j for j, v in enumerate(jaxpr.outvars) if not isinstance(v, jex.Var) or v in constant
    )
    return JaxprCost(peak, fused, not fused and not outputs_made, free, constants)


def _untagged(key: Any) -> Any:
    """The array of a root's key (a reindexed read tags it with the equation's position)."""
    while isinstance(key, tuple):
        key = key[0]
    return key


def _reused(
    eqns: list[jex.JaxprEqn],
    made: list[bool],
    roots: dict[Any, frozenset[Any]],
    last: dict[Any, int],
    outs: set[Any],
) -> dict[Any, Any]:
    """Materialised arrays whose buffer XLA gives to a later array: an element-wise equation
    (with the fused ones it reads through) writes its array, or an output, in the buffer of
    an array of the same size that it reads element for element and that dies there. In
    equation order: array -> the array taking its buffer."""
    arrays = {v for k, eqn in enumerate(eqns) if made[k] for v in eqn.outvars}
    reused: dict[Any, Any] = {}
    for k, eqn in enumerate(eqns):
        if eqn.primitive.name not in FUSED or eqn.primitive.name in CALLS:
            continue
        sources = _sources(eqn, roots)
        for w in eqn.outvars:
            if not (made[k] or w in outs):
                continue
            # an array read for an output lives to the end: it dies when the output is made
            dies = {k, len(eqns)} if w in outs else {k}
            for u, _ in sources:  # read element for element: not through a reindexing
                if (
                    u in arrays
                    and last.get(u) in dies
                    and u not in reused
                    and _nbytes(u.aval) == _nbytes(w.aval)
                ):
                    reused[u] = w
                    break
    return reused


def _live_equations(jaxpr: jex.Jaxpr) -> list[jex.JaxprEqn]:
    """``jaxpr``'s equations that an output depends on (or with effects): XLA removes the
    others (a gradient's unused terms)."""
    wanted = {v for v in jaxpr.outvars if isinstance(v, jex.Var)}
    kept = []
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(v in wanted for v in eqn.outvars):
            kept.append(eqn)
            wanted.update(_vars(eqn))
    return kept[::-1]


def _root(v: Any) -> frozenset[Any]:
    """``v`` as a root of the values computed from it: itself, read whole."""
    n = math.prod(getattr(v.aval, "shape", ()))
    return frozenset({(v, n)}) if n > 1 else frozenset()


def _vars(eqn: jex.JaxprEqn) -> list[Any]:
    return [v for v in eqn.invars if isinstance(v, jex.Var)]


def _sources(eqn: jex.JaxprEqn, roots: dict[Any, frozenset[Any]]) -> frozenset[Any]:
    """The roots (arrays, and how many elements each is read as) ``eqn`` computes from."""
    return frozenset().union(*(roots.get(v, frozenset()) for v in _vars(eqn)))


def _not_copied(
    eqn: jex.JaxprEqn,
    reads: dict[Any, int],
    constant: set[Any],
    roots: dict[Any, frozenset[Any]],
) -> bool:
    """Whether XLA keeps the result of ``eqn``, an element-wise equation read by two
    equations or more, as an array rather than computing it again inside each reader: an
    expensive one (a transcendental), or one computed from two arrays or more (inputs or
    arrays of its own, through fused equations) with more elements than it makes (copying it
    would read them again per reader), such as each level of an associative scan."""
    out = eqn.outvars[0]
    if reads.get(out, 0) < 2 or eqn.primitive.name in VIEWS or out in constant:
        return False
    if eqn.primitive.name in EXPENSIVE:
        return True
    sources = _sources(eqn, roots)
    elements = sum(n for _, n in sources)
    return len(sources) >= 2 and elements > math.prod(getattr(out.aval, "shape", ()))


def _kept_for_readers(jaxpr: jex.Jaxpr) -> bool:
    """Whether XLA keeps the result of ``jaxpr``, an element-wise payload read by two ops or
    more, as an array (:func:`_not_copied`'s rule for the payload as a whole): it computes an
    expensive function, or reads more elements than it makes from two arrays or more."""
    if any(eqn.primitive.name in EXPENSIVE for eqn in jaxpr.eqns):
        return True
    arrays = [v for v in jaxpr.invars if math.prod(getattr(v.aval, "shape", ())) > 1]
    made = sum(math.prod(getattr(v.aval, "shape", ())) for v in jaxpr.outvars)
    return len(arrays) >= 2 and sum(math.prod(v.aval.shape) for v in arrays) > made


class Cost(NamedTuple):
    """Per point of an op: its payload's scratch bytes; whether the payload is element-wise
    (fused into its readers); the bytes its range reads gather; whether its outputs are made
    by fused equations from arrays of its scratch (which stand for them at its own step)."""

    scratch: int
    fused: bool
    gathered: int
    tail: bool = False
    free: frozenset[int] = frozenset()  # outputs its readers compute again (JaxprCost.free)
    constant: frozenset[int] = frozenset()  # outputs made from literals (JaxprCost.constant)


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
        self.readers = plan.readers
        self.at_once: dict[int, int] = {}  # id(exec) -> points computed at once
        self.shared: set[int] = set()  # id(exec) of a query block: one gather for its points
        self.nest_of: dict[int, int] = {}  # id(exec) -> its nest's number
        for number, nest in enumerate(plan.nests.values()):
            count = 1
            for loop, (_, n) in zip(nest.loops, nest.spans, strict=False):
                query = nest.query is not None and loop.dim == str(nest.query)
                count *= min(nest.rows, n) if query and nest.rows else n
            for ex in nest.execs:
                self.at_once[id(ex)] = count
                self.nest_of[id(ex)] = number
                if nest.query is not None:  # a block's queries share each tile they read
                    self.shared.add(id(ex))
        self.nested = {ex.op for nest in plan.nests.values() for ex in nest.execs}
        self._costs: dict[int, Cost] = {}

    def cost(self, op_id: int) -> Cost:
        """Per point of ``op_id``: :class:`Cost`, its payload traced once."""
        if op_id not in self._costs:
            self._costs[op_id] = self._cost(op_id)
        return self._costs[op_id]

    def _cost(self, op_id: int) -> Cost:
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
            return Cost(0, True, gathered)
        if op_id not in plan.payload_costs:  # traced once per plan, whichever nests it plans
            plan.payload_costs[op_id] = self._payload(op, tiled)
        return plan.payload_costs[op_id]._replace(gathered=gathered)

    def _payload(self, op: Op, tiled: tuple[dict, int] | None) -> Cost:
        """``op``'s :class:`Cost` from its payload's jaxpr, its gathers aside."""
        ranges, block = tiled if tiled is not None else ({}, 0)
        fn, args = self.plan.abstract_call(op, ranges, block)
        try:
            closed = jax.make_jaxpr(fn)(*args)
        except Exception:  # the lowering's own trace reports what is wrong with the payload
            return Cost(0, True, 0)
        scratch, fused, tail, free, constant = _jaxpr_cost(closed.jaxpr)
        if len(closed.jaxpr.outvars) != len(op.outputs):
            free = constant = frozenset()
        if tiled is not None:  # the loop over its tiles carries its outputs, reduced so far
            scratch += sum(_nbytes(v.aval) for v in closed.jaxpr.outvars)
        if fused and len(self.readers[op.id]) >= 2 and _kept_for_readers(closed.jaxpr):
            fused = False  # XLA keeps it as an array rather than computing it per reader
        return Cost(scratch, fused, 0, tail, free, constant)

    def output_bytes(self, op_id: int) -> int:
        """The bytes of one point of ``op_id``'s outputs that no buffer keeps and that its
        readers do not compute again (:attr:`Cost.free`)."""
        op = self.plan.program.op(op_id)
        free = self.cost(op_id).free
        return sum(
            math.prod(self.plan.shape(spec, op.domain)) * spec.dtype.itemsize
            for k, spec in enumerate(op.outputs)
            if (op_id, k) not in self.stored and k not in free
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
        cost = found.cost(node.op)
        size = found.output_bytes(node.op)
        reading = [j for r in found.readers[node.op] for j in where.get(r, []) if j > i]
        if cost.fused or not size or not reading:
            continue
        for j in range(i + cost.tail, max(reading) + 1):
            across[j] += size
    copies = output_copies(plan)
    return [copies + across[i] + _within(found, execs) for i, execs in enumerate(ops_of)]


def output_copies(plan: BufferPlan) -> int:
    """The bytes of the outputs read from a full buffer other than as the buffer is (a part
    of it, another axis order: not :attr:`.BufferPlan.whole_outputs`, or transposed): each is
    an array of its own, held, as XLA holds every output, throughout the program. An output
    that is its buffer whole is the buffer itself."""
    total = 0
    for out in buffered_outputs(plan):
        in_order = out.perm is None or tuple(out.perm) == tuple(range(len(out.perm)))
        if out.name in plan.whole_outputs and in_order:
            continue
        lead = math.prod(plan.bounds[d.bound] for d in out.domain)
        total += lead * math.prod(plan.shape(out.spec, out.domain)) * out.spec.dtype.itemsize
    return total


def _within(found: Transients, execs: list[Exec]) -> int:
    """The most transient bytes one step's execs hold at once (in program order): each exec's
    scratch while it runs; its gathers while it runs, or, in a nest computed at once (one
    fused computation over all its points), until the nest's last exec of the step; and the
    unkept outputs of the execs before it that a later exec of the step still reads."""
    order = [ex.op for ex in execs]
    last = {op: k for k, op in enumerate(order)}
    nest_end = {found.nest_of[id(ex)]: k for k, ex in enumerate(execs) if id(ex) in found.nest_of}
    live: dict[int, int] = {}
    gathers: dict[int, int] = {}  # exec's position -> its gathers held to its nest's end
    peak = 0
    for k, ex in enumerate(execs):
        count = found.at_once.get(id(ex), 1)
        scratch, fused, gathered, *_ = found.cost(ex.op)
        readers = found.readers[ex.op]
        later = any(last.get(r, -1) > k for r in readers)
        size = 0 if fused or not later else found.output_bytes(ex.op) * count
        gathered *= 1 if id(ex) in found.shared else count
        held = sum(live.values()) + sum(gathers.values())
        peak = max(peak, held + scratch * count + gathered + size)
        if size:
            live[ex.op] = size
        if gathered and nest_end.get(found.nest_of.get(id(ex), -1), -1) > k:
            gathers[k] = gathered
        for op in [op for op in live if not any(last.get(r, -1) > k for r in found.readers[op])]:
            del live[op]
        for j in [j for j in gathers if nest_end[found.nest_of[id(execs[j])]] <= k]:
            del gathers[j]
    return peak
