"""The one converter from the SDG to isl objects (every islpy call in the project is here).

Naming conventions (isl dims are always found by name, never by position, by callers):

- Parameters are the program's bounds, named as the bound symbols (``T``, ``B``), in
  ``program.bounds`` order; :func:`param_context` constrains each to be ``>= 1``.
- The tuple of op ``%k`` is ``S{k}`` (:func:`tuple_name`); its set dims are named after the
  op's domain dims, in ``op.domain`` order: ``[B, T] -> { S3[b, t] : ... }``.
- An access map ``{ S_consumer[...] -> S_producer[...] }`` names its input dims after the
  consumer's dims and its output dims after the producer's dims with a prime appended
  (``t'``, :func:`producer_dim_name`), so that ``x[t - 1]`` read over ``(t,)`` prints as
  ``{ S1[t] -> S0[t' = -1 + t] : ... }``. Dim names are Python identifiers, so a primed name
  never clashes with a dim or bound; :func:`symbol_for_name` maps any isl name back to its
  symbol.

Everything is built programmatically (no isl text is emitted), in one :class:`isl.Context`
that the caller creates with :func:`isl_context` and passes to every builder: isl objects of
different contexts cannot be combined.

Merge ops are first-match: branch ``k`` defines the points where its condition holds and no
earlier branch's does (:func:`branch_conditions`); dependences and bounds checks of a branch
use that exclusive set (:func:`read_conditions`).

Domains are full boxes: an op whose points are only partly demanded (e.g. the body of
``x[t + 1] = f(x[t], y[t + 1])``, lowered over all of ``0 <= t < T``) can read out of bounds
at points nobody demands; :func:`out_of_bounds` reports those too.

:func:`fix_params`, :func:`set_points`, :func:`map_pairs` and :func:`sample_values` read
concrete points back as ``{isl name: value}`` dicts (for tests and error messages).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

import islpy as isl

from .._ir.errors import IndexExprError, VerificationError
from .._ir.expr import (
    Add,
    And,
    BoolConst,
    Cmp,
    Const,
    Expr,
    FloorDiv,
    IndexItem,
    Max,
    Min,
    Mod,
    Mul,
    Not,
    Or,
    Slice,
    Sub,
    Symbol,
    eq,
    symbols_of,
)
from .._ir.program import Edge, Op, Program

_DT = isl.dim_type
PRIME = "'"

# ---------------------------------------------------------------------------------------------
# Context, parameters, domains
# ---------------------------------------------------------------------------------------------


def isl_context() -> isl.Context:
    """A fresh isl context; build every isl object of one analysis in the same context."""
    return isl.Context()


def param_space(program: Program, ctx: isl.Context) -> isl.Space:
    """The parameter space ``[T, B, ...]``: one parameter per bound of ``program``."""
    return _param_space(ctx, program.bounds)


def _param_space(ctx: isl.Context, bounds: tuple[Symbol, ...]) -> isl.Space:
    space = isl.Space.params_alloc(ctx, len(bounds))
    for pos, bound in enumerate(bounds):
        space = space.set_dim_name(_DT.param, pos, bound.name)
    return space


def param_context(program: Program, ctx: isl.Context) -> isl.Set:
    """The parameter set where every bound is ``>= 1``: ``[T] -> { : T >= 1 }``."""
    return _param_context(ctx, program.bounds)


@functools.lru_cache(maxsize=256)
def _param_context(ctx: isl.Context, bounds: tuple[Symbol, ...]) -> isl.Set:
    return cond_to_set(_all(bound >= 1 for bound in bounds), _param_space(ctx, bounds))


def tuple_name(op: Op) -> str:
    """The isl tuple name of ``op``'s statement: ``S{op.id}``."""
    return _statement(op.id)


def _statement(op_id: int) -> str:
    return f"S{op_id}"


def domain_space(program: Program, op: Op, ctx: isl.Context) -> isl.Space:
    """The set space ``[params] -> { S{id}[dims] }`` of ``op``'s iteration domain."""
    return _set_space(program, ctx, [dim.name for dim in op.domain]).set_tuple_name(
        _DT.set, tuple_name(op)
    )


def domain_set(program: Program, op: Op, ctx: isl.Context) -> isl.Set:
    """``op``'s iteration domain: the box ``0 <= d < bound(d)``, with every bound ``>= 1``.

    E.g. ``[B, T] -> { S3[b, t] : 0 <= b < B and 0 <= t < T }``. Built once per context
    and op (a compile asks for each op's domain hundreds of times).
    """
    return _domain_set(ctx, program.bounds, op.id, op.domain)


