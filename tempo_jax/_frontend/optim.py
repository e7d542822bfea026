"""Optimisers as recurrences: any optax ``GradientTransformation`` over an iteration dim."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import optax

from .._ir.errors import TempoError
from .._ir.expr import Symbol
from .._ir.source import capture_source, describe
from .creation import placeholder
from .tensor import RecurrentTensor, as_tensor, record


def _is_rt(x: Any) -> bool:
    return isinstance(x, RecurrentTensor)


def step(
    tx: optax.GradientTransformation,
    params: Any,
    grads: Any,
    *,
    over: Symbol | Sequence[Symbol],
    state: Any = None,
    with_state: bool = False,
) -> Any:
    """One optimiser step per point of ``over``: defines ``params[over + 1]``, returns it.

    ``params`` is a tensor or a pytree of them (placeholders over ``over``, e.g. from
    ``tj.param``) and ``grads`` their gradients (same structure). The optimiser state is a
    recurrence too: ``state[0] = tx.init(params[0])``,
    ``updates, state[i + 1] = tx.update(grads[i], state[i], params[i])`` and
    ``params[i + 1] = optax.apply_updates(params[i], updates)``. Gradient clipping, schedules
    and any other optax chain work unchanged.

    ``over`` may be several nested dims, outermost first: ``over=(i, e, m)`` steps like a
    counter, ``params[i, e, m + 1]`` inside a sweep of ``m``, then ``params[i, e + 1, 0]`` from
    ``m = M - 1`` and ``params[i + 1, 0, 0]`` from ``(e, m) = (E - 1, M - 1)``, with one optimiser
    state carried through all of them (e.g. PPO's epochs and minibatches inside iterations).

    ``state`` starts the optimiser from a given state instead of ``tx.init``'s (e.g. program
    inputs, to resume a run): a pytree of tensors or arrays with the structure, shapes and
    dtypes ``tx.init(params)`` has. With ``with_state``, the result is ``(new_params,
    new_state)``: ``new_state`` the optimiser state after each step, over the parameters'
    domain (read it at the last step to save or continue the run).

    Example::

        w = tj.param(jnp.zeros(3), domain=(i,))
        (g,) = tj.grad(loss, [w])
        w_next = tj.optim.step(optax.adam(1e-2), w, g, over=i)
    """
    source = capture_source()
    where = f"`tj.optim.step`{describe(source)}"
    dims = (over,) if isinstance(over, Symbol) else tuple(over)
    if not dims:
        raise TempoError(f"{where}: `over` names no dim to step over")
    p_leaves, tree = jax.tree_util.tree_flatten(params, is_leaf=_is_rt)
    try:
        tree.flatten_up_to(grads)
    except (ValueError, TypeError) as err:
        raise TempoError(f"{where}: `grads` must have the structure of `params` ({err})") from err
    for p in p_leaves:
        if not _is_rt(p) or p.is_view or p.program.op(p._m.op).kind != "merge":
            raise TempoError(
                f"{where}: parameters must be placeholders (from `tj.param`), got "
                f"{getattr(p, 'name', p)!r}"
            )
        for dim in dims:
            if dim not in p.domain:
                raise TempoError(f"{where}: `{p.name}` has no dim `{dim}` to step over")
    if len(set(dims)) != len(dims):
        raise TempoError(f"{where}: `over` names a dim twice: {', '.join(map(str, dims))}")
    domain = p_leaves[0].domain
    if any(p.domain != domain for p in p_leaves):
        raise TempoError(f"{where}: every parameter must have the same domain")
    first = tuple(0 if d in dims else d for d in domain)
    # (where a step's result is defined, where it is read): the innermost dim steps by one;
    # an outer one steps when every dim inside it is at its last point
    carries = []
    for level, dim in enumerate(dims):
        inner = dims[level + 1 :]
        define_at = tuple(dim + 1 if d == dim else 0 if d in inner else d for d in domain)
        read_at = tuple(d.bound - 1 if d in inner else d for d in domain)
        carries.append((define_at, read_at))

    initial = [p[first] for p in p_leaves]
    if state is None:
        state0 = record(
            tx.init,
            (jax.tree_util.tree_unflatten(tree, initial),),
            {},
            name="optim.init",
            source=source,
        )
    else:
        state0 = _given_state(tx, tree, p_leaves, state, where)
    s_leaves, s_tree = jax.tree_util.tree_flatten(state0, is_leaf=_is_rt)
    carried = []
    for k, leaf in enumerate(s_leaves):
        s = placeholder(leaf.shape, leaf.dtype, domain, name=f"optim_state{k}")
        s[first] = leaf
        carried.append(s)

    def update(g: Any, s: Any, p: Any) -> Any:
        updates, new_state = tx.update(g, s, p)
        return optax.apply_updates(p, updates), new_state

    new_params, new_state = record(
        update,
        (grads, jax.tree_util.tree_unflatten(s_tree, carried), params),
        {},
        name="optim.update",
        source=source,
    )
    for s, new in zip(carried, jax.tree_util.tree_leaves(new_state, is_leaf=_is_rt), strict=True):
        for define_at, read_at in carries:
            s[define_at] = new[read_at]
    for p, new in zip(p_leaves, tree.flatten_up_to(new_params), strict=True):
        if len(p.program._branches[p._m.op]) == 1:  # only its start is defined so far
            for define_at, read_at in carries:
                p[define_at] = new[read_at]
    return (new_params, new_state) if with_state else new_params


def _given_state(
    tx: optax.GradientTransformation,
    tree: Any,
    p_leaves: list[RecurrentTensor],
    state: Any,
    where: str,
) -> Any:
    """``state`` as tensors, checked against what ``tx.init`` makes for these parameters."""
    shapes = jax.tree_util.tree_unflatten(
        tree, [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in p_leaves]
    )
    want = jax.eval_shape(tx.init, shapes)
    want_leaves, want_tree = jax.tree_util.tree_flatten(want)
    leaves, given_tree = jax.tree_util.tree_flatten(state, is_leaf=_is_rt)
    if given_tree != want_tree:
        raise TempoError(
            f"{where}: `state` must have the structure of `tx.init(params)`: {want_tree}, "
            f"got {given_tree}"
        )
    out = []
    for k, (leaf, spec) in enumerate(zip(leaves, want_leaves, strict=True)):
        leaf = leaf if _is_rt(leaf) else as_tensor(jax.numpy.asarray(leaf))
        if tuple(leaf.shape) != spec.shape or leaf.dtype != spec.dtype or leaf.domain:
            got = f"{leaf.dtype}{list(leaf.shape)}" + (
                f" over {', '.join(map(str, leaf.domain))}" if leaf.domain else ""
            )
            raise TempoError(
                f"{where}: `state` leaf {k} must be {spec.dtype}{list(spec.shape)} (no domain), "
                f"as `tx.init(params)` makes it; got {got}"
            )
        out.append(leaf)
    return jax.tree_util.tree_unflatten(want_tree, out)
