"""Rewrites to a fixed point: algebraic identities, movement folds and recurrence lifts.

:func:`rewrite` applies the rule table ``RULES = ALGEBRAIC + MOVEMENT + LIFTS`` until no rule
matches; a rule looks at one op and returns the rewritten program, or ``None``. What an
``apply`` op computes is read off the jaxpr of its payload traced on its (static) read specs;
other payloads are opaque. Every rule keeps the program's values:

- algebraic: an op returning its input unchanged (``x*1``, ``x+0``, ``--x``) is dropped, and
  its readers read the input;
- movement: two transposes or two reshapes in a row become one op, or none;
- lifts: a recurrence along ``t`` with a closed form becomes one op over the other dims that
  computes the whole ``t`` axis at once, and the recurrence a *pick* of that axis (see
  :mod:`.picks`): its readers are unchanged, the recurrence is gone.
  ``s[0] = a; s[t] = s[t-1] + x[t]`` is a cumulative sum of ``a, x[1:T]`` (a plain sum when
  only ``s[T-1]`` is read); ``g[T-1] = a; g[t] = x[t] + c * g[t+1]`` (``c`` a constant) a
  reverse discounted sum, computed by an associative scan. No recurrence along the dim
  ``p.stop_when`` ends is lifted: it runs inside the loop the stop ends, up to the stop.

Example: ``p.compile(bounds, pipeline=tj.Pipeline(passes=(..., rewrite)))``. Surviving ops keep
their ids; new ops take fresh ids and the source line of the op they replace.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._ir.expr import (
    TRUE,
    BoolConst,
    Const,
    Expr,
    IndexItem,
    Slice,
    Symbol,
    eq,
    substitute,
    symbols_of,
)
from .._ir.program import Edge, Op, Payload, Program, TensorSpec
from .._ir.simplify import simplify
from .picks import next_id, pick_payload
from .unread import trace_sized, without_unread

Matcher = Callable[[jex.ClosedJaxpr], "int | None"]  # which payload input an identity returns


@dataclasses.dataclass
class Context:
    """The program being rewritten and the traced payloads of its ops, by op id."""

    program: Program
    traces: dict[int, tuple[Op, jex.ClosedJaxpr | None]] = dataclasses.field(default_factory=dict)
    ahead: tuple[Program, dict[Symbol, bool]] | None = None  # the program, its dims looking ahead
    traced_sized: dict[int, tuple[Op, Any]] = dataclasses.field(default_factory=dict)

    def looks_ahead(self, d: Symbol) -> bool:
        """:func:`_looks_ahead` of the current program, asked once per dim."""
        if self.ahead is None or self.ahead[0] is not self.program:
            self.ahead = (self.program, {})
        memo = self.ahead[1]
        if d not in memo:
            memo[d] = _looks_ahead(self.program, d)
        return memo[d]

    def sized(self, op: Op) -> tuple[jex.ClosedJaxpr, list[jax.ShapeDtypeStruct]] | None:
        """:func:`.unread.trace_sized` of ``op``, kept per op."""
        cached = self.traced_sized.get(op.id)
        if cached is None or cached[0] is not op:
            cached = self.traced_sized[op.id] = (op, trace_sized(self.program, op))
        return cached[1]

    def trace(self, op: Op) -> jex.ClosedJaxpr | None:
        """The jaxpr of ``op``'s payload on its read specs; ``None`` when it is opaque."""
        cached = self.traces.get(op.id)
        if cached is None or cached[0] is not op:
            cached = self.traces[op.id] = (op, _trace(self.program, op))
        return cached[1]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rewrite: ``match(ctx, op)`` is the program with ``op`` rewritten, or ``None``."""

    name: str
    match: Callable[[Context, Op], Program | None]


def rewrite(program: Program) -> Program:
    """``program`` with :data:`RULES` applied until none matches (see the module docstring).

    Returns ``program`` itself when no rule matches; the input is never changed.
    """
    ctx = Context(program)
    at = 0  # where the last rewrite was: the scan goes on from there, round the program
    while True:
        ops = ctx.program.ops
        at = min(at, len(ops))
        found = (
            (k, rule.match(ctx, ops[k]))
            for k in (*range(at, len(ops)), *range(at))
            for rule in RULES
        )
        at, changed = next(((k, p) for k, p in found if p is not None), (at, None))
        if changed is None:
            return ctx.program
        ctx.program = changed


# -- tracing payloads ------------------------------------------------------------------------------


def _trace(program: Program, op: Op) -> jex.ClosedJaxpr | None:
    """The payload's jaxpr on abstract values of the read specs, when they are all static
    (detached and accumulating payloads are opaque: their flags mean something downstream)."""
    payload = op.payload
    if op.kind != "apply" or payload is None or len(op.outputs) != 1 or len(op.inputs) > 2:
        return None  # no rule matches more inputs: big payloads are never traced
    if payload.uses_point or payload.accumulates or not payload.differentiable:
        return None
    specs = [program.read_spec(edge) for edge in op.inputs]
    if not op.outputs[0].is_static or not all(spec.is_static for spec in specs):
        return None
    weak = [program.op(e.src).outputs[e.out].weak_type and not e.slices for e in op.inputs]
    args = [
        jax.ShapeDtypeStruct(sp.shape, sp.dtype, weak_type=w)
        for sp, w in zip(specs, weak, strict=True)
    ]
    try:
        closed = jax.make_jaxpr(payload.fn)(*args)
    except Exception:  # a payload that needs concrete values (host calls, ...) stays opaque
        return None
    return None if closed.effects else closed  # a payload printing or calling back is kept


def _only_eqn(closed: jex.ClosedJaxpr, primitive: str) -> jex.JaxprEqn | None:
    """The jaxpr's one equation, when it is a ``primitive`` giving the one output."""
    jaxpr = closed.jaxpr
    if len(jaxpr.eqns) != 1 or len(jaxpr.outvars) != 1:
        return None
    (eqn,) = jaxpr.eqns
    return eqn if eqn.primitive.name == primitive and eqn.outvars[0] is jaxpr.outvars[0] else None