@functools.lru_cache(maxsize=8192)
def _domain_set(
    ctx: isl.Context, bounds: tuple[Symbol, ...], op_id: int, domain: tuple[Symbol, ...]
) -> isl.Set:
    space = _space(ctx, bounds, [d.name for d in domain]).set_tuple_name(_DT.set, _statement(op_id))
    box = _all(((dim >= 0) & (dim < dim.bound)) for dim in domain)
    return cond_to_set(box, space).intersect_params(_param_context(ctx, bounds)).coalesce()


def _set_space(program: Program, ctx: isl.Context, dims: list[str]) -> isl.Space:
    """An unnamed set space with the given dims and the program's bounds as parameters."""
    return _space(ctx, program.bounds, dims)


def _space(ctx: isl.Context, bounds: tuple[Symbol, ...], dims: list[str]) -> isl.Space:
    params = [bound.name for bound in bounds]
    return isl.Space.create_from_names(ctx, set=dims, params=params)


def _all(conds: Iterable[Expr]) -> Expr:
    """The conjunction of ``conds`` (``True`` when there are none)."""
    result: Expr = BoolConst(True)
    for cond in conds:
        result = cond if result == BoolConst(True) else And(result, cond)
    return result


# ---------------------------------------------------------------------------------------------
# Expressions and conditions
# ---------------------------------------------------------------------------------------------


def expr_to_pwaff(expr: Expr, space: isl.Space) -> isl.PwAff:
    """The integer expression ``expr`` as a piecewise quasi-affine function on ``space``.

    ``space`` is a set (or parameter) space; symbols are resolved by name among its set dims,
    then its parameters. Supported: constants, ``+``, ``-``, ``*`` with a constant side,
    ``//`` and ``%`` by a non-zero constant, ``min`` and ``max``. Anything else raises
    :class:`IndexExprError`.
    """
    if expr.is_bool:
        raise IndexExprError(f"`{expr}` is a condition where an integer expression is expected.")
    if isinstance(expr, Const):
        return isl.PwAff.from_aff(isl.Aff.val_on_domain_space(space, expr.value))
    if isinstance(expr, Symbol):
        return _symbol_to_pwaff(expr, space)
    if isinstance(expr, Add | Sub | Min | Max):
        a, b = expr_to_pwaff(expr.a, space), expr_to_pwaff(expr.b, space)
        combine: dict[type, Callable[[isl.PwAff, isl.PwAff], isl.PwAff]] = {
            Add: isl.PwAff.add,
            Sub: isl.PwAff.sub,
            Min: isl.PwAff.min,
            Max: isl.PwAff.max,
        }
        return combine[type(expr)](a, b)
    if isinstance(expr, Mul):
        return _mul_to_pwaff(expr, space)
    if isinstance(expr, FloorDiv | Mod):
        return _divmod_to_pwaff(expr, space)
    raise IndexExprError(f"`{expr}` ({type(expr).__name__}) cannot be converted to isl.")


def _symbol_to_pwaff(sym: Symbol, space: isl.Space) -> isl.PwAff:
    for dim_type in (_DT.set, _DT.param):
        pos = space.find_dim_by_name(dim_type, sym.name)
        if pos >= 0:
            return isl.PwAff.var_on_domain(space, dim_type, pos)
    kind = "bound" if sym.is_bound else "dim"
    raise IndexExprError(
        f"the {kind} `{sym.name}` is not available here (dims: {_names(space, _DT.set)}; "
        f"bounds: {_names(space, _DT.param)}): an index may only use the reader's own dims "
        "and the program's bounds."
    )


def _names(space: isl.Space, dim_type: isl.dim_type) -> str:
    names = [space.get_dim_name(dim_type, pos) for pos in range(space.dim(dim_type))]
    return ", ".join(str(name) for name in names) or "none"


def _constant(expr: Expr) -> int | None:
    """The value of a symbol-free expression, ``None`` if it has symbols."""
    return None if symbols_of(expr) else int(expr.evaluate({}))


def _mul_to_pwaff(expr: Mul, space: isl.Space) -> isl.PwAff:
    a, b = _constant(expr.a), _constant(expr.b)
    if a is not None:
        return expr_to_pwaff(expr.b, space).scale_val(a)
    if b is not None:
        return expr_to_pwaff(expr.a, space).scale_val(b)
    raise IndexExprError(
        f"`{expr}` multiplies two non-constant expressions; polyhedral analysis needs "
        "affine indices (multiply by constants only)."
    )


