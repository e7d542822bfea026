"""Summed products become contractions: a sum of per-point outer products is one matmul.

After vectorisation, the gradient of a weight shared by every point of ``(b, t)`` is the
vectorised vjp of each point (an outer product per point, ``(T, B, n, m)`` values) summed by
the ``sum`` ops autodiff lifted. XLA evaluates that as an element-wise reduction over all
``T * B`` outer products; the same numbers are one contraction over ``T * B`` rows (a matmul).

:func:`contract_sums` folds a summing op (a lifted ``sum``, or the accumulating sum of a
parameter's gradient) into the op it sums, when it reads that op's value at the same point and
is its only reader (repeatedly, so ``sum_b(sum_t(vjp))`` becomes one op),
and the folded payload is evaluated through :func:`contracting`: the payload's jaxpr is
re-evaluated equation by equation with every ``reduce_sum`` over batch axes of a
``dot_general`` (through transposes) turned into a ``dot_general`` contracting those axes.

The same holds for the gradient of a table read at an index per point (an embedding, a
position embedding): each point's vjp is a ``scatter-add`` into a zeroed table, batched
(``(T, B, rows, width)`` values), then summed; a ``reduce_sum`` over the scatter's batch
axes becomes one ``scatter-add`` of every point's update into one zeroed table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jex
import numpy as np
from jax import lax

from .._ir.expr import TRUE
from .._ir.jaxprs import CALLS, bind
from .._ir.program import Edge, Op, Payload, Program

_SUMS = frozenset({"sum"})  # payload names of ops that only sum their one read


def contract_sums(program: Program) -> Program:
    """``program`` with every ``sum`` op folded into the op it sums (module docstring)."""
    while True:
        pair = next((p for p in _pairs(program)), None)
        if pair is None:
            return program
        program = _fold(program, *pair)


def _pairs(program: Program) -> Sequence[tuple[Op, Op]]:
    """``(producer, sum)`` pairs that can be folded."""
    readers = program.read_counts()
    found = []
    for op in program.ops:
        if not _summing(op):
            continue
        (edge,) = op.inputs
        producer = program.op(edge.src)
        if _foldable(producer, op, edge) and readers[(edge.src, edge.out)] == 1:
            found.append((producer, op))
    return found


def _summing(op: Op) -> bool:
    payload = op.payload
    return (
        op.kind == "apply"
        and payload is not None
        and (payload.name in _SUMS or payload.accumulates)
        and len(op.inputs) == 1
        and len(op.outputs) == 1
        and payload.block is None
    )


def _foldable(producer: Op, op: Op, edge: Edge) -> bool:
    """Whether ``op`` reads ``producer`` at the same point (and nothing else of it)."""
    payload = producer.payload
    return (
        producer.kind == "apply"
        and payload is not None
        and not (payload.accumulates or payload.pads_ok or payload.block is not None)
        and producer.domain == op.domain
        and edge.index == producer.domain
        and edge.cond == TRUE
    )


def _fold(program: Program, producer: Op, summing: Op) -> Program:
    """``producer`` computing ``summing``'s value in place of the output it read."""
    (edge,) = summing.inputs
    fn = _composed(producer.payload, summing.payload, edge.out)  # type: ignore[arg-type]
    payload = dataclasses.replace(
        producer.payload,  # type: ignore[arg-type]
        fn=fn,
        uses_point=True,
        differentiable=producer.payload.differentiable and summing.payload.differentiable,  # type: ignore[union-attr]
    )
    outputs = list(producer.outputs)
    outputs[edge.out] = summing.outputs[0]
    folded = producer.replace(payload=payload, outputs=tuple(outputs))

    def read(e: Edge) -> Edge:
        if e.src == summing.id:
            return dataclasses.replace(e, src=producer.id, out=edge.out)
        return e

    ops = tuple(
        folded if op.id == producer.id else op.replace(inputs=tuple(map(read, op.inputs)))
        for op in program.ops
        if op.id != summing.id
    )
    outputs_ = tuple(dataclasses.replace(o, edge=read(o.edge)) for o in program.outputs)
    return program.replace(ops=ops, outputs=outputs_)


def _call(payload: Payload, env: Any, *values: Any) -> tuple[Any, ...]:
    return tuple(payload.fn(env, *values) if payload.uses_point else payload.fn(*values))


def _composed(inner: Payload, outer: Payload, out: int) -> Callable[..., tuple[Any, ...]]:
    """``inner``'s outputs with output ``out`` summed by ``outer``, as contractions."""

    def composed(env: Any, *values: Any) -> tuple[Any, ...]:
        results = list(_call(inner, env, *values))
        (results[out],) = _call(outer, env, results[out])
        return tuple(results)

    def fn(env: Any, *values: Any) -> tuple[Any, ...]:
        return contracting(lambda *xs: composed(env, *xs))(*values)

    return fn