def _position(atoms: list[Any], atom: Any) -> int | None:
    """Which of ``atoms`` (jaxpr inputs, constants) ``atom`` is, if any."""
    return next((k for k, a in enumerate(atoms) if a is atom), None)


def _scalar(closed: jex.ClosedJaxpr, atom: Any) -> Any:
    """The number a constant operand holds (a literal, or a captured all-equal array)."""
    if isinstance(atom, jex.Literal):
        value = atom.val
    elif (k := _position(closed.jaxpr.constvars, atom)) is not None:
        value = closed.consts[k]
    else:
        return None
    flat = np.asarray(value).reshape(-1)
    return flat[0].item() if flat.size and np.all(flat == flat[0]) else None


def _unary(ctx: Context, op: Op, primitive: str) -> jex.JaxprEqn | None:
    """The one equation when ``op`` is ``primitive`` of one input read at its own point."""
    closed = ctx.trace(op)
    eqn = None if closed is None else _only_eqn(closed, primitive)
    if eqn is None or len(op.inputs) != 1 or not _at_own_point(op, op.inputs[0]):
        return None
    return eqn if eqn.invars[0] is closed.jaxpr.invars[0] else None


# -- editing programs ------------------------------------------------------------------------------


def _at_own_point(op: Op, edge: Edge) -> bool:
    """Whether ``op`` reads ``edge`` unconditionally at its own point."""
    return edge.index == op.domain and edge.cond == TRUE and edge.src != op.id


def _same_spec(a: TensorSpec, b: TensorSpec) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype


def _replace_reads(program: Program, src: int, read: Callable[[Edge], Edge]) -> Program:
    """``program`` with every read of op ``src`` (by ops and outputs) replaced by ``read(edge)``."""

    def fix(edge: Edge) -> Edge:
        return read(edge) if edge.src == src else edge

    ops = []
    for op in program.ops:
        inputs = tuple(fix(edge) for edge in op.inputs)
        ops.append(op if inputs == op.inputs else op.replace(inputs=inputs))
    outputs = tuple(
        dataclasses.replace(out, edge=fix(out.edge)) if out.edge.src == src else out
        for out in program.outputs
    )
    return program.replace(ops=tuple(ops), outputs=outputs)


def _readers(program: Program, op_id: int) -> set[int]:
    """Ids of the ops reading ``op_id``; ``-1`` stands for program outputs."""
    found = {op.id for op in program.ops if any(e.src == op_id for e in op.inputs)}
    return found | ({-1} if any(out.edge.src == op_id for out in program.outputs) else set())


def _drop_orphans(program: Program, candidates: list[int]) -> Program:
    """``program`` without the ``candidates`` nothing reads, and what only they read."""
    while candidates:
        op = next((o for o in program.ops if o.id == candidates[-1]), None)
        candidates.pop()
        if op is None or op.kind not in ("apply", "merge") or _readers(program, op.id):
            continue
        program = program.replace(ops=tuple(o for o in program.ops if o is not op))
        candidates.extend(edge.src for edge in op.inputs)
    return program