def _divmod_to_pwaff(expr: FloorDiv | Mod, space: isl.Space) -> isl.PwAff:
    divisor = _constant(expr.b)
    if divisor is None or divisor == 0:
        what = "a non-constant" if divisor is None else "zero"
        raise IndexExprError(
            f"`{expr}` divides by {what} divisor; `//` and `%` in indices need a non-zero "
            "integer constant on the right."
        )
    a = expr_to_pwaff(expr.a, space)
    # Python semantics: a // c = floor(a / c); a % c = a - c * (a // c) (sign of c).
    quotient = (
        a.scale_down_val(divisor).floor()
        if divisor > 0
        else a.neg().scale_down_val(-divisor).floor()
    )
    if isinstance(expr, FloorDiv):
        return quotient
    return a.mod_val(divisor) if divisor > 0 else a.sub(quotient.scale_val(divisor))


def cond_to_set(cond: Expr, space: isl.Space) -> isl.Set:
    """The points of ``space`` (a set or parameter space) where the condition ``cond`` holds.

    Supported: ``True``/``False``, comparisons of convertible integer expressions
    (see :func:`expr_to_pwaff`), ``&``, ``|`` and ``~``.
    """
    if not cond.is_bool:
        raise IndexExprError(f"`{cond}` is an integer expression where a condition is expected.")
    if isinstance(cond, BoolConst):
        return isl.Set.universe(space) if cond.value else isl.Set.empty(space)
    if isinstance(cond, Cmp):
        a, b = expr_to_pwaff(cond.a, space), expr_to_pwaff(cond.b, space)
        compare: dict[str, Callable[[isl.PwAff, isl.PwAff], isl.Set]] = {
            "<": isl.PwAff.lt_set,
            "<=": isl.PwAff.le_set,
            ">": isl.PwAff.gt_set,
            ">=": isl.PwAff.ge_set,
            "==": isl.PwAff.eq_set,
            "!=": isl.PwAff.ne_set,
        }
        return compare[cond.op](a, b)
    if isinstance(cond, And):
        return cond_to_set(cond.a, space).intersect(cond_to_set(cond.b, space))
    if isinstance(cond, Or):
        return cond_to_set(cond.a, space).union(cond_to_set(cond.b, space))
    if isinstance(cond, Not):
        return cond_to_set(cond.a, space).complement()
    raise IndexExprError(f"`{cond}` ({type(cond).__name__}) cannot be converted to isl.")


# ---------------------------------------------------------------------------------------------
# Edges: access maps, branch conditions, dependences, bounds
# ---------------------------------------------------------------------------------------------


def producer_dim_name(dim: Symbol) -> str:
    """The name of producer dim ``dim`` on the output side of an access map (``t'``)."""
    return dim.name + PRIME


def symbol_for_name(program: Program, name: str) -> Symbol:
    """The dim or bound of ``program`` that the isl dim or parameter ``name`` stands for.

    Undoes :func:`producer_dim_name`: both ``t`` and ``t'`` give the dim ``t``.
    """
    base = name.removesuffix(PRIME)
    for sym in (*program.dims, *program.bounds):
        if sym.name == base:
            return sym
    raise KeyError(f"`{name}` names no dim or bound of this program")


def access_map(program: Program, consumer_op: Op, edge: Edge, ctx: isl.Context) -> isl.Map:
    """The producer points each consumer point reads through ``edge``.

    ``{ S_consumer[dims] -> S_producer[dims'] : ... }``: an index expression fixes its
    producer coordinate, a slice ``start:stop`` ranges it over ``start <= d' < stop``; the
    edge's own condition and the consumer's domain restrict the input side. Producer
    coordinates are not bounds-checked (see :func:`out_of_bounds`).
    """
    producer = program.op(edge.src)
    if len(edge.index) != len(producer.domain):
        raise VerificationError(
            f"`{edge.describe(producer.name)}` (read by `{consumer_op.name}`) has "
            f"{len(edge.index)} index items for the {len(producer.domain)} dims of "
            f"`{producer.name}`."
        )
    in_names = [dim.name for dim in consumer_op.domain]
    out_names = [producer_dim_name(dim) for dim in producer.domain]
    space = _set_space(program, ctx, in_names + out_names)
    try:
        relation = cond_to_set(edge.cond, space)
        for name, item in zip(out_names, edge.index, strict=True):
            relation = relation.intersect(_item_set(space, name, item))
    except IndexExprError as err:
        raise IndexExprError(
            f"{err} (in `{edge.describe(producer.name)}`, read by `{consumer_op.name}`)"
        ) from err
    access = isl.Map.from_range(relation).move_dims(_DT.in_, 0, _DT.out, 0, len(in_names))
    access = access.set_tuple_name(_DT.in_, tuple_name(consumer_op))
    access = access.set_tuple_name(_DT.out, tuple_name(producer))
    return access.intersect_domain(domain_set(program, consumer_op, ctx)).coalesce()


