"""Polyhedral scheduling of a program into a typed schedule tree (:mod:`.tree`).

:func:`schedule` hands isl every op's iteration domain, the point-level dependences of
:func:`~tempo_jax._schedule.isl_convert.dependences` as validity constraints (a producer point
runs strictly before its consumers) and the same dependences as proximity constraints (keep
producer and consumer close, i.e. fuse loops and prefer small dependence distances), under
the parameter context ``every bound >= 1``. isl's schedule tree is turned into an AST with
:class:`isl.AstBuild` and the AST into our own tree, whose expressions are
:mod:`tempo_jax._ir.expr` nodes; loops are named after the domain dim they walk.

isl options, set on the private context of each call:

- ``schedule_algorithm = ISL`` (Pluto-like, proximity driven) rather than Feautrier: it fuses
  a recurrence and everything it reads into one loop, the shape later stages want.
- ``schedule_serialize_sccs = 0``: do not force each strongly connected component into its
  own loop nest; fusing across components is what makes ``s[t]`` and ``add[t]`` one loop.
- ``schedule_outer_coincidence = 0`` and ``schedule_maximize_coincidence = 0``: we pass no
  coincidence (parallelism) constraints; we only need a legal, fused sequential order.
- ``schedule_maximize_band_depth = 0``: where the band being built can hold no more
  statements, isl splits there, inside it, rather than backtracking to split earlier for
  deeper bands. Work a recurrence over ``i`` reads that does not depend on it (each
  iteration's keys, its minibatch permutations) then stays in the loop over ``i``, not in
  nests of their own before it that keep every iteration's value (PPO's program: two such
  nests fewer and 0.2 to 0.3 s less of XLA's compile), and GAE is ``for b: (for t: ...; for t
  reversed: ...)``.
- ``schedule_separate_components = 1``: independent components (e.g. an input no one in a
  recurrence reads) get their own loops in a sequence instead of being arbitrarily fused.
- ``schedule_max_constant_term = 0`` first, then ``-1`` (no limit) if that is infeasible:
  unshifted loops keep all ops of one point in one iteration (see ``_compute_unshifted``).
- ``schedule_max_coefficient = -1`` (no limit): a reversal (coefficient -1) or a skew may be
  needed for legality; limiting coefficients could make a legal program unschedulable.
- ``ast_build_detect_min_max = 1``: loop bounds come as ``min``/``max`` expressions rather
  than duplicated loops or guards.
- ``ast_build_atomic_upper_bound = 1``: a loop's upper bound is one expression (a ``min``),
  so every loop condition is ``iterator <= e`` or ``iterator < e``.
- ``ast_build_prefer_pdiv = 1``: divisions with a provably non-negative dividend print as
  ``pdiv``, which we translate to Python's ``//`` and ``%`` (equal on those operands).
- ``ast_build_allow_else = 1`` and ``ast_build_allow_or = 1``: the AST may use ``else`` and
  ``||``; both map to :class:`~tempo_jax._schedule.tree.Guard` with ``~`` / ``|``.

isl sees one statement per group of ops that run at the same point anyway (a chain of
same-point reads over one domain, :mod:`.clusters`), and the groups are expanded into their
ops afterwards: PPO's gradient program goes from 154 statements to 62, and isl from 10 s to
under 1 s, with the same loops.

Ops that stream behind a loop (``Program.streams``: n-step returns and the learner after them,
:mod:`tempo_jax._passes.streaming`) are scheduled delayed along it and fused into it
(:mod:`.retime`): isl gets their domains moved later plus orderings that hold them inside the
loop, the AST keeps that loop whole (guards, not split loops), and the tree moves their points
back. Should that find no schedule, the plain one is computed.

A program with ``p.stop_when`` is scheduled in three parts around one outermost loop over the
dim the stop ends, which holds every op over it (:mod:`.stopped`): the ops it reads, the loop
(isl schedules its body with that dim a parameter), the ops reading it.

isl never emits a negative loop increment: a backward recurrence comes out as
``for (c0 = -T + 1; c0 <= 0; c0 += 1) S(-c0)``. When every statement coordinate that uses a
loop's variable decreases with it, the loop is flipped to ``Loop(t, 0, T, S(t),
reverse=True)`` (same order, readable points); loops with a constant stride ``s > 1`` become
stride-1 loops over ``k`` with the iterator ``init + s * k``.

When no schedule exists (a point depends on itself, directly or through other ops), isl's
scheduler fails and :class:`~tempo_jax._ir.errors.ScheduleInfeasibleError` (a
:class:`~tempo_jax._ir.errors.DependenceCycleError`) names the ops of a cycle in read order with
their source lines; :func:`cycle_error` does the same for the user's program, before passes.
Every computed schedule is also checked against the dependences before use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import islpy as isl

from .._ir.errors import ScheduleInfeasibleError, TempoError
from .._ir.expr import (
    Add,
    And,
    Cmp,
    Const,
    Expr,
    FloorDiv,
    Max,
    Min,
    Mod,
    Mul,
    Not,
    Or,
    Sub,
    Symbol,
    symbols_of,
)
from .._ir.program import Op, Program
from .._ir.simplify import simplify
from .._ir.source import describe
from . import isl_convert as ic
from .clusters import Clustering, cluster
from .grouping import group_guards
from .hoist import hoist_first_iterations
from .retime import Delays, retimed, unshifted
from .stopped import StopSplit, inner_view, split_at_stop, with_stopped_dim
from .tree import (
    Exec,
    Guard,
    Loop,
    Node,
    ScheduleTree,
    Sequence,
    execs,
    loop_var,
    map_nodes,
    sequence,
    steps,
    substitute_tree,
)

_OPTIONS: tuple[tuple[str, int], ...] = (
    ("schedule_algorithm", 0),  # ISL_SCHEDULE_ALGORITHM_ISL
    ("schedule_serialize_sccs", 0),
    ("schedule_outer_coincidence", 0),
    ("schedule_maximize_coincidence", 0),
    ("schedule_maximize_band_depth", 0),
    ("schedule_separate_components", 1),
    ("schedule_max_coefficient", -1),
    ("ast_build_detect_min_max", 1),
    ("ast_build_atomic_upper_bound", 1),
    ("ast_build_prefer_pdiv", 1),
    ("ast_build_allow_else", 1),
    ("ast_build_allow_or", 1),
)


def scheduling_context() -> isl.Context:
    """A fresh isl context with the options described in the module docstring."""
    ctx = ic.isl_context()
    for name, value in _OPTIONS:
        getattr(ctx, f"set_{name}")(value)
    return ctx


def schedule(program: Program) -> ScheduleTree:
    """A loop tree that runs every point of every computed op once, producers first.

    Valid for every value ``>= 1`` of the program's bounds. Raises
    :class:`ScheduleInfeasibleError` when the dependences have a cycle.
    """
    ctx = scheduling_context()
    domain = _domain(program, ctx)
    deps = ic.dependences(program, ctx).intersect_domain(domain)  # inputs exist up front
    context = ic.param_context(program, ctx)
    if program.stopped is not None:
        tree = _stopped_tree(program, split_at_stop(program, domain, deps), context)
    else:
        found = retimed(program, domain, deps, lambda d, dp: _compute(d, dp, context))
        if found is None:  # no streamed ops, or no schedule with them delayed
            found = (*_compute_unshifted(program, domain, deps, context), {})
        sched, members, delays = found
        build = isl.AstBuild.from_context(context)
        tree = ast_to_tree(build.node_from_schedule(sched), program, members, delays)
    return group_guards(hoist_first_iterations(tree, program), program)


def _stopped_tree(program: Program, split: StopSplit, context: isl.Set) -> ScheduleTree:
    """The ops before the loop over the dim ``p.stop_when`` ends, the loop (outermost, every
    op over the dim inside, scheduled within one of its points), the ops after
    (:mod:`.stopped`)."""
    dim = program.stopped
    assert dim is not None
    view = inner_view(program)
    sched, members = _compute_unshifted(view, split.inner, split.inner_deps, split.inner_context)
    node = isl.AstBuild.from_context(split.inner_context).node_from_schedule(sched)
    env = {**{bound.name: bound for bound in program.bounds}, dim.name: loop_var(dim.name)}
    body = _name_loops(_expanded(_node(node, env, view), members), view, frozenset({dim.name}))
    body = with_stopped_dim(body, split.positions, loop_var(dim.name))
    loop = Loop(dim.name, Const(0), dim.bound, body)
    before = _part(program, split.before, split.before_deps, context)
    after = _part(program, split.after, split.after_deps, context)
    children = (*before, loop, *after)
    return Sequence(children) if len(children) > 1 else loop


def _part(
    program: Program, domain: isl.UnionSet, deps: isl.UnionMap, context: isl.Set
) -> tuple[Node, ...]:
    """The nodes of the schedule of the ops of ``domain`` alone (none when it is empty)."""
    if domain.is_empty():
        return ()
    sched, members = _compute_unshifted(program, domain, deps, context)
    build = isl.AstBuild.from_context(context)
    return steps(ast_to_tree(build.node_from_schedule(sched), program, members))


Members = dict[int, tuple[int, ...]]  # a group's statement (its first op) -> its ops in order


def _compute_unshifted(
    program: Program, domain: isl.UnionSet, deps: isl.UnionMap, context: isl.Set
) -> tuple[isl.Schedule, Members]:
    """Prefer a schedule without constant shifts, then allow them.

    Proximity alone may shift a recurrence against its body (``S0[t - 1]`` next to
    ``S2[t]``), which is legal but guards the loop body; when every dependence points
    backwards in time, an unshifted schedule exists and keeps each point's ops together.
    """
    ctx = domain.get_ctx()
    ctx.set_schedule_max_constant_term(0)
    sched = _compute(domain, deps, context)
    if sched is None:
        ctx.set_schedule_max_constant_term(-1)  # no limit: shifts where legality needs them
        sched = _compute(domain, deps, context)
    if sched is None:  # only now: naming the cycle needs a transitive closure
        raise ScheduleInfeasibleError(_cycle_message(program, *_on_cycle(domain, deps), {}))
    return sched


def _domain(program: Program, ctx: isl.Context) -> isl.UnionSet:
    """The union of the iteration domains of every computed op.

    Inputs are left out: they exist before the program runs, so scheduling them would only
    constrain (and skew) the loops around their readers.
    """
    domain = isl.UnionSet.empty(ic.param_space(program, ctx))
    for op in program.ops:
        if op.kind == "input":
            continue
        domain = domain.union(isl.UnionSet.from_set(ic.domain_set(program, op, ctx)))
    return domain


def _compute(
    domain: isl.UnionSet, deps: isl.UnionMap, context: isl.Set
) -> tuple[isl.Schedule, Members] | None:
    """isl's schedule for ``domain`` under ``deps`` and the members of each grouped
    statement, or ``None`` when it finds none.

    isl schedules the statements grouped (:mod:`.clusters`: one statement per chain of
    same-point reads over one domain, named ``K<id of its first op>``); the AST is built for
    the groups and each group's execution becomes its members' in order
    (:func:`_expanded`: they share the group's set, so its point). Should the groups find no
    valid schedule, the groups without sinking are tried (:func:`.clusters._sink` may close a
    cycle), then the statements one by one.
    """
    groups: Clustering | None = cluster(domain, deps)
    while groups is not None and any(len(group) > 1 for group in groups.groups):
        sched = _isl_schedule(groups.domain, groups.deps, context)
        # checked between groups; within one, the members' order holds every same-point
        # dependence (a group has no other kind between its members' same points)
        if sched is not None and _respects(sched.get_map(), groups.deps):
            members = {
                int(group[0][1:]): tuple(int(name[1:]) for name in group) for group in groups.groups
            }
            return sched, members
        # a group sunk into its consumer's may close a cycle: then the groups without sinking
        groups = cluster(domain, deps, sink=False) if groups.sunk else None
    sched = _isl_schedule(domain, deps, context)
    if sched is None or not _respects(sched.get_map(), deps):
        return None
    return sched, {}


def _isl_schedule(
    domain: isl.UnionSet, deps: isl.UnionMap, context: isl.Set
) -> isl.Schedule | None:
    constraints = (
        isl.ScheduleConstraints.on_domain(domain)
        .set_context(context)
        .set_validity(deps)
        .set_proximity(deps)
    )
    try:
        return constraints.compute_schedule()
    except isl.Error:
        return None


def _respects(sched_map: isl.UnionMap, deps: isl.UnionMap) -> bool:
    """Whether every dependence goes from an earlier to a strictly later schedule time.

    Each dependence is mapped to its (producer time, consumer time) pairs; their differences
    must be lexicographically positive. (Comparing against ``lex_lt_union_map`` of the
    schedule, every pair of statements, costs seconds on programs of a hundred ops.)
    """
    times = deps.apply_domain(sched_map).apply_range(sched_map)
    if times.is_empty():
        return True
    deltas = times.deltas()
    if deltas.n_set() != 1:  # times in several spaces: compare pair by pair
        return deps.is_subset(sched_map.lex_lt_union_map(sched_map))
    delta = isl.Set.from_union_set(deltas)
    return delta.is_subset(isl.Map.lex_lt(delta.get_space()).deltas())


def cycle_error(program: Program, bounds: Mapping[str, int]) -> ScheduleInfeasibleError | None:
    """The error naming the tensors of ``program`` on a dependence cycle, or ``None`` if none.

    For the user's program when the pass pipeline's output has no schedule: its ops are the
    tensors the user wrote (passes drop copies such as ``x[True] = add``). ``bounds`` (bound
    name -> value) choose the example point the message quotes.
    """
    ctx = scheduling_context()
    domain = _domain(program, ctx)
    deps = ic.dependences(program, ctx).intersect_domain(domain)
    points, exact = _on_cycle(domain, deps)
    if points is None or points.is_empty():
        return None
    return ScheduleInfeasibleError(_cycle_message(program, points, exact, bounds))


def _cycle_message(
    program: Program, points: isl.UnionSet | None, exact: bool, bounds: Mapping[str, int]
) -> str:
    """``x`` depends on itself: the ops of one cycle in read order, their lines, and the fix.

    ``points`` are the points on a cycle (see :func:`_on_cycle`).
    """
    fix = (
        "A point can only read other points: read an earlier one (e.g. `x[t - 1]`) and define "
        "the first points by their own branch (`x[0] = ...`)."
    )
    ids: set[int] = set()
    if points is not None:
        points.foreach_set(lambda s: ids.add(int(s.get_tuple_name()[1:])))
    if points is None or not ids:  # pragma: no cover - the closure failed: name every op
        listing = ", ".join(f"`{op.name}`{describe(op.source)}" for op in program.ops)
        return f"some point depends on itself through the ops {listing}, so no order exists. {fix}"
    path = _cycle_path(program, ids)
    first = program.op(path[0])
    at = _example_point(program, first, points, bounds) if exact else ""
    steps = " -> ".join(f"`{program.op(i).name}`{describe(program.op(i).source)}" for i in path)
    others = ", ".join(f"`{program.op(i).name}`" for i in sorted(ids - set(path)))
    return (
        f"`{first.name}` depends on itself{at}, so no execution order exists: {steps} -> "
        f"`{first.name}`" + (f" (also on a cycle: {others})" if others else "") + f". {fix}"
    )


def _on_cycle(domain: isl.UnionSet, deps: isl.UnionMap) -> tuple[isl.UnionSet | None, bool]:
    """The points that (transitively) depend on themselves, a superset unless exact.

    ``(None, False)`` when isl cannot compute the transitive closure.
    """
    try:
        closure, exact = deps.transitive_closure()
    except isl.Error:  # pragma: no cover - closure too hard
        return None, False
    return closure.intersect(domain.identity()).domain(), bool(exact)


def _cycle_path(program: Program, ids: set[int]) -> list[int]:
    """Op ids of one cycle among ``ids``, each reading the next, from a defined tensor."""
    start = min(ids, key=lambda i: (program.op(i).kind != "merge", i))
    reads = {i: [e.src for e in program.op(i).inputs if e.src in ids] for i in ids}
    stack, seen = [[start]], {start}
    while stack:
        path = stack.pop()
        for src in reads[path[-1]]:
            if src == start:
                return path
            if src not in seen:
                seen.add(src)
                stack.append([*path, src])
    return [start]  # pragma: no cover - every op on a cycle reaches itself


def _example_point(
    program: Program, op: Op, points: isl.UnionSet, bounds: Mapping[str, int]
) -> str:
    """`` at t=0 (T=3)``: the first point of ``op`` on the cycle at ``bounds``, or ``""``."""
    if not op.domain or not bounds:
        return ""
    try:
        here = points.extract_set(ic.domain_space(program, op, points.get_ctx()))
        here = ic.fix_params(here, bounds).lexmin()
        if here.is_empty():
            return ""
        point = here.sample_point()
    except (isl.Error, KeyError):  # pragma: no cover - no example: the names suffice
        return ""
    values = [
        point.get_coordinate_val(isl.dim_type.set, k).to_python() for k in range(len(op.domain))
    ]
    at = ", ".join(f"{d.name}={v}" for d, v in zip(op.domain, values, strict=True))
    given = ", ".join(f"{b.name}={bounds[b.name]}" for b in program.bounds if b.name in bounds)
    return f" at {at} ({given})"


# ---------------------------------------------------------------------------------------------
# isl AST -> schedule tree
# ---------------------------------------------------------------------------------------------

_TEMP = "__"  # prefix of isl's iterators (c0, c1, ...) until loops get their final names
_Env = Mapping[str, Expr]


def ast_to_tree(
    node: isl.AstNode,
    program: Program,
    members: Members | None = None,
    delays: Delays | None = None,
) -> ScheduleTree:
    """Our tree for isl's AST ``node``, with loops named after the dims they walk; a grouped
    statement runs its ``members``; an op scheduled ``delays`` late runs its own points."""
    env = {bound.name: bound for bound in program.bounds}
    tree = _expanded(_node(node, env, program), members or {})
    if delays:
        tree = unshifted(tree, program, delays)
    return _name_loops(tree, program, frozenset())


def _expanded(node: Node, members: Members) -> Node:
    """``node`` with each execution of a group's statement replaced by its members' at the
    same point, in order."""

    def expand(leaf: Node) -> Node:
        if not isinstance(leaf, Exec) or leaf.op not in members:
            return leaf
        return sequence(Exec(op, leaf.point) for op in members[leaf.op])

    return map_nodes(node, expand) if members else node


def _node(node: isl.AstNode, env: _Env, program: Program) -> Node:
    kind = node.get_type()
    if kind == isl.ast_node_type.block:  # nested blocks (a group's members) spliced in
        items = node.block_get_children()
        return sequence(_node(items.get_at(k), env, program) for k in range(items.n_ast_node()))
    if kind == isl.ast_node_type.mark:
        return _node(node.mark_get_node(), env, program)
    if kind == isl.ast_node_type.user:
        return _user(node.user_get_expr(), env, program)
    if kind == isl.ast_node_type.if_:
        return _if(node, env, program)
    if kind == isl.ast_node_type.for_:
        return _for(node, env, program)
    raise ValueError(f"unsupported isl AST node:\n{node.to_C_str()}")


def _user(call: isl.AstExpr, env: _Env, program: Program) -> Exec:
    """``S3(c0, c1 - 1)``: op 3 at the point given by the call's arguments."""
    name = call.op_get_arg(0).id_get_id().get_name()
    op_id = int(name[1:])  # S<op id>, or K<its first op's id> for a group
    args = [_expr(call.op_get_arg(k), env) for k in range(1, call.op_get_n_arg())]
    if len(args) != len(program.op(op_id).domain):
        raise ValueError(f"isl statement {call.to_C_str()} does not match op %{op_id}")
    return Exec(op_id, tuple(simplify(a) for a in args))


def _if(node: isl.AstNode, env: _Env, program: Program) -> Node:
    cond = simplify(_expr(node.if_get_cond(), env))
    then = Guard(cond, _node(node.if_get_then_node(), env, program))
    if not node.if_has_else_node():
        return then
    other = Guard(simplify(Not(cond)), _node(node.if_get_else_node(), env, program))
    return Sequence((then, other))


def _for(node: isl.AstNode, env: _Env, program: Program) -> Loop:
    """A loop over a fresh variable; a stride ``s > 1`` becomes ``c = init + s * k``."""
    name = node.for_get_iterator().id_get_id().get_name()
    var = loop_var(_TEMP + name)
    init = _expr(node.for_get_init(), env)
    if node.for_is_degenerate():
        body = _node(node.for_get_body(), {**env, name: var}, program)
        return Loop(var.name, simplify(init), simplify(init + 1), body)
    stop = _stop(node.for_get_cond(), name, env)
    step = node.for_get_inc().int_get_val().to_python()
    if step == 1:
        body = _node(node.for_get_body(), {**env, name: var}, program)
        return Loop(var.name, simplify(init), simplify(stop), body)
    if step < 1:  # pragma: no cover - isl only emits positive increments
        raise ValueError(f"unsupported loop increment {step}")
    body = _node(node.for_get_body(), {**env, name: init + Const(step) * var}, program)
    count = FloorDiv(stop - init + Const(step - 1), Const(step))
    return Loop(var.name, Const(0), simplify(count), body)


def _stop(cond: isl.AstExpr, name: str, env: _Env) -> Expr:
    """The exclusive upper bound of the iterator ``name`` in a loop condition."""
    op = cond.op_get_type()
    if op in (isl.ast_expr_op_type.and_, isl.ast_expr_op_type.and_then):
        return Min(_stop(cond.op_get_arg(0), name, env), _stop(cond.op_get_arg(1), name, env))
    a, b = cond.op_get_arg(0), cond.op_get_arg(1)
    if _is_id(a, name) and op in (isl.ast_expr_op_type.lt, isl.ast_expr_op_type.le):
        bound = _expr(b, env)
        return bound if op == isl.ast_expr_op_type.lt else bound + 1
    if _is_id(b, name) and op in (isl.ast_expr_op_type.gt, isl.ast_expr_op_type.ge):
        bound = _expr(a, env)
        return bound if op == isl.ast_expr_op_type.gt else bound + 1
    raise ValueError(f"unsupported loop condition `{cond.to_C_str()}`")


def _is_id(expr: isl.AstExpr, name: str) -> bool:
    return expr.get_type() == isl.ast_expr_type.id and expr.id_get_id().get_name() == name


_T = isl.ast_expr_op_type
_BINARY: dict[isl.ast_expr_op_type, Callable[[Expr, Expr], Expr]] = {
    _T.add: Add,
    _T.sub: Sub,
    _T.mul: Mul,
    _T.fdiv_q: FloorDiv,  # floor division: Python's //
    _T.pdiv_q: FloorDiv,  # dividend >= 0: // agrees
    _T.div: FloorDiv,  # exact division: // agrees
    _T.pdiv_r: Mod,  # dividend >= 0: % agrees
    _T.zdiv_r: Mod,  # only ever compared with 0, where C's and Python's remainders agree
    _T.min: Min,
    _T.max: Max,
    _T.and_: And,
    _T.and_then: And,
    _T.or_: Or,
    _T.or_else: Or,
    _T.eq: lambda a, b: Cmp("==", a, b),
    _T.le: lambda a, b: Cmp("<=", a, b),
    _T.lt: lambda a, b: Cmp("<", a, b),
    _T.ge: lambda a, b: Cmp(">=", a, b),
    _T.gt: lambda a, b: Cmp(">", a, b),
}


def _expr(expr: isl.AstExpr, env: _Env) -> Expr:
    """Our expression for an isl AST expression; ids are looked up in ``env``."""
    kind = expr.get_type()
    if kind == isl.ast_expr_type.int:
        return Const(expr.int_get_val().to_python())
    if kind == isl.ast_expr_type.id:
        return env[expr.id_get_id().get_name()]
    op = expr.op_get_type()
    args = [_expr(expr.op_get_arg(k), env) for k in range(expr.op_get_n_arg())]
    if op == _T.minus:
        return Mul(Const(-1), args[0])
    if op in _BINARY:
        result = args[0]
        for arg in args[1:]:  # min, max, and, or may be n-ary
            result = _BINARY[op](result, arg)
        return result
    raise ValueError(f"unsupported isl AST expression `{expr.to_C_str()}`")


# ---------------------------------------------------------------------------------------------
# Loop names
# ---------------------------------------------------------------------------------------------


def _name_loops(node: Node, program: Program, used: frozenset[str]) -> Node:
    """Rename isl's iterators top-down: after the one dim a loop walks, else ``c<depth>``."""
    if isinstance(node, Exec):
        return node
    if isinstance(node, Guard):
        return Guard(node.cond, _name_loops(node.body, program, used))
    if isinstance(node, Sequence):
        return Sequence(tuple(_name_loops(c, program, used) for c in node.children))
    node = _descending(node)
    name = _loop_name(node, program, used)
    body = substitute_tree(node.body, {node.var: loop_var(name)})
    return Loop(
        name, node.start, node.stop, _name_loops(body, program, used | {name}), node.reverse
    )


def _descending(loop: Loop) -> Loop:
    """``for c in a..b-1: S(-c)`` as the descending ``for c in reversed(1-b..-a): S(c)``.

    Applied when every statement coordinate using the variable decreases as it grows.
    """
    slopes = [
        _slope(coord, loop.var)
        for ex in execs(loop.body)
        for coord in ex.point
        if loop.var in symbols_of(coord)
    ]
    if loop.reverse or not slopes or any(slope >= 0 for slope in slopes):
        return loop
    body = substitute_tree(loop.body, {loop.var: Mul(Const(-1), loop.var)})
    start, stop = simplify(Const(1) - loop.stop), simplify(Const(1) - loop.start)
    return Loop(loop.dim, start, stop, body, reverse=True)


def _slope(coord: Expr, var: Symbol) -> int:
    """How much ``coord`` grows when ``var`` goes from 0 to 1 (other symbols at 0)."""
    env = dict.fromkeys(symbols_of(coord), 0)
    try:
        at_zero = coord.evaluate(env)
        env[var] = 1
        return coord.evaluate(env) - at_zero
    except TempoError:
        return 0


def _loop_name(loop: Loop, program: Program, used: frozenset[str]) -> str:
    """The dim name that ``loop``'s variable stands for in every statement, when unique."""
    taken = used | {b.name for b in program.bounds}
    dims = {
        dim.name
        for ex in execs(loop.body)
        for dim, coord in zip(program.op(ex.op).domain, ex.point, strict=True)
        if loop.var in symbols_of(coord)
    }
    if len(dims) == 1 and (name := next(iter(dims))) not in taken:
        return name
    all_names = taken | {d.name for d in program.dims}
    depth = len(used)
    while f"c{depth}" in all_names:
        depth += 1
    return f"c{depth}"