def _forward(ctx: Context, op: Op, to: Edge) -> Program | None:
    """Readers of ``op`` read ``to`` (an own-point read of the same value) and ``op`` goes."""
    if not _same_spec(op.outputs[0], ctx.program.read_spec(to)):
        return None
    program = _replace_reads(
        ctx.program, op.id, lambda e: dataclasses.replace(e, src=to.src, out=to.out)
    )
    return _drop_orphans(program, [op.id])


At = tuple[tuple[str, int] | None, ...]  # per tracked dim: ("rel", offset), ("abs", c), or any


def _reaches_same(
    program: Program,
    edge: Edge,
    target: int,
    dims: tuple[Symbol, ...],
    looks_ahead: Callable[[Symbol], bool],
) -> bool:
    """Whether what ``edge`` reads depends on ``target`` at the same point of ``dims``.

    Reads are followed with where they lead on each of ``dims``: an offset from the start
    (``x[i-1]``: -1), a constant point (``x[0]``, whose merge branches that cannot hold there
    are skipped), or anywhere (a range, an op without the dim). Reaching ``target`` at offset
    0, at a constant or anywhere is a dependence. When no read of the program looks ahead
    along a dim (no ``x[i+1]``), a path that stepped back along it never returns, and is cut:
    a sum over ``b`` and ``t`` at iteration ``i`` may then be lifted although iteration
    ``i + 1`` reads it. Otherwise every path counts.
    """
    ahead = [looks_ahead(d) for d in dims]
    start = (edge.src, _follow(program, edge, dims, (("rel", 0),) * len(dims)))
    stack, seen = [start], set()
    while stack:
        op_id, at = stack.pop()
        behind = any(
            a is not None and a[1] < 0 and not far for a, far in zip(at, ahead, strict=True)
        )
        if behind or (op_id, at) in seen:
            continue
        if op_id == target and all(a is None or a[0] == "abs" or a[1] == 0 for a in at):
            return True
        seen.add((op_id, at))
        fixed = {d: Const(a[1]) for d, a in zip(dims, at, strict=True) if a and a[0] == "abs"}
        for read in program.op(op_id).inputs:
            if fixed and simplify(substitute(read.cond, fixed)) == BoolConst(False):
                continue  # a branch that does not hold at this constant point
            stack.append((read.src, _follow(program, read, dims, at)))
    return False


def _looks_ahead(program: Program, d: Symbol) -> bool:
    """Whether some read reaches a later point along ``d`` (``x[d+1]``) or one not a shift."""
    for op in program.ops:
        for read in op.inputs:
            producer = program.op(read.src)
            if d not in producer.domain or d not in op.domain:
                continue
            item = read.index[producer.domain.index(d)]
            if item == d:
                continue  # the same point, the most common read
            if isinstance(item, Slice):
                return True
            if isinstance(simplify(item), Const):
                continue  # a constant point: followed with its merge branches pruned
            offset = simplify(item - d)
            if not isinstance(offset, Const) or offset.value > 0:
                return True
    return False


def _follow(program: Program, edge: Edge, dims: tuple[Symbol, ...], at: At) -> At:
    """Where ``edge`` leads on each of ``dims`` from ``at``."""
    producer = program.op(edge.src)
    out: list[tuple[str, int] | None] = []
    for d, a in zip(dims, at, strict=True):
        if d not in producer.domain:
            out.append(None)
            continue
        item = edge.index[producer.domain.index(d)]
        if item == d:  # the same point, the most common read
            out.append(a)
            continue
        here = None if isinstance(item, Slice) else simplify(item)
        offset = None if here is None else simplify(here - d)
        if isinstance(here, Const):
            out.append(("abs", here.value))
        elif a is not None and isinstance(offset, Const):
            out.append((a[0], a[1] + offset.value))
        else:
            out.append(None)
    return tuple(out)


# -- algebraic identities ------------------------------------------------------------------------


def _forwards(primitive: str, neutral: int, sides: tuple[int, ...] = (0, 1)) -> Matcher:
    """Matcher: the payload is ``primitive`` of an input (a side in ``sides``) and ``neutral``."""

    def match(closed: jex.ClosedJaxpr) -> int | None:
        eqn = _only_eqn(closed, primitive)
        if eqn is None or len(eqn.invars) != 2:
            return None
        for side in sides:
            k = _position(closed.jaxpr.invars, eqn.invars[side])
            if k is not None and _scalar(closed, eqn.invars[1 - side]) == neutral:
                return k
        return None

    return match