def _item_set(space: isl.Space, name: str, item: IndexItem) -> isl.Set:
    """The points of ``space`` where the dim ``name`` takes a value of the index ``item``."""
    var = isl.PwAff.var_on_domain(space, _DT.set, space.find_dim_by_name(_DT.set, name))
    if isinstance(item, Slice):
        start, stop = expr_to_pwaff(item.start, space), expr_to_pwaff(item.stop, space)
        return var.ge_set(start).intersect(var.lt_set(stop))
    return var.eq_set(expr_to_pwaff(item, space))


def branch_conditions(program: Program, merge_op: Op, ctx: isl.Context) -> list[isl.Set]:
    """Where each branch of ``merge_op`` defines it, first match wins.

    Branch ``k``: ``cond_k and not (cond_0 or ... or cond_{k-1})``, within the domain.
    """
    if merge_op.kind != "merge":
        raise ValueError(f"`{merge_op.name}` is a {merge_op.kind} op, not a merge")
    domain = domain_set(program, merge_op, ctx)
    taken = isl.Set.empty(domain.get_space())
    exclusive = []
    for edge in merge_op.inputs:
        holds = cond_to_set(edge.cond, domain.get_space()).intersect(domain)
        exclusive.append(holds.subtract(taken).coalesce())
        taken = taken.union(holds)
    return exclusive


def read_conditions(program: Program, op: Op, ctx: isl.Context) -> list[isl.Set]:
    """For each input edge of ``op``, the points of its domain where the edge is read.

    The exclusive branch conditions for a merge; each edge's condition otherwise.
    """
    if op.kind == "merge":
        return branch_conditions(program, op, ctx)
    domain = domain_set(program, op, ctx)
    space = domain.get_space()
    return [cond_to_set(edge.cond, space).intersect(domain).coalesce() for edge in op.inputs]


def dependences(program: Program, ctx: isl.Context) -> isl.UnionMap:
    """All point-level dependences ``{ S_producer[...] -> S_consumer[...] }``.

    The reversed access maps of every op's input edges (merge branches restricted to their
    exclusive conditions): each pair reads "the producer point must run before the consumer
    point", the direction isl's scheduler expects of validity constraints. Producer points
    outside the producer's domain are left out (:func:`out_of_bounds` reports those reads);
    output reads are not included.
    """
    deps = isl.UnionMap.empty(param_space(program, ctx))
    for op in program.ops:
        for edge, where in zip(op.inputs, read_conditions(program, op, ctx), strict=True):
            access = access_map(program, op, edge, ctx).intersect_domain(where)
            access = access.intersect_range(domain_set(program, program.op(edge.src), ctx))
            deps = deps.union(access.reverse())
    return deps.coalesce()


def out_of_bounds(program: Program, consumer_op: Op, edge: Edge, ctx: isl.Context) -> isl.Set:
    """The consumer points that read outside the producer's domain through ``edge``.

    Only points where the edge is read count (its condition; for a merge branch, its
    exclusive first-match condition). Empty when every read is in bounds.
    """
    where = read_conditions(program, consumer_op, ctx)[_edge_position(consumer_op, edge)]
    access = access_map(program, consumer_op, edge, ctx).intersect_domain(where)
    producer_domain = domain_set(program, program.op(edge.src), ctx)
    return access.subtract_range(producer_domain).domain().coalesce()


def _edge_position(op: Op, edge: Edge) -> int:
    """Position of ``edge`` among ``op``'s inputs (by identity first, then by equality)."""
    for pos, candidate in enumerate(op.inputs):
        if candidate is edge:
            return pos
    for pos, candidate in enumerate(op.inputs):
        if candidate == edge:
            return pos
    raise ValueError(f"the edge {edge} is not an input of `{op.name}`")


# ---------------------------------------------------------------------------------------------
# Reading points back
# ---------------------------------------------------------------------------------------------


