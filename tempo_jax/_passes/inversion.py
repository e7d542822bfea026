"""Inverting a read: which consumer points read a given point of the producer.

A consumer over ``(d_1, ..., d_n)`` reads a producer over ``(q_1, ..., q_m)`` at an index of
one item per producer dim. Autodiff's transpose ops (:mod:`.autodiff`) gather, at each producer
point ``q``, the cotangents of every consumer point that read it; :func:`invert_read` says which
those are, as an :class:`Inversion`:

- a dim plus a constant (``x[t-1]``) determines the consumer dim (``t = q + 1``);
- a constant point (``x[0]``) is read where ``q`` equals it;
- a range (``0:t+1``, ``max(0,t-w+1):t+1``, ``t:T``, ``0:T``) is read by a span of consumers
  (``q:T``, ``q:min(q+w,T)``, ``0:q+1``, ``0:T``; :func:`invert_range`);
- a consumer dim the index does not use is read at every value (summed over);
- the read's branch condition and where the consumer is defined narrow those spans, or become a
  condition on ``q``, or a mask over the consumer points.

Example: ``h[t] = f(h[t-1])`` read at ``t`` inverts to ``t = q + 1`` where ``q + 1 < T``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from .._ir.errors import UnsupportedError
from .._ir.expr import (
    TRUE,
    Cmp,
    Const,
    Expr,
    Max,
    Min,
    Slice,
    Symbol,
    conjuncts,
    dims_of,
    eq,
    substitute,
)
from .._ir.program import Edge, Op
from .._ir.simplify import _linear, simplify


@dataclasses.dataclass(frozen=True)
class Inversion:
    """The consumer points reading a producer point ``q`` (the producer's own dims).

    ``determined``: consumer dims fixed by ``q`` (their value); ``spans``: every other consumer
    dim, the ``[lo, hi)`` of its values reading ``q`` (``ranged``: those read through a range);
    ``fresh``: a symbol per spanned dim standing for its value inside ``mask``, a condition over
    the consumer points no span states; ``conds``: conditions on ``q`` alone; ``embeds``: the
    (producer dim position, range) of each range item of the index.
    """

    determined: dict[Symbol, Expr]
    ranged: dict[Symbol, tuple[Expr, Expr]]
    spans: dict[Symbol, tuple[Expr, Expr]]
    fresh: dict[Symbol, Symbol]
    conds: tuple[Expr, ...]
    mask: Expr
    embeds: tuple[tuple[int, Slice], ...]


def invert_read(
    edge: Edge,
    producer_domain: tuple[Symbol, ...],
    consumer_domain: tuple[Symbol, ...],
    cond: Expr,
    defined: list[Expr],
    what: str,
) -> Inversion:
    """The consumer points of ``consumer_domain`` reading ``edge`` under ``cond`` (where the
    consumer is also ``defined``) that read a point of ``producer_domain``; ``what`` names the
    read in the error raised for an index that cannot be inverted."""
    determined: dict[Symbol, Expr] = {}
    ranged: dict[Symbol, tuple[Expr, Expr]] = {}
    conds: list[Expr] = []
    embeds: list[tuple[int, Slice]] = []
    for pos, (q, item) in enumerate(zip(producer_domain, edge.index, strict=True)):
        used = dims_of(item)
        if isinstance(item, Slice):
            embeds.append((pos, item))
            if not used:
                conds += [item.start <= q, q < item.stop]
                continue
            (d,) = _one_dim(used, what, item)
            if d in determined or d in ranged:
                raise unsupported(what, item, f"`{d.name}` indexes two dims")
            lo, hi, extra = invert_range(item, d, q, what)
            ranged[d] = (lo, hi)
            conds += extra
            continue
        if not used:
            conds.append(eq(q, item))
            continue
        (d,) = _one_dim(used, what, item)
        rest = _offset(item, d, what)
        if d in determined or d in ranged:
            raise unsupported(what, item, f"`{d.name}` indexes two dims")
        determined[d] = simplify(q - rest)
    # where the read happens: its branch condition, and where the consumer is defined
    parts = conjuncts(simplify(cond)) if cond != TRUE else []
    parts += defined
    others: list[Expr] = []
    for part in parts:  # a condition pinning a dim the producer lacks (`h[0] = f(w)`)
        if (
            isinstance(part, Cmp)
            and part.op == "=="
            and isinstance(part.a, Symbol)
            and part.a in consumer_domain
            and part.a not in determined
            and part.a not in ranged
            and not dims_of(part.b)
        ):
            determined[part.a] = part.b
        else:
            others.append(part)
    spans = {d: ranged.get(d, (Const(0), d.bound)) for d in consumer_domain if d not in determined}
    fresh = {d: Symbol(f"{d.name}__c", d.program, d.bound_name) for d in spans}
    back = {f: d for d, f in fresh.items()}
    mask: Expr = TRUE
    for part in others:  # a condition on the producer point, a narrower range, or a mask
        part = simplify(substitute(part, {**determined, **fresh}))
        found = dims_of(part) & set(back)
        if not found:
            conds.append(part)
            continue
        narrowed = _narrow(part, found) if len(found) == 1 else None
        if narrowed is None:
            mask = part if mask == TRUE else mask & part
            continue
        d = back[next(iter(found))]
        lo, hi = spans[d]
        if narrowed[0] is not None:
            lo = simplify(Max(lo, narrowed[0]))
        if narrowed[1] is not None:
            hi = simplify(Min(hi, narrowed[1] + 1))
        spans[d] = (lo, hi)
    return Inversion(determined, ranged, spans, fresh, tuple(conds), mask, tuple(embeds))


def invert_range(item: Slice, d: Symbol, q: Symbol, what: str) -> tuple[Expr, Expr, list[Expr]]:
    """The consumer points ``[lo, hi)`` along ``d`` whose range ``item`` holds ``q``, and the
    conditions on ``q`` for any to."""
    conds: list[Expr] = []
    # lo: the first consumer whose stop passes q
    stop = simplify(item.stop)
    if not dims_of(stop):
        lo: Expr = Const(0)
        conds.append(q < stop)
    else:
        k = _offset(stop, d, what)  # stop = d + k > q  <=>  d >= q - k + 1
        lo = simplify(Max(Const(0), simplify(q - k + 1)))
    # hi: one past the last consumer whose start is at most q
    start = simplify(item.start)
    lower = None
    if isinstance(start, Max) and not (dims_of(start.a) and dims_of(start.b)):
        lower, start = (start.a, start.b) if not dims_of(start.a) else (start.b, start.a)
    if isinstance(start, Min):
        raise unsupported(what, item, "its start is a minimum")
    if not dims_of(start):
        hi: Expr = d.bound
        conds.append(start <= q)
    else:
        k = _offset(start, d, what)  # start = d + k <= q  <=>  d <= q - k
        hi = Min(simplify(q - k + 1), d.bound)
    if lower is not None:
        conds.append(lower <= q)
    return lo, simplify(hi), conds


def range_layout(
    op: Op, ops: dict[int, Op]
) -> tuple[tuple[int, ...], Symbol, Slice, tuple[Symbol, ...]] | None:
    """``op``'s range reads when they all read one growing range alike, each other index of
    theirs a distinct dim of ``op`` and every one of its dims read (``k[b, 0:t+1]`` and
    ``v[b, 0:t+1]`` of producers over ``(b, t)``): ``(their input positions, the dim the range
    grows along, the range, the producers' domain)``; None otherwise."""
    ranged, found = [], None
    for k, edge in enumerate(op.inputs):
        slices = [i for i in edge.index if isinstance(i, Slice)]
        if not slices:
            continue
        if len(slices) != 1 or edge.cond != TRUE or not dims_of(slices[0].size):
            return None
        item = slices[0]
        pos = edge.index.index(item)
        others = [i for i in edge.index if not isinstance(i, Slice)]
        used = dims_of(item)
        domain = ops[edge.src].domain
        if len(used) != 1 or any(not isinstance(i, Symbol) or i not in op.domain for i in others):
            return None
        (d,) = used
        key = (item, pos, tuple(others), domain)
        if found is None:
            found = key
        elif key != found:
            return None
        if d in others or len(set(others)) != len(others) or {*others, d} != set(op.domain):
            return None
        ranged.append(k)
    if found is None:
        return None
    item, _, _, domain = found
    (d,) = dims_of(item)
    return tuple(ranged), d, item, domain


def slice_pos(op: Op, ranged: tuple[int, ...]) -> int:
    """The position of the range item in the index of ``op``'s range reads."""
    index = op.inputs[ranged[0]].index
    return next(pos for pos, i in enumerate(index) if isinstance(i, Slice))


def conjunction(conds: list[Expr] | tuple[Expr, ...]) -> Expr:
    """``conds`` and-ed, those every point of a box satisfies left out (``TRUE``: none left)."""
    result: Expr = TRUE
    for c in conds:
        c = simplify(c)
        if c == TRUE or _trivially_true(c):
            continue
        result = c if result == TRUE else result & c
    return result


def unsupported(what: str, item: Any, why: str) -> UnsupportedError:
    """The error for an index of ``what`` that cannot be inverted, and why."""
    return UnsupportedError(
        f"{what}: cannot invert the index `{item}` ({why}). Gradients flow through reads "
        "indexed by a dim plus a constant (`x[t-1]`), a constant point (`x[0]`), or ranges "
        "whose ends are such (`x[0:t+1]`, `x[max(0,t-w+1):t+1]`, `x[t:T]`); compute other "
        "reads from such ones, or `.detach()` the value."
    )


def gather_payload(
    stacked: list[tuple[Symbol, Expr, Expr]],
    fresh: dict[Symbol, Symbol],
    mask: Expr,
    points: list[Symbol],
) -> Any:
    """The payload of a transpose op: the cotangents of the consumer points reading ``q``,
    stacked along one axis per spanned dim (``stacked``: the dim and its ``[lo, hi)``), masked
    (``mask`` over the ``fresh`` symbols) and summed, then taken at ``q``'s position along each
    producer dim a range read (``points``)."""
    n_stacked = len(stacked)

    def gather(env: Any, value: Any) -> tuple[Any]:
        at = dict(env)
        for axis, (d, lo, hi) in enumerate(stacked):
            start = lo.evaluate(env)
            count = hi.evaluate(env) - start
            shape = [1] * value.ndim
            shape[axis] = value.shape[axis]
            rows = jnp.arange(value.shape[axis]).reshape(shape)
            value = jnp.where(rows < count, value, jnp.zeros((), value.dtype))
            at[fresh[d]] = rows + start
        if mask != TRUE:
            value = jnp.where(mask.evaluate(at), value, jnp.zeros((), value.dtype))
        value = value.sum(axis=tuple(range(n_stacked))) if n_stacked else value
        for q in points:
            value = lax.dynamic_index_in_dim(value, jnp.asarray(q.evaluate(env)), 0, False)
        return (value,)

    return gather


def embed_payload(bounds: list[Symbol], slices: list[Slice], where: str) -> Any:
    """The payload of an embed op: per consumer point, its range cotangent (one axis per range
    item ``slices``) placed at the producer positions it read, zeros elsewhere (an axis of the
    producer's size ``bounds``)."""

    def embed(env: Any, value: Any) -> tuple[Any]:
        for axis, (bound, item) in enumerate(zip(bounds, slices, strict=True)):
            size = env[bound]
            if not isinstance(size, int | np.integer):
                raise UnsupportedError(
                    f"{where}: a gradient through a range read needs a static bound "
                    f"`{bound.name}`; give it as an int rather than `tj.dynamic`."
                )
            start = jnp.asarray(item.start.evaluate(env))
            count = jnp.asarray(item.size.evaluate(env))
            rows = jnp.arange(size) - start
            valid = (rows >= 0) & (rows < count)
            shape = [1] * value.ndim
            shape[axis] = int(size)
            if value.shape[axis] == 0:
                new_shape = list(value.shape)
                new_shape[axis] = int(size)
                value = jnp.zeros(new_shape, value.dtype)
                continue
            taken = jnp.take(value, jnp.clip(rows, 0, value.shape[axis] - 1), axis=axis)
            value = jnp.where(valid.reshape(shape), taken, jnp.zeros((), value.dtype))
        return (value,)

    return embed


def _one_dim(used: frozenset[Symbol], what: str, item: Any) -> tuple[Symbol]:
    if len(used) != 1:
        raise unsupported(what, item, "it mixes several dims")
    return (next(iter(used)),)


def _offset(expr: Expr, d: Symbol, what: str) -> Expr:
    """``expr - d`` when ``expr`` is ``d`` plus something free of dims."""
    terms, _ = _linear(expr)
    if terms.get(d) != 1 or any(dims_of(a) for a in terms if a != d):
        raise unsupported(what, expr, f"it is not `{d.name}` plus a constant")
    return simplify(expr - d)


def _narrow(part: Expr, found: set[Symbol]) -> tuple[Expr | None, Expr | None] | None:
    """Bounds ``(lower, upper)`` on the one symbol of ``found`` that ``part`` says, if affine."""
    if not isinstance(part, Cmp) or part.op not in ("<=", ">=", "=="):
        return None
    (f,) = found
    terms, _ = _linear(simplify(part.a - part.b))
    coeff = terms.get(f)
    if coeff not in (1, -1) or any(f in dims_of(a) for a in terms if a != f):
        return None
    rest = simplify(part.a - part.b - f * coeff)  # part: coeff * f + rest (op) 0
    value = simplify(-rest) if coeff == 1 else rest
    if part.op == "==":
        return value, value
    upper = (part.op == "<=") == (coeff == 1)
    return (None, value) if upper else (value, None)


def _trivially_true(cond: Expr) -> bool:
    """Whether every point of a box satisfies ``cond``: ``d >= c`` (c <= 0), ``d <= D + c``
    (c >= -1)."""
    if not isinstance(cond, Cmp) or not isinstance(cond.a, Symbol) or cond.a.is_bound:
        return False
    d = cond.a
    terms, const = _linear(cond.b)
    if cond.op == ">=":
        return not terms and const <= 0
    if cond.op == "<=":
        return terms == {d.bound: 1} and const >= -1
    return False
