"""A batched payload in the layout its products give it: the transposes :func:`jax.vmap`
inserts, moved to where a value leaves the computation.

``jax.vmap`` of a per-point payload gives every value a batch axis. Where two operands of an
element-wise operation carry it at different places (attention's scores ``(b, h, query, key)``
out of their product, and their row maximum broadcast back as ``(query, b, h, 1)``), the
batching rules move it to the front of both: the scores are transposed to
``(query, b, h, key)``, their exponentials and, under :func:`jax.vjp`, their cotangents are
computed in that layout, and every product over them copies them back (on a CPU, a strided
copy of the largest value per product).

:func:`sink_transposes` evaluates a function's jaxpr with each transpose held back: a value is
kept as its operand and the permutation. Element-wise operations run on the operands (an
operand held otherwise, or not at all, is transposed the other way: a broadcast statistic,
which XLA folds into its broadcast; not done where that would add transposes), reductions
on the operand with their axes renamed, products with the permutations folded into their
dimension numbers; any other use, and every output, applies the permutation. The function is
the same; its values are computed in the layout the products produce.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jex
import numpy as np
from jax import lax

from .._ir.jaxprs import bind
from .masking import ELEMENTWISE

Perm = tuple[int, ...] | None  # a held value is ``transpose(operand, perm)``; None: as it is
_REDUCE = frozenset(
    ["reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or"]
)


def sink_transposes(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, evaluated with its transposes moved to its outputs (see the module docstring)."""

    def run(*args: Any) -> Any:
        closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
        outs = _eval(closed.jaxpr, closed.consts, jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(shapes), outs)

    return run


def _eval(jaxpr: jex.Jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    env: dict[Any, tuple[Any, Perm]] = {}
    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = (value, None)
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = (value, None)

    def read(var: Any) -> tuple[Any, Perm]:
        return (var.val, None) if isinstance(var, jex.Literal) else env[var]

    for eqn in jaxpr.eqns:
        held = [read(var) for var in eqn.invars]
        name = eqn.primitive.name
        outs: list[tuple[Any, Perm]] | None = None
        if name == "transpose":
            (value, perm), then = held[0], tuple(eqn.params["permutation"])
            outs = [(value, _perm(then if perm is None else tuple(perm[i] for i in then)))]
        elif name in ELEMENTWISE:
            outs = _elementwise(eqn, held)
        elif name in _REDUCE and held[0][1] is not None:
            outs = _reduce(eqn, *held[0])
        elif name == "dot_general" and (held[0][1] is not None or held[1][1] is not None):
            outs = _dot_general(eqn, held)
        if outs is None:
            outs = [(y, None) for y in bind(eqn, [_applied(h) for h in held])]
        for var, out in zip(eqn.outvars, outs, strict=True):
            env[var] = out
    return [_applied(read(var)) for var in jaxpr.outvars]


def _perm(perm: tuple[int, ...]) -> Perm:
    return None if perm == tuple(range(len(perm))) else perm


def _applied(held: tuple[Any, Perm]) -> Any:
    value, perm = held
    return value if perm is None else lax.transpose(value, perm)


def _bind(eqn: jex.JaxprEqn, values: Sequence[Any], **changed: Any) -> list[Any]:
    params = eqn.primitive.get_bind_params({**eqn.params, **changed})
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*values, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _elementwise(eqn: jex.JaxprEqn, held: list[tuple[Any, Perm]]) -> Any:
    arrays = [(value, perm) for value, perm in held if np.ndim(value) > 0]
    perm = next((p for _, p in arrays if p is not None), None)
    if perm is None:
        return None
    moved = sum(p != perm for _, p in arrays)
    if 2 * moved > len(arrays):
        return None  # more operands to transpose than transposes saved
    inverse = tuple(int(i) for i in np.argsort(perm))
    values = []
    for value, p in held:
        if np.ndim(value) == 0 or p == perm:
            values.append(value)
        else:  # transpose(value, p) in the layout ``perm`` applies to
            own = tuple(range(np.ndim(value))) if p is None else p
            values.append(_applied((value, _perm(tuple(own[i] for i in inverse)))))
    return [(y, perm) for y in _bind(eqn, values)]


def _reduce(eqn: jex.JaxprEqn, value: Any, perm: tuple[int, ...]) -> Any:
    axes = [int(a) for a in eqn.params["axes"]]
    kept = [a for a in range(len(perm)) if a not in axes]
    kept_below = sorted(perm[a] for a in kept)
    (out,) = _bind(eqn, [value], axes=tuple(sorted(perm[a] for a in axes)))
    return [(out, _perm(tuple(kept_below.index(perm[a]) for a in kept)))]


def _dot_general(eqn: jex.JaxprEqn, held: list[tuple[Any, Perm]]) -> Any:
    (lhs, lp), (rhs, rp) = held[:2]
    lp = lp or tuple(range(np.ndim(lhs)))
    rp = rp or tuple(range(np.ndim(rhs)))
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    numbers = (
        (tuple(lp[a] for a in lc), tuple(rp[a] for a in rc)),
        (tuple(lp[a] for a in lb), tuple(rp[a] for a in rb)),
    )
    (out,) = _bind(eqn, [lhs, rhs, *(v for v, _ in held[2:])], dimension_numbers=numbers)
    order = list(range(len(lb)))  # batch dims first, in the order given
    for perm, used in ((lp, {*lc, *lb}), (rp, {*rc, *rb})):  # then each side's free dims
        free = [a for a in range(len(perm)) if a not in used]
        below = sorted(perm[a] for a in free)
        order += [len(order) + below.index(perm[a]) for a in free]
    return [(out, _perm(tuple(order)))]