def fix_params(obj: isl.Set | isl.Map, values: Mapping[str, int]) -> isl.Set | isl.Map:
    """``obj`` with each parameter named in ``values`` fixed to its value."""
    for name, value in values.items():
        pos = obj.find_dim_by_name(_DT.param, name)
        if pos < 0:
            raise KeyError(f"`{name}` is not a parameter of {obj}")
        obj = obj.fix_val(_DT.param, pos, int(value))
    return obj


def set_points(s: isl.Set) -> list[dict[str, int]]:
    """Every point of a bounded set (fix its parameters first), as ``{dim name: value}``."""
    names = [s.get_dim_name(_DT.set, pos) for pos in range(s.dim(_DT.set))]
    return [dict(zip(names, values, strict=True)) for values in _point_values(s)]


def map_pairs(m: isl.Map) -> list[tuple[dict[str, int], dict[str, int]]]:
    """Every pair of a bounded map (fix its parameters first), as two name -> value dicts."""
    n_in = m.dim(_DT.in_)
    in_names = [m.get_dim_name(_DT.in_, pos) for pos in range(n_in)]
    out_names = [m.get_dim_name(_DT.out, pos) for pos in range(m.dim(_DT.out))]
    return [
        (
            dict(zip(in_names, values[:n_in], strict=True)),
            dict(zip(out_names, values[n_in:], strict=True)),
        )
        for values in _point_values(m.wrap())
    ]


def _point_values(s: isl.Set) -> list[list[int]]:
    """The set-dim coordinates of every point of a bounded set, in dim order."""
    n = s.dim(_DT.set)
    found: list[list[int]] = []
    s.foreach_point(
        lambda point: found.append(
            [point.get_coordinate_val(_DT.set, pos).to_python() for pos in range(n)]
        )
    )
    return found


def sample_values(s: isl.Set) -> dict[str, int] | None:
    """One point of ``s`` with its parameter values (``{"T": 5, "t": 4}``), or ``None``."""
    if s.is_empty():
        return None
    point = s.sample_point()
    params = [s.get_dim_name(_DT.param, pos) for pos in range(s.dim(_DT.param))]
    dims = [s.get_dim_name(_DT.set, pos) for pos in range(s.dim(_DT.set))]
    return _coordinates(point, params, _DT.param) | _coordinates(point, dims, _DT.set)


def _coordinates(point: isl.Point, names: list[str], dim_type: isl.dim_type) -> dict[str, int]:
    return {
        name: point.get_coordinate_val(dim_type, pos).to_python() for pos, name in enumerate(names)
    }


def max_over_box(
    program: Program,
    expr: Expr,
    dims: Iterable[Symbol],
    values: Mapping[str, int],
    ctx: isl.Context,
) -> int:
    """The largest value of ``expr`` over the box ``0 <= d < bound(d)`` of ``dims``.

    ``values`` fixes every bound (a dynamic bound at its max); e.g. ``t + 1`` over ``(t,)``
    with ``T = 7`` gives 7, ``t - max(0, t - 2)`` gives 2.
    """
    dims = tuple(dims)
    space = _set_space(program, ctx, [dim.name for dim in dims])
    box = cond_to_set(_all(((dim >= 0) & (dim < dim.bound)) for dim in dims), space)
    box = fix_params(box.intersect_params(param_context(program, ctx)), values)
    pwaff = expr_to_pwaff(expr, space).intersect_domain(box)
    if box.is_empty():
        return 0
    return int(pwaff.max_val().to_python())


def set_to_conjuncts(program: Program, subset: isl.Set, box: isl.Set) -> list[Expr] | None:
    """``subset`` of ``box`` as conditions that, with the box, define it: ``[t <= T - 2]``.

    ``[]`` when ``subset`` is the whole box; ``None`` when it is not one convex piece without
    existential variables (not expressible as a conjunction of affine conditions).
    """
    gist = subset.coalesce().gist(box)
    if gist.plain_is_universe():
        return []
    pieces = gist.get_basic_sets()
    if len(pieces) != 1 or pieces[0].dim(_DT.div):
        return None
    conds: list[Expr] = []
    for constraint in pieces[0].get_constraints():
        total: Expr = Const(0)
        for name, val in constraint.get_coefficients_by_name().items():
            coeff = int(val.to_python())
            term: Expr = Const(coeff) if name == 1 else symbol_for_name(program, name) * coeff
            total = total + term
        conds.append(eq(total, 0) if constraint.is_equality() else total >= 0)
    return conds