def _passes_input(closed: jex.ClosedJaxpr) -> int | None:
    """Matcher: the payload returns an input without computing anything."""
    jaxpr = closed.jaxpr
    if jaxpr.eqns or len(jaxpr.outvars) != 1:
        return None
    return _position(jaxpr.invars, jaxpr.outvars[0])


def _same_dtype_cast(closed: jex.ClosedJaxpr) -> int | None:
    """Matcher: the payload converts an input to the dtype it already has."""
    eqn = _only_eqn(closed, "convert_element_type")
    same = eqn is not None and eqn.params["new_dtype"] == eqn.invars[0].aval.dtype
    return _position(closed.jaxpr.invars, eqn.invars[0]) if same else None


def _negates_twice(closed: jex.ClosedJaxpr) -> int | None:
    """Matcher: the payload is ``-(-x)`` of an input."""
    jaxpr = closed.jaxpr
    if [eqn.primitive.name for eqn in jaxpr.eqns] != ["neg", "neg"] or len(jaxpr.outvars) != 1:
        return None
    first, second = jaxpr.eqns
    chained = second.invars[0] is first.outvars[0] and second.outvars[0] is jaxpr.outvars[0]
    return _position(jaxpr.invars, first.invars[0]) if chained else None


def _removes(matcher: Matcher) -> Callable[[Context, Op], Program | None]:
    """Rule: drop an op whose payload returns an input unchanged (``matcher`` says which)."""

    def match(ctx: Context, op: Op) -> Program | None:
        closed = ctx.trace(op)
        k = None if closed is None else matcher(closed)
        if k is None or not _at_own_point(op, op.inputs[k]):
            return None
        return _forward(ctx, op, op.inputs[k])

    return match


def _neg_of_neg(ctx: Context, op: Op) -> Program | None:
    """Rule: ``-y`` where ``y = -x`` is another op: readers read ``x``."""
    found = _stacked(ctx, op, "neg")
    return None if found is None else _forward(ctx, op, found[0].inputs[0])


# -- movement ------------------------------------------------------------------------------------


def _stacked(ctx: Context, op: Op, primitive: str) -> tuple[Op, Any, Any] | None:
    """(producer, its equation, op's equation) when ``op`` and the op it reads at its own point
    are each ``primitive`` of one input read at their own point over the same domain."""
    outer = _unary(ctx, op, primitive)
    producer = None if outer is None else ctx.program.op(op.inputs[0].src)
    inner = None if producer is None else _unary(ctx, producer, primitive)
    if inner is None or producer.domain != op.domain:
        return None
    return producer, inner, outer


def _refold(ctx: Context, op: Op, producer: Op, fn: Callable[[Any], Any], name: str) -> Program:
    """``op`` recomputed from ``producer``'s input by ``fn`` (one payload instead of two)."""
    payload = Payload(lambda value: (fn(value),), name)
    source = dataclasses.replace(producer.inputs[0], source=op.inputs[0].source)
    new = op.replace(inputs=(source,), payload=payload)
    program = ctx.program.replace(ops=tuple(new if o.id == op.id else o for o in ctx.program.ops))
    return _drop_orphans(program, [producer.id])


def _fold_transposes(ctx: Context, op: Op) -> Program | None:
    """Rule: a transpose of a transpose is one transpose, or none when they cancel."""
    found = _stacked(ctx, op, "transpose")
    if found is None:
        return None
    producer, inner, outer = found
    first, second = inner.params["permutation"], outer.params["permutation"]
    perm = tuple(first[k] for k in second)
    if perm == tuple(range(len(perm))):
        return _forward(ctx, op, producer.inputs[0])
    return _refold(ctx, op, producer, lambda value: jnp.transpose(value, perm), "transpose")


def _fold_reshapes(ctx: Context, op: Op) -> Program | None:
    """Rule: a reshape of a reshape is one reshape, or none when it restores the shape."""
    found = _stacked(ctx, op, "reshape")
    if found is None or any(eqn.params.get("dimensions") for eqn in found[1:]):
        return None
    shape, producer = op.outputs[0].shape, found[0]
    restored = _forward(ctx, op, producer.inputs[0])
    return restored or _refold(ctx, op, producer, lambda v: jnp.reshape(v, shape), "reshape")


# -- recurrence lifts ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Recurrence:
    """A merge ``acc`` over ``t`` to lift: ``init`` (its value at one end) and ``x`` (the range
    it combines) as reads of the other dims; ``steps``: the ops computing a step (scaled by
    ``gamma``, when discounted)."""

    acc: Op
    t: Symbol
    init: Edge
    x: Edge
    steps: tuple[int, ...]
    gamma: Any = None


