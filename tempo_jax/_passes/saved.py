"""Saved residuals: a vjp op that reads what its forward op kept instead of recomputing it.

A vjp op (:mod:`.autodiff`) computes its op's cotangents under :func:`jax.vjp`, which runs the
op's payload forward again first. For an op doing real work (a matmul, a convolution) that
recomputation is a second forward pass (a transformer block's MLP, a policy network). Where it
pays, :func:`save_residuals` instead traces once, at the op's static shapes:

- the **forward** with its residuals: ``jax.vjp`` of the payload, its pullback traced to a
  jaxpr whose constants (the values the pullback needs) are explicit outputs;
- the **backward**: that jaxpr, a function of the cotangents and those residuals.

The forward op gets the residuals as extra outputs (after its own), the vjp op reads them at
the same point, as any other value: stored, scheduled and freed by the compiler like the rest.
A residual that is an input or an output of the op is read from it; a view of an input (a
reshape, transpose, broadcast, squeeze or dtype conversion of it: a policy's flattened
observation) is taken from that input again in the backward instead of stored beside it; a
constant is kept in the backward, and a value computed from constants alone (a causal mask
from ``iota``) is computed there again. Both functions come from the one trace, so the residuals
always match.

It does not pay, and the vjp op recomputes as before, where:

- the payload has no matmul or convolution (element-wise work is cheaper to recompute than
  to store and read back);
- a residual is computed from inputs that do not vary along some dim of the op's domain and is
  larger than the op's largest output (a transposed weight would be stored once per point);
- shapes are not static (growing ranges have their own tiled backward, :mod:`.range_grad`), the
  payload reads its point's coordinates, or the op is not one the user recorded;
- the op lies on a recurrence that the gradient does not flow back along
  (:func:`recurrent_without_gradient`: a policy acting in an environment, its actions
  detached): its points run one at a time, its vjp's all at once, so the residuals would be
  written a step at a time and read back whole, where recomputing the forward is one batched
  pass (the paper's PPO workload: 1.09x the single-jit baseline with the residuals stored in
  the acting loop, 1.05x without).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from .._ir.expr import TRUE, symbols_of
from .._ir.graph import cyclic_components
from .._ir.jaxprs import CALLS
from .._ir.program import Edge, Op, TensorSpec

_WORK = frozenset(["dot_general", "conv_general_dilated"])
# one operand in, its elements rearranged or converted: cheaper to redo than to store
_VIEWS = frozenset(
    ["reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "convert_element_type"]
)


@dataclasses.dataclass(frozen=True)
class Saved:
    """The forward op with its residual outputs, and the vjp op's inputs and payload."""

    forward: Op  # the op, its residuals appended to its outputs
    inputs: tuple[Edge, ...]  # what the backward reads before the cotangents
    backward: Callable[..., tuple[Any, ...]]  # (*inputs, *cotangents) -> input cotangents