# -- the jaxpr rewrite ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Product:
    """A value known to be ``dot_general(lhs, rhs, dims)`` rearranged: its axis ``k`` is the
    dot's axis ``axes[k]``, or an inserted axis of size 1 where that is None."""

    lhs: Any
    rhs: Any
    dims: Any  # ((lhs contracting, rhs contracting), (lhs batch, rhs batch))
    params: dict[str, Any]  # the dot's other parameters (precision, element type)
    axes: tuple[int | None, ...]


def contracting(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with every sum over batch axes of a product computed as a contraction.

    Example: ``contracting(lambda x, g: jnp.einsum("ti,tj->tij", x, g).sum(0))`` computes
    ``x.T @ g`` (one matmul) instead of ``T`` outer products summed.
    """

    def run(*args: Any) -> Any:
        closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        flat, _ = _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(shape), flat)

    return run


def _uses(jaxpr: jex.Jaxpr) -> dict[Any, int]:
    counts: dict[Any, int] = {}
    for atom in [a for eqn in jaxpr.eqns for a in eqn.invars] + list(jaxpr.outvars):
        if isinstance(atom, jex.Var):
            counts[atom] = counts.get(atom, 0) + 1
    return counts


def _evaluate(
    jaxpr: jex.Jaxpr, consts: Sequence[Any], args: Sequence[Any]
) -> tuple[list[Any], dict[int, Known]]:
    """The jaxpr's outputs, and which of them are single-use products."""
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    products: dict[Any, Known] = {}  # var -> how it was made (single-use values only)
    uses = _uses(jaxpr)

    def read(atom: Any) -> Any:
        return atom.val if isinstance(atom, jex.Literal) else env[atom]

    for eqn in jaxpr.eqns:
        made, outs = _equation(eqn, [read(a) for a in eqn.invars], products)
        env.update(zip(eqn.outvars, outs, strict=True))
        for k, product in made.items():
            if uses.get(eqn.outvars[k]) == 1:
                products[eqn.outvars[k]] = product
    found = {k: products[v] for k, v in enumerate(jaxpr.outvars) if v in products}
    return [read(a) for a in jaxpr.outvars], found


def _equation(
    eqn: jex.JaxprEqn, values: list[Any], products: dict[Any, Known]
) -> tuple[dict[int, Known], list[Any]]:
    """One equation's outputs, and which of them are products (by output position)."""
    name = eqn.primitive.name
    if name in CALLS:
        inner = eqn.params[CALLS[name]]
        outs, made = _evaluate(getattr(inner, "jaxpr", inner), getattr(inner, "consts", ()), values)
        return made, outs
    first = eqn.invars[0] if eqn.invars else None
    source = products.get(first) if isinstance(first, jex.Var) else None
    if name == "reduce_sum" and isinstance(source, _Scatter):
        value = _scatter_sum(source, tuple(int(a) for a in eqn.params["axes"]))
        if value is not None:
            return {}, [value]
    if name == "reduce_sum" and isinstance(source, _Product):
        value, product = _contract(source, tuple(eqn.params["axes"]))
        return ({} if product is None else {0: product}), [value]
    outs = bind(eqn, values)
    if name == "broadcast_in_dim" and (
        isinstance(source, _Zeros)
        or (isinstance(first, jex.Literal) and np.ndim(first.val) == 0 and first.val == 0)
    ):
        return {0: _Zeros()}, outs
    if name == "scatter-add" and isinstance(source, _Zeros):
        numbers = eqn.params["dimension_numbers"]
        if numbers.operand_batching_dims:
            return {0: _Scatter(eqn, values[1], values[2])}, outs
    if name == "dot_general":
        params = {k: v for k, v in eqn.params.items() if k != "dimension_numbers"}
        axes = tuple(range(len(eqn.outvars[0].aval.shape)))
        return {0: _Product(*values, eqn.params["dimension_numbers"], params, axes)}, outs
    if isinstance(source, _Product) and name in _MOVES:
        axes = _MOVES[name](source.axes, eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape, eqn)
        return ({} if axes is None else {0: dataclasses.replace(source, axes=axes)}), outs
    return {}, outs


Axes = tuple[int | None, ...]


@dataclasses.dataclass(frozen=True)
class _Zeros:
    """A value known to be all zeros (a broadcast zero)."""


@dataclasses.dataclass(frozen=True)
class _Scatter:
    """A value known to be ``scatter-add`` of ``updates`` at ``indices`` into zeros, batched
    (``operand_batching_dims``: one table per point)."""

    eqn: jex.JaxprEqn
    indices: Any
    updates: Any


Known = _Product | _Zeros | _Scatter  # what a single-use value is known to be


def _scatter_sum(scatter: _Scatter, summed: tuple[int, ...]) -> Any:
    """``reduce_sum`` over batch axes ``summed`` of a batched scatter-add into zeros: one
    scatter-add into a table without those axes, their points' updates all scattered into
    it; None where another axis is summed."""
    eqn = scatter.eqn
    numbers = eqn.params["dimension_numbers"]
    batch = list(numbers.operand_batching_dims)
    if not summed or any(a not in batch for a in summed):
        return None
    shape = eqn.outvars[0].aval.shape
    kept = [a for a in range(len(shape)) if a not in summed]
    renumber = {a: n for n, a in enumerate(kept)}
    pairs = [
        (o, i)
        for o, i in zip(batch, numbers.scatter_indices_batching_dims, strict=True)
        if o not in summed
    ]
    folded = lax.ScatterDimensionNumbers(
        update_window_dims=tuple(numbers.update_window_dims),
        inserted_window_dims=tuple(renumber[a] for a in numbers.inserted_window_dims),
        scatter_dims_to_operand_dims=tuple(
            renumber[a] for a in numbers.scatter_dims_to_operand_dims
        ),
        operand_batching_dims=tuple(renumber[o] for o, _ in pairs),
        scatter_indices_batching_dims=tuple(i for _, i in pairs),
    )
    table = jax.numpy.zeros(tuple(shape[a] for a in kept), eqn.outvars[0].aval.dtype)
    return lax.scatter_add(
        table,
        scatter.indices,
        scatter.updates,
        folded,
        indices_are_sorted=eqn.params["indices_are_sorted"],
        unique_indices=False,
        mode=eqn.params["mode"],
    )


def _transposed(axes: Axes, _before: Any, _after: Any, eqn: jex.JaxprEqn) -> Axes | None:
    return tuple(axes[p] for p in eqn.params["permutation"])


def _reshaped(axes: Axes, before: Any, after: Any, _eqn: jex.JaxprEqn) -> Axes | None:
    """A reshape that only inserts or removes axes of size 1 (not the dot's own)."""
    kept = [a for a, n in zip(axes, before, strict=True) if n != 1]
    if any(a is not None for a, n in zip(axes, before, strict=True) if n == 1):
        return None
    if [n for n in before if n != 1] != [n for n in after if n != 1]:
        return None
    it = iter(kept)
    return tuple(next(it) if n != 1 else None for n in after)


def _broadcast(axes: Axes, before: Any, after: Any, eqn: jex.JaxprEqn) -> Axes | None:
    """A broadcast that only inserts axes of size 1."""
    where = eqn.params["broadcast_dimensions"]
    if any(after[w] != n for w, n in zip(where, before, strict=True)):
        return None
    if any(n != 1 for k, n in enumerate(after) if k not in where):
        return None
    return tuple(axes[where.index(k)] if k in where else None for k in range(len(after)))


_MOVES = {
    "transpose": _transposed,
    "reshape": _reshaped,
    "squeeze": _reshaped,
    "expand_dims": _reshaped,
    "broadcast_in_dim": _broadcast,
}


def _contract(product: _Product, summed: tuple[int, ...]) -> tuple[Any, _Product | None]:
    """``reduce_sum`` of a product over axes ``summed``: the summed batch axes are contracted by
    the dot itself; the result is again a product when nothing else was summed."""
    (lc, rc), (lb, rb) = product.dims
    nb, size = len(lb), len(lb) + _free(product)
    reduced = [product.axes[a] for a in summed if product.axes[a] is not None]
    batch = [k for k in reduced if k < nb]
    keep = [k for k in range(nb) if k not in batch]
    dims = (
        (tuple(lc) + tuple(lb[k] for k in batch), tuple(rc) + tuple(rb[k] for k in batch)),
        (tuple(lb[k] for k in keep), tuple(rb[k] for k in keep)),
    )
    value = lax.dot_general(product.lhs, product.rhs, dims, **_dot_params(product.params))
    old = keep + list(range(nb, size))  # the dot axis each new axis was
    rest = [old.index(k) for k in reduced if k >= nb]
    if rest:
        value = value.sum(axis=tuple(rest))
    left = [k for k in old if k not in reduced]
    want = [product.axes[j] for j in range(len(product.axes)) if j not in summed]
    value = lax.transpose(value, tuple(left.index(k) for k in want if k is not None))
    ones = tuple(j for j, k in enumerate(want) if k is None)
    value = lax.expand_dims(value, ones) if ones else value
    axes = tuple(None if k is None else old.index(k) for k in want)
    return value, (None if rest else _Product(product.lhs, product.rhs, dims, product.params, axes))


def _free(product: _Product) -> int:
    """How many free (neither batch nor contracted) axes the dot's operands have."""
    (lc, rc), (lb, rb) = product.dims
    lhs, rhs = jax.numpy.ndim(product.lhs), jax.numpy.ndim(product.rhs)
    return lhs - len(lc) - len(lb) + rhs - len(rc) - len(rb)


def _dot_params(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "precision": params.get("precision"),
        "preferred_element_type": params.get("preferred_element_type"),
    }