def _branches(op: Op, t: Symbol, end: Expr, rest: Expr) -> tuple[Edge, Edge] | None:
    """(the read at ``t == end``, the read elsewhere) of a two-branch merge over ``t``."""
    if op.kind != "merge" or len(op.inputs) != 2 or not op.outputs[0].is_static:
        return None
    first, other = simplify(eq(t, end)), simplify(rest)
    a, b = op.inputs
    conds = simplify(a.cond), simplify(b.cond)
    if conds[0] == first and conds[1] in (TRUE, other):
        return a, b
    if conds == (other, first):
        return b, a
    return None


def _compose(index: tuple[IndexItem, ...], reader: Op, edge: Edge) -> Edge | None:
    """``edge`` of ``reader`` as read from the point where ``reader`` is read at ``index``."""
    if edge.cond != TRUE or any(isinstance(item, Slice) for item in (*index, *edge.index)):
        return None
    point = dict(zip(reader.domain, index, strict=True))
    items = tuple(simplify(substitute(item, point)) for item in edge.index)
    return dataclasses.replace(edge, index=items)


def _shifted(op: Op, t: Symbol, by: int) -> tuple[Expr, ...]:
    """``op``'s own point with ``t`` moved by ``by``."""
    return tuple(simplify(d + by) if d == t else d for d in op.domain)


def _boundary(edge: Edge, t: Symbol, at: Expr) -> Edge:
    """``edge`` (read where ``t == at``) as a read of the other dims only."""
    items = tuple(simplify(substitute(item, {t: at})) for item in edge.index)
    return dataclasses.replace(edge, index=items, cond=TRUE)


def _ranged(edge: Edge, t: Symbol, start: Expr, stop: Expr, shifts: range) -> Edge | None:
    """``edge``, whose one ``t + c`` item (``c`` in ``shifts``) becomes ``start+c:stop+c``."""
    at = [k for k, item in enumerate(edge.index) if t in symbols_of(item)]
    if len(at) != 1:
        return None
    offset = simplify(edge.index[at[0]] - t)
    if not isinstance(offset, Const) or offset.value not in shifts:
        return None
    span = Slice(simplify(start + offset), simplify(stop + offset))
    return dataclasses.replace(
        edge, index=tuple(span if k == at[0] else item for k, item in enumerate(edge.index))
    )


def _valid_ends(ctx: Context, rec: _Recurrence) -> bool:
    """The reads feeding a lift have the recurrence's spec and bounds and do not depend on it."""
    program = ctx.program
    pos = next(k for k, item in enumerate(rec.x.index) if isinstance(item, Slice))
    if program.op(rec.x.src).domain[pos].bound != rec.t.bound or rec.init.slices:
        return False
    if not _same_spec(program.read_spec(rec.init), rec.acc.outputs[0]):
        return False
    others = tuple(d for d in rec.acc.domain if d != rec.t)
    return not any(
        _reaches_same(program, e, rec.acc.id, others, ctx.looks_ahead) for e in (rec.init, rec.x)
    )


def _adds_inputs(closed: jex.ClosedJaxpr) -> bool:
    """Whether the payload is ``a + b`` of its two inputs."""
    eqn, invars = _only_eqn(closed, "add"), closed.jaxpr.invars
    return (
        eqn is not None and len(invars) == 2 and {id(a) for a in eqn.invars} == set(map(id, invars))
    )


def _scale(closed: jex.ClosedJaxpr) -> Any:
    """``c`` when the payload is ``c * x`` or ``x * c`` of its one input, ``c`` a constant."""
    eqn = _only_eqn(closed, "mul")
    invars = closed.jaxpr.invars
    if eqn is None or len(invars) != 1 or eqn.outvars[0].aval.shape != invars[0].aval.shape:
        return None
    for side in (0, 1):
        if eqn.invars[side] is invars[0]:
            return _scalar(closed, eqn.invars[1 - side])
    return None


def _sum_reads(ctx: Context, step: Edge) -> list[Edge] | None:
    """The two reads of the op that ``step`` reads, from the step's point, when it adds them."""
    add = ctx.program.op(step.src)
    closed = ctx.trace(add)
    if closed is None or not _adds_inputs(closed):
        return None
    reads = [_compose(step.index, add, edge) for edge in add.inputs]
    return None if None in reads else reads