def save_residuals(
    op: Op, specs: Sequence[TensorSpec], diff: Sequence[int], outs: Sequence[int]
) -> Saved | None:
    """``op`` with the residuals of its vjp (inputs ``diff``, outputs ``outs``) as outputs, or
    None where recomputing is kept (module docstring). ``specs`` are its inputs' read specs."""
    payload = op.payload
    if op.kind != "apply" or payload is None or payload.uses_point or payload.accumulates:
        return None
    shapes = [spec.shape for spec in (*specs, *op.outputs)]
    if not all(isinstance(n, int) for shape in shapes for n in shape):
        return None
    structs = [jax.ShapeDtypeStruct(tuple(spec.shape), spec.dtype) for spec in specs]
    box: dict[str, Any] = {}

    def forward(*ins: Any) -> tuple[Any, ...]:
        def needed(*xs: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
            full = list(ins)
            for pos, x in zip(diff, xs, strict=True):
                full[pos] = x
            result = tuple(jnp.asarray(r) for r in payload.fn(*full))
            return tuple(result[j] for j in outs), result

        results, pull, every = jax.vjp(needed, *(jnp.asarray(ins[p]) for p in diff), has_aux=True)
        # the pullback as a jaxpr: its constants are the residuals (the forward's values)
        traced = jax.make_jaxpr(pull)(results)
        box["pull"] = traced.jaxpr
        return (*every, *traced.consts)

    try:
        closed = jax.make_jaxpr(forward)(*structs)
    except Exception:  # a payload jax.vjp cannot take here keeps the recomputing vjp
        return None
    if not _works(closed.jaxpr):
        return None
    n_out = len(op.outputs)
    jaxpr = closed.jaxpr
    residual_vars = jaxpr.outvars[n_out:]
    depends = _dependences(jaxpr)
    invariant = [
        {k for k, edge in enumerate(op.inputs) if d not in _index_symbols(edge)} for d in op.domain
    ]
    largest = max((int(np.prod(s.shape)) for s in op.outputs), default=0)
    # per residual: ("input", k), ("view", (k, equations)), ("output", j), ("const", value)
    # ("derived", (var, equations)) or ("new", m)
    sources: list[tuple[str, Any]] = []
    new: list[Any] = []
    made = {out: eqn for eqn in jaxpr.eqns for out in eqn.outvars}
    for var in residual_vars:
        if isinstance(var, jex.Literal):
            sources.append(("const", var.val))
        elif var in jaxpr.invars:
            sources.append(("input", jaxpr.invars.index(var)))
        elif (view := _view(jaxpr, made, var)) is not None:
            sources.append(("view", view))
        elif var in jaxpr.outvars[:n_out]:  # one of the op's own outputs (tanh's)
            sources.append(("output", jaxpr.outvars.index(var)))
        elif var in jaxpr.constvars:
            sources.append(("const", closed.consts[jaxpr.constvars.index(var)]))
        elif not depends[var]:  # computed from constants alone (a mask): made again
            sources.append(("derived", (var, _chain(jaxpr, made, var))))
        else:
            deps = depends[var]
            size = int(np.prod(var.aval.shape))
            if size > largest and any(deps <= dims for dims in invariant):
                return None  # the same value stored at every point of a dim
            if var not in new:
                new.append(var)
            sources.append(("new", new.index(var)))
    if not new and all(kind in ("const", "derived") for kind, _ in sources):
        return None  # nothing saved: the recomputing vjp is as good
    keep = [*jaxpr.outvars[:n_out], *new]
    kept = jex.ClosedJaxpr(jaxpr.replace(outvars=keep), closed.consts)
    specs_new = tuple(TensorSpec(tuple(v.aval.shape), v.aval.dtype) for v in new)
    forward_op = op.replace(
        outputs=(*op.outputs, *specs_new),
        payload=dataclasses.replace(payload, fn=_evaluator(kept)),
    )
    own = sorted({at for kind, at in sources if kind == "output"})
    edges = tuple(
        Edge(op.id, out, op.domain, TRUE, op.source)
        for out in (*own, *(n_out + m for m in range(len(new))))
    )
    inputs = (*op.inputs, *edges)
    pull = box["pull"]
    n_in = len(op.inputs)
    dtypes = [op.outputs[j].dtype for j in outs]

    def backward(*values: Any) -> tuple[Any, ...]:
        ins, kept, cts = values[:n_in], values[n_in : len(inputs)], values[len(inputs) :]
        outputs = dict(zip(own, kept[: len(own)], strict=True))
        found = {"input": ins, "output": outputs, "new": kept[len(own) :]}
        residuals = [
            at
            if kind == "const"
            else _redo(ins, *at)
            if kind == "view"
            else _derive(closed, ins, *at)
            if kind == "derived"
            else found[kind][at]
            for kind, at in sources
        ]
        ct = [jnp.asarray(c, dt) for c, dt in zip(cts, dtypes, strict=True)]
        return tuple(jax.core.eval_jaxpr(pull, residuals, *ct))

    return Saved(forward_op, inputs, backward)


def _view(jaxpr: jex.Jaxpr, made: dict[Any, Any], var: Any) -> tuple[int, tuple[Any, ...]] | None:
    """``(k, equations)`` when ``var`` is input ``k`` of ``jaxpr`` through view equations only
    (:data:`_VIEWS`, applied in order; ``made`` maps each variable to its equation), else
    None."""
    chain = []
    while var not in jaxpr.invars:
        eqn = made.get(var)
        if eqn is None or eqn.primitive.name not in _VIEWS or len(eqn.invars) != 1:
            return None
        chain.append(eqn)
        (var,) = eqn.invars
        if isinstance(var, jex.Literal):
            return None
    return (jaxpr.invars.index(var), tuple(reversed(chain))) if chain else None


def _redo(inputs: Sequence[Any], k: int, equations: tuple[Any, ...]) -> Any:
    """A view residual again: input ``k`` through ``equations``."""
    value = inputs[k]
    for eqn in equations:
        value = eqn.primitive.bind(value, **eqn.params)
    return value


def _chain(jaxpr: jex.Jaxpr, made: dict[Any, Any], var: Any) -> tuple[Any, ...]:
    """The equations computing ``var`` of ``jaxpr`` from its constants, in order."""
    order: list[Any] = []
    seen: set[int] = set()
    stack = [var]
    while stack:  # depth first; an equation after every one it reads
        v = stack[-1]
        eqn = made.get(v)
        if eqn is None or id(eqn) in seen:
            stack.pop()
            continue
        pending = [
            u
            for u in eqn.invars
            if not isinstance(u, jex.Literal) and u in made and id(made[u]) not in seen
        ]
        if pending:
            stack.extend(pending)
            continue
        seen.add(id(eqn))
        order.append(eqn)
        stack.pop()
    return tuple(order)


def _derive(closed: jex.ClosedJaxpr, inputs: Sequence[Any], var: Any, equations: Any) -> Any:
    """A residual computed from constants alone again: ``equations`` of ``closed`` evaluated in
    order (``inputs``, the jaxpr's, are passed along and not read)."""
    sub = closed.jaxpr.replace(outvars=[var], eqns=list(equations))
    (value,) = jax.core.eval_jaxpr(sub, closed.consts, *inputs)
    return value


def _evaluator(closed: jex.ClosedJaxpr) -> Callable[..., tuple[Any, ...]]:
    def fn(*args: Any) -> tuple[Any, ...]:
        return tuple(jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *args))

    return fn


