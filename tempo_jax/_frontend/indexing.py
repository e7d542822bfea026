"""Indexing recurrent tensors (``x[t-1]``, ``x[0:t+1]``) and defining them by branches.

The first ``len(domain)`` entries of an index address the domain (shared/INDEXING.md);
any further entries index the spatial dims as in NumPy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._ir.errors import (
    BranchMismatchError,
    DefinitionError,
    IndexExprError,
    IndexingError,
    SliceStepError,
)
from .._ir.expr import (
    FALSE,
    TRUE,
    Const,
    Expr,
    IndexItem,
    Slice,
    Symbol,
    as_expr,
    dims_of,
    eq,
    format_index,
    substitute,
    symbols_of,
)
from .._ir.program import TensorSpec, read_spec, static_dim
from .._ir.simplify import simplify
from .._ir.source import SourceInfo, describe
from .tensor import RecurrentTensor, TensorMeta, as_tensor, record

_KEEP = slice(None)


def index_tensor(rt: RecurrentTensor, key: Any, source: SourceInfo) -> RecurrentTensor:
    """``rt[key]``: a view over the domain, then NumPy indexing of the spatial dims."""
    domain_key, spatial_key = _split_key(rt, key, source)
    if all(item is _KEEP for item in domain_key):
        view = rt
    else:
        base = _materialize(rt, source) if rt.is_view else rt
        view = _domain_view(base, domain_key, source)
    if not spatial_key:
        return view
    new_dims = view.ndim - rt.ndim
    full_key = (_KEEP,) * new_dims + spatial_key
    return record(
        lambda v, k: v[k],
        (view, full_key),
        {},
        name=f"getitem[{_key_text(spatial_key)}]",
        source=source,
    )


def _split_key(
    rt: RecurrentTensor, key: Any, source: SourceInfo
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    items = key if isinstance(key, tuple) else (key,)
    n_dom = len(rt.domain)
    n_ellipsis = sum(1 for item in items if item is Ellipsis)
    if n_ellipsis > 1:
        raise IndexingError(f"`{rt.name}[...]`{describe(source)}: an index has at most one `...`")
    if n_ellipsis:
        at = next(k for k, item in enumerate(items) if item is Ellipsis)
        consumed = sum(1 for item in items if item is not None and item is not Ellipsis)
        fill = max(0, n_dom + rt.ndim - consumed)
        items = items[:at] + (_KEEP,) * fill + items[at + 1 :]
    if len(items) < n_dom:
        items = items + (_KEEP,) * (n_dom - len(items))
    return tuple(items[:n_dom]), tuple(items[n_dom:])


def _domain_view(
    rt: RecurrentTensor, domain_key: tuple[Any, ...], source: SourceInfo
) -> RecurrentTensor:
    index = tuple(
        _domain_item(rt, dim, item, source) for dim, item in zip(rt.domain, domain_key, strict=True)
    )
    program = rt.program
    for item in index:
        for sym in symbols_of(item):
            program.check_symbol(sym, f"`{rt.name}[{format_index(index)}]`", source)
    point = {
        d: item for d, item in zip(rt.domain, index, strict=True) if not isinstance(item, Slice)
    }
    sliced = [d for d, item in zip(rt.domain, index, strict=True) if isinstance(item, Slice)]
    shape = []
    for d in rt.shape:
        if isinstance(d, Expr):
            varying = dims_of(d) & set(sliced)
            if varying:
                raise IndexingError(
                    f"`{rt.name}[{format_index(index)}]`{describe(source)} stacks points whose "
                    f"shape {TensorSpec(rt.shape, rt.dtype)} changes along the sliced dims; "
                    "slice only tensors whose shape is the same at every point."
                )
            d = static_dim(substitute(d, point))
        shape.append(d)
    sizes = [static_dim(item.size) for item in index if isinstance(item, Slice)]
    domain: set[Symbol] = set()
    for item in index:
        domain |= dims_of(item)
    meta = TensorMeta(
        program=program,
        op=rt._m.op,
        out=rt._m.out,
        index=index,
        domain=program.sort_domain(domain),
        shape=(*sizes, *shape),
        dtype=rt.dtype,
        source=source,
    )
    return RecurrentTensor(meta)


def _domain_item(rt: RecurrentTensor, dim: Symbol, item: Any, source: SourceInfo) -> IndexItem:
    where = f"`{rt.name}[...]`{describe(source)}"
    if isinstance(item, slice):
        if item == _KEEP:
            return dim
        if item.step is not None and item.step != 1:
            raise SliceStepError(
                f"{where}: the slice `{_slice_text(item)}` over dim `{dim.name}` has step "
                f"{item.step}; slices over domain dims have step 1. Read the range and index "
                "the result spatially, e.g. `x[0:T][::2]`."
            )
        start = _bound_relative(dim, 0 if item.start is None else item.start, where)
        stop = _bound_relative(dim, dim.bound if item.stop is None else item.stop, where)
        return simplify(Slice(start, stop))
    if isinstance(item, RecurrentTensor):
        raise IndexingError(
            f"{where}: `{item.name}` is a tensor; domain dims are indexed by symbolic "
            "expressions only. Gather data-dependent entries from a spatial range instead, "
            "e.g. `tj.take(x[0:T], idx, axis=0)`."
        )
    expr = _bound_relative(dim, item, where)
    if expr.is_bool:
        hint = (
            " (`t == 0` on a symbol is the Python bool False: to read one point, write `x[0]`)"
            if isinstance(item, bool | np.bool_)
            else ""
        )
        raise IndexingError(
            f"{where}: the condition `{expr}` can only select the points of a definition "
            f"(`x[t < 5] = ...`); to read, use an index such as `t - 1`{hint}."
        )
    return simplify(expr)


def _bound_relative(dim: Symbol, value: Any, where: str) -> Expr:
    try:
        expr = as_expr(value)
    except IndexExprError as err:
        raise IndexExprError(f"{where}: {err}") from None
    if isinstance(expr, Const) and expr.value < 0:
        return simplify(dim.bound + expr.value)  # -1 means the bound minus one
    return expr


def _materialize(rt: RecurrentTensor, source: SourceInfo) -> RecurrentTensor:
    # A view of a view: give the first view an op of its own, then index that.
    return record(lambda v: v, (rt,), {}, name=rt.name, source=source)


# ---------------------------------------------------------------------------------------------
# Definitions: x[...] = value
# ---------------------------------------------------------------------------------------------


def define_branch(rt: RecurrentTensor, key: Any, value: Any, source: SourceInfo) -> None:
    """Append the branch ``rt[key] = value`` to a placeholder's ordered definition."""
    program = rt.program
    op = program.op(rt._m.op)
    if op.kind != "merge" or rt.is_view:
        raise DefinitionError(
            f"`{rt.name}[...] = ...`{describe(source)}: only placeholders can be defined by "
            f"branches; `{rt.name}` is computed by `{op.name}`{describe(op.source)}. Create "
            "the tensor with `tj.placeholder(shape, dtype, domain=...)`."
        )
    cond, shifts = _definition_key(rt, key, source)
    text = f"`{rt.name}[{_key_text(key)}] = ...`{describe(source)}"
    _check_reachable(rt, cond, text)
    value_rt = _branch_value(rt, value, text, source)
    stray = set(value_rt.domain) - set(rt.domain)
    if stray:
        names = ", ".join(s.name for s in program.sort_domain(stray))
        raise DefinitionError(
            f"{text}: the value varies over {names}, which `{rt.name}` has no dim for; add the "
            f"dim to the domain of `{rt.name}` or reduce the value over it."
        )
    edge = value_rt.edge()
    index = tuple(simplify(substitute(item, shifts)) for item in edge.index)
    edge = dataclasses.replace(edge, index=index, cond=cond, source=source)
    got = read_spec(program.op(edge.src), edge)
    want = TensorSpec(rt.shape, rt.dtype)
    if (
        got.dtype != want.dtype
        or len(got.shape) != len(want.shape)
        or not all(_same_size(a, b) for a, b in zip(got.shape, want.shape, strict=True))
    ):
        raise BranchMismatchError(
            f"{text}: the value is {got}, but `{rt.name}` holds {want}. Every branch must give "
            f"the same shape and dtype: use `.astype(...)`, `tj.broadcast_to(...)` or "
            "`.reshape(...)` on the value."
        )
    program.add_branch(op.id, edge)