def _running_sum(ctx: Context, acc: Op, t: Symbol) -> _Recurrence | None:
    """``acc[0] = a; acc[t] = acc[t-1] + x[t]`` (operands in any order), or ``None``."""
    found = _branches(acc, t, Const(0), t >= 1)
    reads = None if found is None else _sum_reads(ctx, found[1])
    if reads is None:
        return None
    own = [k for k, r in enumerate(reads) if r.src == acc.id and r.index == _shifted(acc, t, -1)]
    if len(own) != 1:
        return None
    x = _ranged(reads[1 - own[0]], t, Const(1), t.bound, range(-1, 1))
    if x is None or not _same_spec(ctx.program.read_spec(found[1]), acc.outputs[0]):
        return None
    return _Recurrence(acc, t, _boundary(found[0], t, Const(0)), x, (found[1].src,))


def _discounted(ctx: Context, acc: Op, t: Symbol) -> _Recurrence | None:
    """``acc[T-1] = a; acc[t] = x[t] + c * acc[t+1]`` (operands in any order), or ``None``."""
    last = simplify(t.bound - 1)
    found = _branches(acc, t, last, t <= t.bound - 2)
    reads = None if found is None else _sum_reads(ctx, found[1])
    for k, read in enumerate(reads or ()):
        scale = ctx.program.op(read.src)
        traced = ctx.trace(scale)
        gamma = None if traced is None else _scale(traced)
        own = None if gamma is None else _compose(read.index, scale, scale.inputs[0])
        if own is None or own.src != acc.id or own.index != _shifted(acc, t, 1):
            continue
        x = _ranged(reads[1 - k], t, Const(0), last, range(0, 2))
        if x is None or not _same_spec(ctx.program.read_spec(found[1]), acc.outputs[0]):
            return None
        init = _boundary(found[0], t, last)
        return _Recurrence(acc, t, init, x, (found[1].src, scale.id), gamma)
    return None


def _suffix_sum(ctx: Context, acc: Op, t: Symbol) -> _Recurrence | None:
    """``acc[T-1] = a; acc[t] = x[t] + acc[t+1]`` (operands in any order), or ``None``: the
    discounted sum with ``c = 1`` (autodiff's sums of cotangents over a dim take this form)."""
    last = simplify(t.bound - 1)
    found = _branches(acc, t, last, t <= t.bound - 2)
    reads = None if found is None else _sum_reads(ctx, found[1])
    own = [k for k, r in enumerate(reads or ()) if r.src == acc.id]
    if reads is None or len(own) != 1 or reads[own[0]].index != _shifted(acc, t, 1):
        return None
    x = _ranged(reads[1 - own[0]], t, Const(0), last, range(0, 2))
    if x is None or not _same_spec(ctx.program.read_spec(found[1]), acc.outputs[0]):
        return None
    init = _boundary(found[0], t, last)
    return _Recurrence(acc, t, init, x, (found[1].src,), 1.0)


def _recurrence(
    ctx: Context, op: Op, parse: Callable[[Context, Op, Symbol], _Recurrence | None]
) -> _Recurrence | None:
    """The recurrence ``parse`` finds along some dim of merge ``op``, when it can be lifted."""
    if op.kind != "merge":
        return None
    for t in op.domain:
        if t == ctx.program.stopped:  # computed only up to the stop, inside its loop
            continue
        rec = parse(ctx, op, t)
        if rec is not None and _valid_ends(ctx, rec):
            return rec
    return None


def _closed_form(program: Program, rec: _Recurrence, payload: Payload, spec: TensorSpec) -> Op:
    """A new op computing ``payload`` of the recurrence's ends over its dims other than ``t``."""
    rest = tuple(d for d in rec.acc.domain if d != rec.t)
    name = f"{rec.acc.name}.{payload.name}"
    return Op(
        next_id(program), "apply", name, rest, (rec.init, rec.x), (spec,), payload, rec.acc.source
    )


def _lift(program: Program, rec: _Recurrence, payload: Payload) -> Program:
    """The recurrence replaced by one op computing its whole ``t`` axis, read through a pick."""
    acc, spec = rec.acc, rec.acc.outputs[0]
    whole = _closed_form(program, rec, payload, TensorSpec((rec.t.bound, *spec.shape), spec.dtype))
    read = Edge(whole.id, 0, whole.domain, TRUE, acc.source)
    picked = pick_payload(rec.t, 0)
    pick = acc.replace(kind="apply", inputs=(read,), payload=picked)
    ops: list[Op] = []
    for op in program.ops:
        ops.extend((whole, pick) if op.id == acc.id else (op,))
    return _drop_orphans(program.replace(ops=tuple(ops)), list(rec.steps))


