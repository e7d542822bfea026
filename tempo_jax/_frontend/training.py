"""Training in a program: parameters, gradients (``tj.grad``, ``loss.backward()``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._ir.errors import TempoError
from .._ir.expr import Symbol
from .._ir.source import SourceInfo, capture_source, describe
from .._passes.autodiff import gradients
from .creation import placeholder
from .program import active_program
from .tensor import RecurrentTensor, as_tensor


def _is_rt(x: Any) -> bool:
    return isinstance(x, RecurrentTensor)


def grad(loss: RecurrentTensor, wrt: Any) -> Any:
    """Gradients of ``loss`` with respect to ``wrt`` (a tensor, or a pytree of tensors).

    The loss is a float scalar at each point of its domain; its points are summed (a loss over
    ``(i,)`` read at ``i`` differentiates each iteration's loss). Each gradient has the domain
    and shape of its tensor: ``grad(loss, w)[q]`` is the derivative of the summed loss with
    respect to ``w[q]``, summed over every point that read ``w[q]`` (so a parameter over
    ``(i,)`` read at every ``(b, i, t)`` gets the sum over ``b`` and ``t``). The tensors are
    leaves: how they are defined (e.g. by an optimiser step recorded later) is not
    differentiated. Gradients flow back through recurrences (backpropagation through time)
    and stop at ``x.detach()``.

    Example::

        (g,) = tj.grad(loss, [w])          # g over w's domain
    """
    source = capture_source()
    if not isinstance(loss, RecurrentTensor):
        raise TempoError(f"`tj.grad`{describe(source)} takes a recurrent tensor as the loss")
    leaves, tree = jax.tree_util.tree_flatten(wrt, is_leaf=_is_rt)
    if not leaves:
        raise TempoError(f"`tj.grad`{describe(source)}: `wrt` holds no tensors")
    for leaf in leaves:
        if not isinstance(leaf, RecurrentTensor):
            raise TempoError(
                f"`tj.grad`{describe(source)}: `wrt` must hold recurrent tensors, got {leaf!r}"
            )
    return jax.tree_util.tree_unflatten(tree, gradients(loss, leaves, source))


def backward(loss: RecurrentTensor) -> None:
    """Gradients of ``loss`` for every ``tj.param`` recorded so far: read them as ``w.grad``."""
    source = capture_source()
    program = loss.program
    params = list(program._params)
    if not params:
        raise TempoError(
            f"`{loss.name}.backward()`{describe(source)}: the program has no `tj.param`; "
            "declare parameters with `tj.param(...)` or use `tj.grad(loss, wrt=[...])`."
        )
    for param, g in zip(params, gradients(loss, params, source), strict=True):
        program._grads[(param._m.op, param._m.out)] = g


def grad_of(rt: RecurrentTensor) -> RecurrentTensor:
    """``rt.grad``: the gradient ``loss.backward()`` computed for the parameter ``rt``."""
    found = rt.program._grads.get((rt._m.op, rt._m.out))
    if found is None or rt.is_view:
        raise TempoError(
            f"`{rt.name}.grad`{describe(capture_source())} is not defined: call "
            f"`loss.backward()` after declaring `{rt.name}` with `tj.param(...)`, or use "
            "`tj.grad(loss, wrt=[...])`."
        )
    return found


def detach(rt: RecurrentTensor) -> RecurrentTensor:
    """The same value, through which no gradient flows."""
    from .tensor import apply

    out = apply(jax.lax.stop_gradient, rt, name="detach")
    program = out.program
    op = program.op(out._m.op)
    assert op.payload is not None
    program.replace_op(op.replace(payload=dataclasses.replace(op.payload, differentiable=False)))
    return out


def param(
    init: Any,
    domain: Sequence[Symbol] | Symbol = (),
    *,
    over: Symbol | Sequence[Symbol] | None = None,
    name: str | None = None,
) -> Any:
    """A trainable parameter (or a pytree of them, e.g. flax params) starting at ``init``.

    ``init`` is an array, a pytree of arrays (a flax ``linen`` params dict, an ``nnx.State``),
    a recurrent tensor (e.g. an input), or a function returning one of those. With a domain,
    the parameter is a placeholder over it with its first iteration defined: ``w[0] = init``
    along ``over`` (default: the only dim); define the next with an optimiser,
    ``tj.optim.step(tx, w, g, over=i)``. ``over`` may be several nested dims, outermost
    first (``over=(i, e, m)``: updates counted like digits): ``w[0, 0, 0] = init``. Without a
    domain it is constant.

    Example::

        w = tj.param(jnp.zeros((3,)), domain=(i,))
        params = tj.param(model.init(key, x), domain=(i,))   # same pytree, tensor leaves
        nested = tj.param(w0, domain=(i, e, m), over=(i, e, m))  # E*M updates per iteration
    """
    source = capture_source()
    active_program("tj.param")
    if isinstance(domain, Symbol):
        domain = (domain,)
    domain = tuple(domain)
    if callable(init) and not _is_rt(init):
        init = init()
    if domain and over is None:
        if len(domain) != 1:
            raise TempoError(
                f"`tj.param`{describe(source)} over {len(domain)} dims needs `over=`: the "
                "iteration dim along which the optimiser updates it."
            )
        over = domain[0]
    over_dims = _over_dims(over)
    for dim in over_dims:
        if dim not in domain:
            raise TempoError(
                f"`tj.param`{describe(source)}: `over` dim `{dim}` is not in its domain"
            )
    paths, tree = jax.tree_util.tree_flatten_with_path(init, is_leaf=_is_rt)
    base = name or _param_name(source)
    leaves = []
    for path, value in paths:
        label = base + jax.tree_util.keystr(path) if path else base
        leaves.append(_param_leaf(value, domain, over_dims, label, source))
    return jax.tree_util.tree_unflatten(tree, leaves)


def _over_dims(over: Symbol | Sequence[Symbol] | None) -> tuple[Symbol, ...]:
    """``over`` as a tuple of dims (none for a constant parameter)."""
    if over is None:
        return ()
    return (over,) if isinstance(over, Symbol) else tuple(over)


def _param_leaf(
    value: Any, domain: tuple[Symbol, ...], over: tuple[Symbol, ...], name: str, source: SourceInfo
) -> RecurrentTensor:
    program = active_program("tj.param")
    if not _is_rt(value):
        value = jnp.asarray(value)
        if not jnp.issubdtype(value.dtype, jnp.inexact):
            value = value.astype(jnp.float32)
    value_rt = as_tensor(value, program, source)
    if not all(isinstance(d, int) for d in value_rt.shape):
        raise TempoError(f"`tj.param`{describe(source)}: `{name}` must have a static shape")
    stray = set(value_rt.domain) - (set(domain) - set(over))
    if stray:
        raise TempoError(
            f"`tj.param`{describe(source)}: the initial value of `{name}` varies over "
            f"{', '.join(s.name for s in stray)}, which it may not (the iteration dim included)."
        )
    rt = placeholder(value_rt.shape, value_rt.dtype, domain, name=name)
    if not over:
        rt[True] = value_rt
    else:
        rt[tuple(0 if d in over else d for d in domain)] = value_rt
    program._params.append(rt)
    return rt


def _param_name(source: SourceInfo) -> str:
    from .creation import _assigned_name

    return _assigned_name(source) or "param"