def _check_reachable(rt: RecurrentTensor, cond: Expr, text: str) -> None:
    """A branch that can never fire is an error: after a default, or repeating a condition.

    Branches are first-match: ``x[True] = a`` defines every point not defined before it, so
    a later branch of ``x`` defines none.
    """
    for earlier in rt.program.branches(rt._m.op):
        if earlier.cond == TRUE:
            raise DefinitionError(
                f"{text}: this branch never fires: `{rt.name}` is already defined at every point "
                f"by its default branch{describe(earlier.source)} (the first branch whose "
                f"condition holds defines a point). Define this branch before the default."
            )
        if earlier.cond == cond:
            raise DefinitionError(
                f"{text}: this branch never fires: the branch{describe(earlier.source)} has the "
                f"same condition `{cond}` and comes first. Remove one of them, or combine their "
                "values with `tj.where(...)`."
            )


def _definition_key(
    rt: RecurrentTensor, key: Any, source: SourceInfo
) -> tuple[Expr, dict[Symbol, Expr]]:
    """The branch condition and the substitution that re-expresses the value at the point."""
    where = f"`{rt.name}[{_key_text(key)}] = ...`{describe(source)}"
    cond, shifts = _definition_cond(rt, key, where, source)
    if cond == FALSE:
        hint = (
            " `==` and `!=` on symbols compare the symbols themselves and give a Python bool "
            f"(`t == 0` is False): write `{rt.name}[0] = ...` for one point, or use the "
            "conditions `tj.eq(t, 0)` and `tj.ne(t, 0)`."
            if _has_false(key)
            else ""
        )
        raise DefinitionError(
            f"{where}: the condition is always false, so this branch never fires.{hint}"
        )
    return cond, shifts