def _lift_total(ctx: Context, op: Op) -> Program | None:
    """Rule: a running sum only read at its last point: its readers read one sum."""
    rec = _recurrence(ctx, op, _running_sum)
    return None if rec is None else _total_of(ctx, op, rec, simplify(rec.t.bound - 1))


def _lift_suffix_total(ctx: Context, op: Op) -> Program | None:
    """Rule: a suffix sum only read at its first point: its readers read one sum."""
    rec = _recurrence(ctx, op, _suffix_sum)
    return None if rec is None else _total_of(ctx, op, rec, Const(0))


def _total_of(ctx: Context, op: Op, rec: _Recurrence, last: Expr) -> Program | None:
    """The sum of a running or suffix sum ``op`` for readers that only read its end ``last``."""
    program, pos = ctx.program, op.domain.index(rec.t)
    if any(_readers(program, s) - {op.id, *rec.steps} for s in rec.steps):
        return None
    reads = [e for o in program.ops if o.id not in rec.steps for e in o.inputs if e.src == op.id]
    reads += [out.edge for out in program.outputs if out.edge.src == op.id]
    if not reads or any(simplify(e.index[pos]) != last for e in reads):
        return None
    whole = _whole_range(program, rec)
    if whole is None:
        payload = Payload(functools.partial(_total, op.outputs[0].dtype), "sum")
        total = _closed_form(program, rec, payload, op.outputs[0])
    else:  # the init is the range's missing end: one read of the whole range
        payload = Payload(functools.partial(_sum, op.outputs[0].dtype), "sum")
        total = _closed_form(program, rec, payload, op.outputs[0]).replace(inputs=(whole,))
    ops = tuple(total if o.id == op.id else o for o in program.ops if o.id not in rec.steps)

    def read(edge: Edge) -> Edge:  # the sum is the value at t = T-1
        index = edge.index[:pos] + edge.index[pos + 1 :]
        return dataclasses.replace(edge, src=total.id, index=index)

    return _replace_reads(program.replace(ops=ops), op.id, read)


def _whole_range(program: Program, rec: _Recurrence) -> Edge | None:
    """``x[0:T]`` when the init reads ``x`` at the one point its range leaves out (the sums
    autodiff builds: ``acc[T-1] = x[T-1]; acc[t] = x[t] + acc[t+1]``), else None."""
    x, init = rec.x, rec.init
    if (x.src, x.out) != (init.src, init.out) or x.cond != TRUE or init.cond != TRUE:
        return None
    (pos,) = x.slices
    span = x.index[pos]
    assert isinstance(span, Slice)
    missing = {simplify(span.start - 1), simplify(span.stop)}
    rest = x.index[:pos] + x.index[pos + 1 :]
    if rest != init.index[:pos] + init.index[pos + 1 :] or simplify(init.index[pos]) not in missing:
        return None
    size = program.op(x.src).domain[pos].bound
    start = simplify(
        Const(0) if simplify(init.index[pos]) == simplify(span.stop) else init.index[pos]
    )
    whole = Slice(start, simplify(start + (span.stop - span.start) + 1))
    if simplify(whole.start) != Const(0) or simplify(whole.stop - size) != Const(0):
        return None
    return dataclasses.replace(x, index=(*x.index[:pos], whole, *x.index[pos + 1 :]))


def _lift_running_sum(ctx: Context, op: Op) -> Program | None:
    """Rule: a running sum becomes a cumulative sum over its whole ``t`` axis."""
    rec = _recurrence(ctx, op, _running_sum)
    if rec is None:
        return None
    payload = Payload(functools.partial(_cumsum, op.outputs[0].dtype), "cumsum", pads_ok=True)
    return _lift(ctx.program, rec, payload)


def _lift_discounted(ctx: Context, op: Op) -> Program | None:
    """Rule: a suffix discounted sum becomes a reverse associative scan over its ``t`` axis."""
    rec = _recurrence(ctx, op, _discounted) or _recurrence(ctx, op, _suffix_sum)
    if rec is None:
        return None
    size, dtype = simplify(rec.t.bound - 1), op.outputs[0].dtype
    fn = functools.partial(_discounted_sums, rec.gamma, size, dtype)
    return _lift(ctx.program, rec, Payload(fn, "discounted", uses_point=True, pads_ok=True))


# -- payloads of lifted recurrences --------------------------------------------------------------


def _total(dtype: np.dtype, init: Any, xs: Any) -> tuple[Any, ...]:
    """``a + x.sum(0)`` of the init ``a`` and the stacked steps ``x``."""
    return ((init + xs.sum(axis=0)).astype(dtype),)


