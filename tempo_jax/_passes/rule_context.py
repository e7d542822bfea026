"""What the rewrite rules of :mod:`.rewrite` and :mod:`.lifts` read and how they edit.

:class:`Context` holds the program being rewritten and its ops' traced payloads; a
:class:`Rule` looks at one op through it. The helpers read a payload's jaxpr (its one
equation, the constant an operand holds), edit programs (readers of an op read another value;
ops nothing reads are dropped), and follow reads along dims (:func:`reaches_same`: whether a
value depends on an op at the same point).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex
import numpy as np

from .._ir.expr import TRUE, BoolConst, Const, Slice, Symbol, substitute
from .._ir.program import Edge, Op, Program, TensorSpec
from .._ir.simplify import simplify
from .unread import trace_sized


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


def only_eqn(closed: jex.ClosedJaxpr, primitive: str) -> jex.JaxprEqn | None:
    """The jaxpr's one equation, when it is a ``primitive`` giving the one output."""
    jaxpr = closed.jaxpr
    if len(jaxpr.eqns) != 1 or len(jaxpr.outvars) != 1:
        return None
    (eqn,) = jaxpr.eqns
    return eqn if eqn.primitive.name == primitive and eqn.outvars[0] is jaxpr.outvars[0] else None


def position(atoms: list[Any], atom: Any) -> int | None:
    """Which of ``atoms`` (jaxpr inputs, constants) ``atom`` is, if any."""
    return next((k for k, a in enumerate(atoms) if a is atom), None)


def scalar(closed: jex.ClosedJaxpr, atom: Any) -> Any:
    """The number a constant operand holds (a literal, or a captured all-equal array)."""
    if isinstance(atom, jex.Literal):
        value = atom.val
    elif (k := position(closed.jaxpr.constvars, atom)) is not None:
        value = closed.consts[k]
    else:
        return None
    flat = np.asarray(value).reshape(-1)
    return flat[0].item() if flat.size and np.all(flat == flat[0]) else None


# -- editing programs ------------------------------------------------------------------------------


def at_own_point(op: Op, edge: Edge) -> bool:
    """Whether ``op`` reads ``edge`` unconditionally at its own point."""
    return edge.index == op.domain and edge.cond == TRUE and edge.src != op.id


def same_spec(a: TensorSpec, b: TensorSpec) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype


def replace_reads(program: Program, src: int, read: Callable[[Edge], Edge]) -> Program:
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


def readers(program: Program, op_id: int) -> set[int]:
    """Ids of the ops reading ``op_id``; ``-1`` stands for program outputs."""
    found = {op.id for op in program.ops if any(e.src == op_id for e in op.inputs)}
    return found | ({-1} if any(out.edge.src == op_id for out in program.outputs) else set())


def drop_orphans(program: Program, candidates: list[int]) -> Program:
    """``program`` without the ``candidates`` nothing reads, and what only they read."""
    while candidates:
        op = next((o for o in program.ops if o.id == candidates[-1]), None)
        candidates.pop()
        if op is None or op.kind not in ("apply", "merge") or readers(program, op.id):
            continue
        program = program.replace(ops=tuple(o for o in program.ops if o is not op))
        candidates.extend(edge.src for edge in op.inputs)
    return program


def forward(ctx: Context, op: Op, to: Edge) -> Program | None:
    """Readers of ``op`` read ``to`` (an own-point read of the same value) and ``op`` goes."""
    if not same_spec(op.outputs[0], ctx.program.read_spec(to)):
        return None
    program = replace_reads(
        ctx.program, op.id, lambda e: dataclasses.replace(e, src=to.src, out=to.out)
    )
    return drop_orphans(program, [op.id])


At = tuple[tuple[str, int] | None, ...]  # per tracked dim: ("rel", offset), ("abs", c), or any


def reaches_same(
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