def _has_false(key: Any) -> bool:
    """Whether a definition key holds a plain ``False`` (what ``t == 0`` evaluates to)."""
    items = key if isinstance(key, tuple) else (key,)
    return any(isinstance(item, bool | np.bool_) and not item for item in items)


def _definition_cond(
    rt: RecurrentTensor, key: Any, where: str, source: SourceInfo
) -> tuple[Expr, dict[Symbol, Expr]]:
    if isinstance(key, bool | np.bool_) or (isinstance(key, Expr) and key.is_bool):
        cond = as_expr(bool(key)) if isinstance(key, np.bool_) else as_expr(key)
        for sym in symbols_of(cond):
            rt.program.check_symbol(sym, where, source)
        return _own_dims_only(rt, simplify(cond), where), {}
    items = key if isinstance(key, tuple) else (key,)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items = items[:at] + (_KEEP,) * (len(rt.domain) - len(items) + 1) + items[at + 1 :]
    if len(items) > len(rt.domain):
        raise DefinitionError(
            f"{where}: a definition addresses the {len(rt.domain)} domain dims of `{rt.name}` "
            "only; it always defines whole points (no spatial indices)."
        )
    cond: Expr = TRUE
    shifts: dict[Symbol, Expr] = {}
    for dim, item in zip(rt.domain, items, strict=False):
        if isinstance(item, slice) and item != _KEEP:
            raise DefinitionError(
                f"{where}: ranges cannot be defined at once; define one point "
                f"`{rt.name}[{dim.name}] = ...` written for a generic `{dim.name}`."
            )
        if not isinstance(item, slice):
            item_cond, shift = _definition_item(rt, dim, item, where, source)
            cond = cond & item_cond
            if shift is not None:
                shifts[dim] = shift
    return _own_dims_only(rt, simplify(cond), where), shifts


def _definition_item(
    rt: RecurrentTensor, dim: Symbol, item: Any, where: str, source: SourceInfo
) -> tuple[Expr, Expr | None]:
    """The condition one key item puts on ``dim``, and the shift it implies (if any)."""
    expr = _bound_relative(dim, item, where)
    for sym in symbols_of(expr):
        rt.program.check_symbol(sym, where, source)
    if expr.is_bool:
        return expr, None
    offset = simplify(expr - dim)
    if not dims_of(expr):  # a constant point: x[0] = v
        return eq(dim, expr), None
    if isinstance(offset, Const):  # a shift: x[t+1] = f(x[t]) defines x[t] for t >= 1
        if offset.value > 0:
            return dim >= offset, simplify(dim - offset)
        if offset.value < 0:
            return dim < dim.bound + offset, simplify(dim - offset)
        return TRUE, None
    raise DefinitionError(
        f"{where}: the index `{expr}` of dim `{dim.name}` must be `{dim.name}`, a shift "
        f"such as `{dim.name} + 1`, or a constant."
    )


def _own_dims_only(rt: RecurrentTensor, cond: Expr, where: str) -> Expr:
    stray = dims_of(cond) - set(rt.domain)
    if stray:
        names = ", ".join(sorted(s.name for s in stray))
        raise DefinitionError(
            f"{where}: the condition `{cond}` uses {names}, which `{rt.name}` has no dim for."
        )
    return cond


def _branch_value(
    rt: RecurrentTensor, value: Any, text: str, source: SourceInfo
) -> RecurrentTensor:
    if isinstance(value, RecurrentTensor | Expr):
        return as_tensor(value, rt.program, source)
    try:  # constants broadcast to the placeholder's spec, as NumPy assignment does
        array = np.broadcast_to(np.asarray(value), tuple(rt.shape)).astype(rt.dtype)
    except (ValueError, TypeError) as err:
        raise BranchMismatchError(
            f"{text}: the constant cannot fill `{rt.name}` of {TensorSpec(rt.shape, rt.dtype)}: "
            f"{err}"
        ) from None
    const = jnp.asarray(array)
    return record(lambda: const, (), {}, name="const", source=source, program=rt.program)


def _same_size(a: Any, b: Any) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return simplify(as_expr(a) - as_expr(b)) == Const(0)


def _slice_text(item: slice) -> str:
    parts = ["" if v is None else str(v) for v in (item.start, item.stop, item.step)]
    return ":".join(parts)


def _key_text(key: Any) -> str:
    items = key if isinstance(key, tuple) else (key,)
    texts = []
    for item in items:
        if item is Ellipsis:
            texts.append("...")
        elif isinstance(item, slice):
            texts.append(_slice_text(item))
        elif isinstance(item, RecurrentTensor):
            texts.append(item.name)
        else:
            texts.append(str(item))
    return ", ".join(texts)