def _sum(dtype: np.dtype, xs: Any) -> tuple[Any, ...]:
    """``x.sum(0)`` of the stacked points ``x``."""
    return (xs.sum(axis=0).astype(dtype),)


def _cumsum(dtype: np.dtype, init: Any, xs: Any) -> tuple[Any, ...]:
    """The running sums of ``a, x[0], x[1], ...``: row ``k`` reads rows ``<= k`` only, so rows
    padded past a dynamic bound never reach the valid ones."""
    return (lax.cumsum(jnp.concatenate([init[None], xs]).astype(dtype), axis=0),)


def _discounted_sums(
    gamma: Any, size: Expr, dtype: np.dtype, env: Any, last: Any, xs: Any
) -> tuple[Any, ...]:
    """``out[k] = sum_{j >= k} gamma**(j-k) * v[j]`` for ``v = (x[0], ..., x[size-1], a)``.

    A reverse associative scan of affine maps ``y -> v[j] + gamma * y``; rows of ``x`` past
    ``size`` (padding under a dynamic bound) are set to zero first.
    """
    rows = size.evaluate(env)
    values = jnp.concatenate([xs, last[None]]).astype(dtype)
    if not (isinstance(rows, int) and rows == xs.shape[0]):
        k = jnp.arange(values.shape[0]).reshape((-1,) + (1,) * last.ndim)
        values = jnp.where(k < rows, values, jnp.where(k == rows, last[None], 0))
    decay = jnp.full(values.shape, gamma, dtype)
    return (lax.associative_scan(_compose_affine, (decay, values), reverse=True)[1],)


def _compose_affine(later: tuple[Any, Any], here: tuple[Any, Any]) -> tuple[Any, Any]:
    """``y -> here(later(y))`` for affine maps ``y -> b + a * y`` given as ``(a, b)``."""
    return later[0] * here[0], here[1] + here[0] * later[1]


# -- the rule table ------------------------------------------------------------------------------


def _unread_range(ctx: Context, op: Op) -> Program | None:
    """Rule: a range read whose values the payload never uses (a linear op's vjp reads its
    primal input only for its shape: the gradient of a mean) is dropped (:mod:`.unread`)."""
    if not any(isinstance(i, Slice) for e in op.inputs for i in e.index):
        return None
    found = ctx.sized(op)
    dropped = None if found is None else without_unread(op, *found)
    if dropped is None:
        return None
    program = ctx.program.replace(ops=tuple(dropped if o is op else o for o in ctx.program.ops))
    kept = {(e.src, e.out) for e in dropped.inputs}
    return _drop_orphans(program, [e.src for e in op.inputs if (e.src, e.out) not in kept])


ALGEBRAIC = (
    Rule("mul_one", _removes(_forwards("mul", 1))),  # x*1 -> x, 1*x -> x
    Rule("add_zero", _removes(_forwards("add", 0))),  # x+0 -> x, 0+x -> x
    Rule("sub_zero", _removes(_forwards("sub", 0, sides=(0,)))),  # x-0 -> x
    Rule("div_one", _removes(_forwards("div", 1, sides=(0,)))),  # x/1 -> x
    Rule("neg_neg", _removes(_negates_twice)),  # --x -> x
    Rule("neg_of_neg", _neg_of_neg),  # y = -x; -y -> x
    Rule("same_dtype_cast", _removes(_same_dtype_cast)),  # x.astype(x.dtype) -> x
    Rule("identity", _removes(_passes_input)),  # (lambda x: x)(x) -> x
    Rule("unread_range", _unread_range),  # vjp[mean](x[0:T], ct) -> vjp[mean](zeros, ct)
)

MOVEMENT = (
    Rule("transpose_transpose", _fold_transposes),  # (x^p)^q -> x^(p.q); x when p.q = id
    Rule("reshape_reshape", _fold_reshapes),  # reshape(reshape(x)) -> reshape(x); x at x's shape
)

LIFTS = (
    Rule("total", _lift_total),  # s[0]=a; s[t]=s[t-1]+x[t]; only s[T-1] read -> a + sum(x[1:T])
    Rule("running_sum", _lift_running_sum),  # s[0]=a; s[t]=s[t-1]+x[t] -> cumsum(a, x[1:T])[t]
    Rule("suffix_total", _lift_suffix_total),  # g[T-1]=a; g[t]=x[t]+g[t+1]; only g[0] -> sum
    Rule("discounted", _lift_discounted),  # g[T-1]=a; g[t]=x[t]+c*g[t+1] -> rev. scan of x, a
)

RULES: tuple[Rule, ...] = ALGEBRAIC + MOVEMENT + LIFTS
