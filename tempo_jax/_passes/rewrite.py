"""Rewrites to a fixed point: algebraic identities, movement folds and recurrence lifts.

:func:`rewrite` applies the rule table ``RULES = ALGEBRAIC + MOVEMENT + LIFTS`` until no rule
matches; a rule looks at one op and returns the rewritten program, or ``None``. What an
``apply`` op computes is read off the jaxpr of its payload traced on its (static) read specs;
other payloads are opaque. Every rule keeps the program's values:

- algebraic: an op returning its input unchanged (``x*1``, ``x+0``, ``--x``) is dropped, and
  its readers read the input;
- movement: two transposes or two reshapes in a row become one op, or none;
- lifts (:mod:`.lifts`): a recurrence along ``t`` with a closed form (a running sum, a
  discounted suffix sum) becomes one op computing the whole ``t`` axis at once.

Example: ``p.compile(bounds, pipeline=tj.Pipeline(passes=(..., rewrite)))``. Surviving ops keep
their ids; new ops take fresh ids and the source line of the op they replace.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.extend.core as jex
import jax.numpy as jnp

from .._ir.expr import Slice
from .._ir.program import Op, Payload, Program
from .lifts import LIFTS
from .rule_context import (
    Context,
    Rule,
    at_own_point,
    drop_orphans,
    forward,
    only_eqn,
    position,
    scalar,
)
from .unread import without_unread

Matcher = Callable[[jex.ClosedJaxpr], "int | None"]  # which payload input an identity returns


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


def _unary(ctx: Context, op: Op, primitive: str) -> jex.JaxprEqn | None:
    """The one equation when ``op`` is ``primitive`` of one input read at its own point."""
    closed = ctx.trace(op)
    eqn = None if closed is None else only_eqn(closed, primitive)
    if eqn is None or len(op.inputs) != 1 or not at_own_point(op, op.inputs[0]):
        return None
    return eqn if eqn.invars[0] is closed.jaxpr.invars[0] else None


# -- algebraic identities ------------------------------------------------------------------------


def _forwards(primitive: str, neutral: int, sides: tuple[int, ...] = (0, 1)) -> Matcher:
    """Matcher: the payload is ``primitive`` of an input (a side in ``sides``) and ``neutral``."""

    def match(closed: jex.ClosedJaxpr) -> int | None:
        eqn = only_eqn(closed, primitive)
        if eqn is None or len(eqn.invars) != 2:
            return None
        for side in sides:
            k = position(closed.jaxpr.invars, eqn.invars[side])
            if k is not None and scalar(closed, eqn.invars[1 - side]) == neutral:
                return k
        return None

    return match


def _passes_input(closed: jex.ClosedJaxpr) -> int | None:
    """Matcher: the payload returns an input without computing anything."""
    jaxpr = closed.jaxpr
    if jaxpr.eqns or len(jaxpr.outvars) != 1:
        return None
    return position(jaxpr.invars, jaxpr.outvars[0])


def _same_dtype_cast(closed: jex.ClosedJaxpr) -> int | None:
    """Matcher: the payload converts an input to the dtype it already has."""
    eqn = only_eqn(closed, "convert_element_type")
    same = eqn is not None and eqn.params["new_dtype"] == eqn.invars[0].aval.dtype
    return position(closed.jaxpr.invars, eqn.invars[0]) if same else None


def _negates_twice(closed: jex.ClosedJaxpr) -> int | None:
    """Matcher: the payload is ``-(-x)`` of an input."""
    jaxpr = closed.jaxpr
    if [eqn.primitive.name for eqn in jaxpr.eqns] != ["neg", "neg"] or len(jaxpr.outvars) != 1:
        return None
    first, second = jaxpr.eqns
    chained = second.invars[0] is first.outvars[0] and second.outvars[0] is jaxpr.outvars[0]
    return position(jaxpr.invars, first.invars[0]) if chained else None


def _removes(matcher: Matcher) -> Callable[[Context, Op], Program | None]:
    """Rule: drop an op whose payload returns an input unchanged (``matcher`` says which)."""

    def match(ctx: Context, op: Op) -> Program | None:
        closed = ctx.trace(op)
        k = None if closed is None else matcher(closed)
        if k is None or not at_own_point(op, op.inputs[k]):
            return None
        return forward(ctx, op, op.inputs[k])

    return match


def _neg_of_neg(ctx: Context, op: Op) -> Program | None:
    """Rule: ``-y`` where ``y = -x`` is another op: readers read ``x``."""
    found = _stacked(ctx, op, "neg")
    return None if found is None else forward(ctx, op, found[0].inputs[0])


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
    return drop_orphans(program, [producer.id])


def _fold_transposes(ctx: Context, op: Op) -> Program | None:
    """Rule: a transpose of a transpose is one transpose, or none when they cancel."""
    found = _stacked(ctx, op, "transpose")
    if found is None:
        return None
    producer, inner, outer = found
    first, second = inner.params["permutation"], outer.params["permutation"]
    perm = tuple(first[k] for k in second)
    if perm == tuple(range(len(perm))):
        return forward(ctx, op, producer.inputs[0])
    return _refold(ctx, op, producer, lambda value: jnp.transpose(value, perm), "transpose")


def _fold_reshapes(ctx: Context, op: Op) -> Program | None:
    """Rule: a reshape of a reshape is one reshape, or none when it restores the shape."""
    found = _stacked(ctx, op, "reshape")
    if found is None or any(eqn.params.get("dimensions") for eqn in found[1:]):
        return None
    shape, producer = op.outputs[0].shape, found[0]
    restored = forward(ctx, op, producer.inputs[0])
    return restored or _refold(ctx, op, producer, lambda v: jnp.reshape(v, shape), "reshape")


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
    return drop_orphans(program, [e.src for e in op.inputs if (e.src, e.out) not in kept])


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

RULES: tuple[Rule, ...] = ALGEBRAIC + MOVEMENT + LIFTS
