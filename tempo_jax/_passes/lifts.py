"""Recurrence lifts: a recurrence along ``t`` with a closed form becomes one op over the other
dims that computes the whole ``t`` axis at once.

The recurrence becomes a *pick* of that axis (see :mod:`.picks`): its readers are unchanged,
the recurrence is gone. ``s[0] = a; s[t] = s[t-1] + x[t]`` is a cumulative sum of
``a, x[1:T]`` (a plain sum when only ``s[T-1]`` is read); ``g[T-1] = a; g[t] = x[t] + c *
g[t+1]`` (``c`` a constant) a reverse discounted sum, computed by an associative scan. No
recurrence along the dim ``p.stop_when`` ends is lifted: it runs inside the loop the stop ends,
up to the stop. :data:`LIFTS` is the rule table :mod:`.rewrite` applies.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._ir.expr import TRUE, Const, Expr, IndexItem, Slice, Symbol, eq, substitute, symbols_of
from .._ir.program import Edge, Op, Payload, Program, TensorSpec
from .._ir.simplify import simplify
from .picks import next_id, pick_payload
from .rule_context import (
    Context,
    Rule,
    drop_orphans,
    only_eqn,
    reaches_same,
    readers,
    replace_reads,
    same_spec,
    scalar,
)

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
    if not same_spec(program.read_spec(rec.init), rec.acc.outputs[0]):
        return False
    others = tuple(d for d in rec.acc.domain if d != rec.t)
    return not any(
        reaches_same(program, e, rec.acc.id, others, ctx.looks_ahead) for e in (rec.init, rec.x)
    )


def _adds_inputs(closed: jex.ClosedJaxpr) -> bool:
    """Whether the payload is ``a + b`` of its two inputs."""
    eqn, invars = only_eqn(closed, "add"), closed.jaxpr.invars
    return (
        eqn is not None and len(invars) == 2 and {id(a) for a in eqn.invars} == set(map(id, invars))
    )


def _scale(closed: jex.ClosedJaxpr) -> Any:
    """``c`` when the payload is ``c * x`` or ``x * c`` of its one input, ``c`` a constant."""
    eqn = only_eqn(closed, "mul")
    invars = closed.jaxpr.invars
    if eqn is None or len(invars) != 1 or eqn.outvars[0].aval.shape != invars[0].aval.shape:
        return None
    for side in (0, 1):
        if eqn.invars[side] is invars[0]:
            return scalar(closed, eqn.invars[1 - side])
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
    if x is None or not same_spec(ctx.program.read_spec(found[1]), acc.outputs[0]):
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
        if x is None or not same_spec(ctx.program.read_spec(found[1]), acc.outputs[0]):
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
    if x is None or not same_spec(ctx.program.read_spec(found[1]), acc.outputs[0]):
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
    return drop_orphans(program.replace(ops=tuple(ops)), list(rec.steps))


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
    if any(readers(program, s) - {op.id, *rec.steps} for s in rec.steps):
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

    return replace_reads(program.replace(ops=ops), op.id, read)


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


LIFTS = (
    Rule("total", _lift_total),  # s[0]=a; s[t]=s[t-1]+x[t]; only s[T-1] read -> a + sum(x[1:T])
    Rule("running_sum", _lift_running_sum),  # s[0]=a; s[t]=s[t-1]+x[t] -> cumsum(a, x[1:T])[t]
    Rule("suffix_total", _lift_suffix_total),  # g[T-1]=a; g[t]=x[t]+g[t+1]; only g[0] -> sum
    Rule("discounted", _lift_discounted),  # g[T-1]=a; g[t]=x[t]+c*g[t+1] -> rev. scan of x, a
)