def _works(jaxpr: jex.Jaxpr) -> bool:
    """Whether ``jaxpr`` (calls included) has a matmul or a convolution."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _WORK:
            return True
        sub = eqn.params.get(CALLS.get(eqn.primitive.name, ""))
        if sub is not None and _works(sub.jaxpr if isinstance(sub, jex.ClosedJaxpr) else sub):
            return True
    return False


def _dependences(jaxpr: jex.Jaxpr) -> dict[Any, set[int]]:
    """Per variable of ``jaxpr``, the positions of the inputs it is computed from."""
    deps: dict[Any, set[int]] = {var: {k} for k, var in enumerate(jaxpr.invars)}
    for var in jaxpr.constvars:
        deps[var] = set()
    for eqn in jaxpr.eqns:
        found: set[int] = set()
        for var in eqn.invars:
            if not isinstance(var, jex.Literal):
                found |= deps.get(var, set())
        for var in eqn.outvars:
            deps[var] = found
    return deps


def _index_symbols(edge: Edge) -> frozenset[Any]:
    """The symbols of ``edge``'s index (a slice's ends included)."""
    return frozenset().union(*(symbols_of(item) for item in edge.index))


def recurrent_without_gradient(ops: Mapping[int, Op], relevant: set[int]) -> set[int]:
    """The ops of ``relevant`` (those gradients flow through) that lie on a dependence cycle
    of ``ops`` (a recurrence: their points run one at a time, in a loop) but on no cycle of
    ``relevant`` ops alone: the gradient does not flow back along the recurrence (a policy
    acting in an environment, its actions detached), so their vjp ops, off every cycle, run
    over all the points at once. Their residuals would be written one step at a time and
    read back whole; the vjp recomputes the forward instead, in one batched pass."""
    return (_on_cycle(ops, set(ops)) & relevant) - _on_cycle(ops, relevant)


def _on_cycle(ops: Mapping[int, Op], within: set[int]) -> set[int]:
    """The ops of ``within`` on a cycle of reads among ``within`` (a self-read included)."""
    readers: dict[int, list[int]] = {k: [] for k in within}
    for op_id in within:
        for edge in ops[op_id].inputs:
            if edge.src in within:
                readers[edge.src].append(op_id)
    return set().union(*cyclic_components(readers))
