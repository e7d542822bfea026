"""The IR -> isl converter (`tempo_jax._schedule.isl_convert`), against brute-force enumeration.

The oracle evaluates index items and conditions with our own `evaluate`, exactly like the
reference interpreter: for small concrete bounds, every consumer point of the box domain,
the producer points it reads, the first-match branch that defines it, and the reads that fall
outside the producer's domain. The isl objects, with their parameters fixed to those bounds,
must contain exactly these points.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator

import islpy as isl
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tempo_jax._ir.errors import IndexExprError, VerificationError
from tempo_jax._ir.expr import (
    TRUE,
    Add,
    Const,
    Expr,
    FloorDiv,
    Max,
    Min,
    Mod,
    Mul,
    Slice,
    Sub,
    Symbol,
    eq,
    maximum,
    minimum,
    ne,
)
from tempo_jax._ir.program import Edge, Op, Program, TensorSpec
from tempo_jax._schedule import isl_convert as ic
from tests.corpus import CASES

Point = tuple[int, ...]
Env = dict[Symbol, int]

# ---------------------------------------------------------------------------------------------
# Hand-written programs
# ---------------------------------------------------------------------------------------------

i = Symbol("i", 7, "I")
t = Symbol("t", 7, "T")
I, T = i.bound, t.bound
SPEC = (TensorSpec((), np.float32),)


def _input(op_id: int, domain: tuple[Symbol, ...]) -> Op:
    return Op(op_id, "input", f"x{op_id}", domain, (), SPEC)


def _op(op_id: int, domain: tuple[Symbol, ...], *edges: Edge, kind: str = "apply") -> Op:
    return Op(op_id, kind, f"op{op_id}", domain, edges, SPEC)


def _read(src: int, *index: Expr | Slice, cond: Expr = TRUE) -> Edge:
    return Edge(src, 0, tuple(index), cond)


def reads_1d() -> Program:
    """One consumer over (t,) reading x[...] through many kinds of index."""
    reads = [
        _read(0, t - 1, cond=t >= 1),
        _read(0, t - 1),
        _read(0, t + 1),
        _read(0, Slice(Const(0), t + 1)),
        _read(0, Slice(t, T)),
        _read(0, Slice(maximum(0, t - 3 + 1), t + 1)),
        _read(0, minimum(t + 10, T - 1)),
        _read(0, t // 2),
        _read(0, t % 3),
        _read(0, (t - 5) // 2),
        _read(0, (t - 5) % 3),
        _read(0, t // -2),
        _read(0, (t + 4) % -3),
        _read(0, 2 * t - t * 1),
        _read(0, T - 1 - t),
        _read(0, Const(0)),
        _read(0, Slice(t + 1, t + 1)),
        _read(0, Slice(t, t + 3), cond=(t < 2) | eq(t % 2, 1)),
    ]
    return Program((t,), (_input(0, (t,)), _op(1, (t,), *reads)), ())


def two_dims() -> Program:
    """Dims (i, t); a producer over (t, i) (not program order), reductions, scalars."""
    ops = (
        _input(0, (t, i)),
        _op(
            1,
            (i, t),
            _read(0, t, i),
            _read(0, Slice(Const(0), t + 1), i),
            _read(0, T - 1 - t, maximum(0, i - 1)),
            _read(0, Slice(Const(0), T), Slice(i, I)),
        ),
        _op(2, (i,), _read(1, i, Slice(Const(0), T)), _read(1, i, T - 1)),
        _op(3, (), _read(2, Slice(Const(0), I)), _read(2, I - 1)),
        _op(4, (i, t), _read(3), _read(2, i), _read(1, minimum(i + 1, I - 1), t)),
    )
    return Program((i, t), ops, ())


def merges() -> Program:
    """Merges with overlapping conditions, a dead branch, and an overlap that reads out of
    bounds only where an earlier branch does not take the point."""
    first = _op(
        1,
        (t,),
        _read(0, t, cond=(t < 5) | (t > 8)),
        _read(0, t - 1, cond=eq(t % 2, 0)),
        _read(0, T - 1 - t, cond=~(t < 3) & ne(t, 7)),
        _read(0, Const(0), cond=eq(t, T - 1)),
        _read(0, t + 1, cond=TRUE),
        _read(0, t - 100, cond=t < 100),  # dead: every point is taken by the branch above
    )
    second = _op(
        2,
        (t,),
        _read(1, t - 1, cond=t >= 1),
        _read(1, t - 1, cond=TRUE),  # reads x[-1] at t = 0: the only point it takes
        kind="merge",
    )
    third = _op(3, (i, t), _read(2, t, cond=i <= t), _read(1, i, cond=TRUE), kind="merge")
    ops = (_input(0, (t,)), first.replace(kind="merge"), second, third)
    return Program((i, t), ops, ())


def unguarded_shift() -> Program:
    """``y[t] = x[t + 1]`` with no guard: reads past the end at t = T - 1."""
    return Program((t,), (_input(0, (t,)), _op(1, (t,), _read(0, t + 1))), ())


EXTRA = {
    "reads_1d": reads_1d,
    "two_dims": two_dims,
    "merges": merges,
    "unguarded_shift": unguarded_shift,
}


@functools.cache
def program_named(name: str) -> Program:
    if name in EXTRA:
        return EXTRA[name]()
    case = next(c for c in CASES if c.name == name)
    return case.build()[0].to_ir()


NAMES = [c.name for c in CASES] + list(EXTRA)


def bound_values(program: Program) -> Iterator[dict[Symbol, int]]:
    """Small concrete bounds: all combinations of a few values per bound."""
    values = (1, 2, 5, 12) if len(program.bounds) == 1 else (1, 3, 6)
    for combo in itertools.product(values, repeat=len(program.bounds)):
        yield dict(zip(program.bounds, combo, strict=True))


# ---------------------------------------------------------------------------------------------
# Brute force (the interpreter's semantics)
# ---------------------------------------------------------------------------------------------


def box(op: Op, bounds: Env) -> Iterator[tuple[Point, Env]]:
    for point in itertools.product(*(range(bounds[d.bound]) for d in op.domain)):
        yield point, {**bounds, **dict(zip(op.domain, point, strict=True))}


def reads(edge: Edge, env: Env) -> set[Point]:
    ranges = [
        item.evaluate(env) if isinstance(item, Slice) else (item.evaluate(env),)
        for item in edge.index
    ]
    return set(itertools.product(*ranges))


def first_match(op: Op, env: Env) -> int | None:
    return next((k for k, e in enumerate(op.inputs) if e.cond.evaluate(env)), None)


def is_read(op: Op, k: int, env: Env) -> bool:
    """Whether edge k of op is read at the point (first match for merges)."""
    if op.kind == "merge":
        return first_match(op, env) == k
    return bool(op.inputs[k].cond.evaluate(env))


def in_box(op: Op, point: Point, bounds: Env) -> bool:
    return all(0 <= v < bounds[d.bound] for d, v in zip(op.domain, point, strict=True))


# ---------------------------------------------------------------------------------------------
# Reading isl objects at concrete bounds
# ---------------------------------------------------------------------------------------------


def params(bounds: Env) -> dict[str, int]:
    return {b.name: v for b, v in bounds.items()}


def isl_points(s: isl.Set, op: Op, bounds: Env) -> set[Point]:
    found = ic.set_points(ic.fix_params(s, params(bounds)))
    return {tuple(p[d.name] for d in op.domain) for p in found}


def isl_pairs(m: isl.Map, consumer: Op, producer: Op, bounds: Env) -> set[tuple[Point, Point]]:
    found = ic.map_pairs(ic.fix_params(m, params(bounds)))
    return {
        (
            tuple(a[d.name] for d in consumer.domain),
            tuple(b[ic.producer_dim_name(d)] for d in producer.domain),
        )
        for a, b in found
    }


def edges_of(program: Program) -> Iterator[tuple[Op, int, Edge]]:
    for op in program.ops:
        for k, edge in enumerate(op.inputs):
            yield op, k, edge


# ---------------------------------------------------------------------------------------------
# Tests against brute force
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_domain_sets_are_boxes(name: str) -> None:
    program = program_named(name)
    ctx = ic.isl_context()
    for op in program.ops:
        domain = ic.domain_set(program, op, ctx)
        for bounds in bound_values(program):
            assert isl_points(domain, op, bounds) == {p for p, _ in box(op, bounds)}


@pytest.mark.parametrize("name", NAMES)
def test_access_maps_match_evaluate(name: str) -> None:
    program = program_named(name)
    ctx = ic.isl_context()
    for op, _, edge in edges_of(program):
        access = ic.access_map(program, op, edge, ctx)
        producer = program.op(edge.src)
        for bounds in bound_values(program):
            want = {
                (point, read)
                for point, env in box(op, bounds)
                if edge.cond.evaluate(env)
                for read in reads(edge, env)
            }
            assert isl_pairs(access, op, producer, bounds) == want, (edge, bounds)


@pytest.mark.parametrize("name", NAMES)
def test_read_conditions_are_first_match(name: str) -> None:
    program = program_named(name)
    ctx = ic.isl_context()
    for op in program.ops:
        conditions = ic.read_conditions(program, op, ctx)
        if op.kind == "merge":
            assert [str(c) for c in conditions] == [
                str(c) for c in ic.branch_conditions(program, op, ctx)
            ]
        for bounds in bound_values(program):
            for k, where in enumerate(conditions):
                want = {p for p, env in box(op, bounds) if is_read(op, k, env)}
                assert isl_points(where, op, bounds) == want, (op.name, k, bounds)


@pytest.mark.parametrize("name", NAMES)
def test_out_of_bounds_matches_evaluate(name: str) -> None:
    program = program_named(name)
    ctx = ic.isl_context()
    for op, k, edge in edges_of(program):
        oob = ic.out_of_bounds(program, op, edge, ctx)
        producer = program.op(edge.src)
        for bounds in bound_values(program):
            want = {
                point
                for point, env in box(op, bounds)
                if is_read(op, k, env)
                and not all(in_box(producer, r, bounds) for r in reads(edge, env))
            }
            assert isl_points(oob, op, bounds) == want, (op.name, edge, bounds)


@pytest.mark.parametrize("name", NAMES)
def test_dependences_match_evaluate(name: str) -> None:
    program = program_named(name)
    ctx = ic.isl_context()
    deps = ic.dependences(program, ctx)
    maps: list[isl.Map] = []
    deps.foreach_map(maps.append)
    by_pair = {
        (m.get_tuple_name(isl.dim_type.in_), m.get_tuple_name(isl.dim_type.out)): m for m in maps
    }
    for bounds in bound_values(program):
        want: dict[tuple[str, str], set[tuple[Point, Point]]] = {}
        for op, k, edge in edges_of(program):
            producer = program.op(edge.src)
            key = (ic.tuple_name(producer), ic.tuple_name(op))
            for point, env in box(op, bounds):
                if is_read(op, k, env):
                    found = {(r, point) for r in reads(edge, env) if in_box(producer, r, bounds)}
                    want.setdefault(key, set()).update(found)
        got = {key: _dep_pairs(m, program, bounds) for key, m in by_pair.items()}
        assert {k: v for k, v in got.items() if v} == {k: v for k, v in want.items() if v}


def _dep_pairs(m: isl.Map, program: Program, bounds: Env) -> set[tuple[Point, Point]]:
    """A dependence map's pairs, the dims read in their ops' domain order by position."""
    ops = {ic.tuple_name(op): op for op in program.ops}
    producer = ops[m.get_tuple_name(isl.dim_type.in_)]
    consumer = ops[m.get_tuple_name(isl.dim_type.out)]
    assert m.dim(isl.dim_type.in_) == len(producer.domain)
    assert m.dim(isl.dim_type.out) == len(consumer.domain)
    found = ic.map_pairs(ic.fix_params(m, params(bounds)))
    return {(tuple(a.values()), tuple(b.values())) for a, b in found}


# ---------------------------------------------------------------------------------------------
# Specific shapes, names and printing
# ---------------------------------------------------------------------------------------------


def test_domain_set_prints_with_named_dims_and_params() -> None:
    program = program_named("ema")
    ctx = ic.isl_context()
    domain = ic.domain_set(program, program.op(3), ctx)
    want = "[B, T] -> { S3[b, t] : 0 <= b < B and 0 <= t < T }"
    assert domain.is_equal(isl.Set.read_from_str(ctx, want))
    assert str(domain).startswith("[B, T] -> { S3[b, t] :")
    assert ic.param_space(program, ctx).get_var_names(isl.dim_type.param) == ["B", "T"]
    assert ic.tuple_name(program.op(3)) == "S3"


def test_param_context_requires_positive_bounds() -> None:
    program = program_named("two_dims")
    ctx = ic.isl_context()
    assert ic.param_context(program, ctx).is_equal(
        isl.Set.read_from_str(ctx, "[I, T] -> { : I >= 1 and T >= 1 }")
    )
    domain = ic.domain_set(program, program.op(3), ctx)  # zero-dim op
    assert str(domain) == "[I, T] -> { S3[] : I > 0 and T > 0 }"
    assert ic.fix_params(domain, {"I": 0, "T": 4}).is_empty()


def test_access_map_shift_names_producer_dims_with_a_prime() -> None:
    program = program_named("unguarded_shift")
    ctx = ic.isl_context()
    consumer = program.op(1)
    access = ic.access_map(program, consumer, consumer.inputs[0], ctx)
    assert str(access) == "[T] -> { S1[t] -> S0[t' = 1 + t] : T > 0 and 0 <= t < T }"
    assert access.get_var_names(isl.dim_type.out) == ["t'"]
    assert ic.symbol_for_name(program, "t'") == t
    assert ic.symbol_for_name(program, "t") == t
    assert ic.symbol_for_name(program, "T") == T
    with pytest.raises(KeyError):
        ic.symbol_for_name(program, "u")


def test_out_of_bounds_of_unguarded_shift_is_the_last_point() -> None:
    program = program_named("unguarded_shift")
    ctx = ic.isl_context()
    consumer = program.op(1)
    oob = ic.out_of_bounds(program, consumer, consumer.inputs[0], ctx)
    want = isl.Set.read_from_str(ctx, "[T] -> { S1[t] : t = T - 1 and T >= 1 }")
    assert oob.is_equal(want)
    sample = ic.sample_values(oob)
    assert sample is not None and sample["t"] == sample["T"] - 1
    assert ic.sample_values(oob.subtract(want)) is None


def test_out_of_bounds_of_merge_uses_first_match() -> None:
    program = program_named("merges")
    ctx = ic.isl_context()
    second = program.op(2)
    guarded, fallback = second.inputs
    assert ic.out_of_bounds(program, second, guarded, ctx).is_empty()
    want = isl.Set.read_from_str(ctx, "[I, T] -> { S2[t = 0] : I >= 1 and T >= 1 }")
    assert ic.out_of_bounds(program, second, fallback, ctx).is_equal(want)


def test_identical_edges_are_told_apart_by_identity() -> None:
    edge = _read(0, t - 1)
    program = Program((t,), (_input(0, (t,)), _op(1, (t,), edge, edge, kind="merge")), ())
    ctx = ic.isl_context()
    _, second = ic.branch_conditions(program, program.op(1), ctx)
    assert second.is_empty()
    assert ic.out_of_bounds(program, program.op(1), edge, ctx).is_equal(
        isl.Set.read_from_str(ctx, "[T] -> { S1[t = 0] : T >= 1 }")
    )


def test_isl_text_round_trips() -> None:
    for name in NAMES:
        program = program_named(name)
        ctx = ic.isl_context()
        deps = ic.dependences(program, ctx)
        assert isl.UnionMap.read_from_str(ctx, str(deps)).is_equal(deps)
        for op, _, edge in edges_of(program):
            access = ic.access_map(program, op, edge, ctx)
            assert isl.Map.read_from_str(ctx, str(access)).is_equal(access)


def test_dependences_point_from_producer_to_consumer() -> None:
    program = program_named("running_sum")
    ctx = ic.isl_context()
    deps = ic.dependences(program, ctx)
    # s[t] (%1) reads add[t - 1] (%2) for t >= 1: add[t'] -> s[t' + 1].
    want = isl.UnionMap.read_from_str(
        ctx,
        "[T] -> { S0[0] -> S1[0] : T >= 1; S2[u] -> S1[u + 1] : 0 <= u <= T - 2;"
        " S1[u] -> S2[u] : 0 <= u < T; S0[v] -> S2[v - 1] : 1 <= v <= T - 1 }",
    )
    assert deps.is_equal(want)


def test_branch_conditions_need_a_merge() -> None:
    program = program_named("unguarded_shift")
    with pytest.raises(ValueError, match="not a merge"):
        ic.branch_conditions(program, program.op(1), ic.isl_context())


# ---------------------------------------------------------------------------------------------
# Expressions: a property test against evaluate, and the errors
# ---------------------------------------------------------------------------------------------

_leaf = st.one_of(st.just(t), st.just(T), st.integers(-4, 4).map(Const))


def _extend(inner: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    const = st.integers(-3, 3).map(Const)
    nonzero = st.sampled_from([-3, -2, 2, 3, 5]).map(Const)
    return st.one_of(
        st.builds(Add, inner, inner),
        st.builds(Sub, inner, inner),
        st.builds(Min, inner, inner),
        st.builds(Max, inner, inner),
        st.builds(Mul, const, inner),
        st.builds(Mul, inner, const),
        st.builds(FloorDiv, inner, nonzero),
        st.builds(Mod, inner, nonzero),
    )


_exprs = st.recursive(_leaf, _extend, max_leaves=6)


@settings(max_examples=80, deadline=None)
@given(expr=_exprs)
def test_expr_to_pwaff_matches_evaluate(expr: Expr) -> None:
    ctx = ic.isl_context()
    space = isl.Space.create_from_names(ctx, set=["t", "v"], params=["T"])
    v = Symbol("v", 7, "V")
    graph = ic.cond_to_set(eq(v, expr) & (t >= -6) & (t <= 6), space)
    for bound in (1, 4):
        found = ic.set_points(ic.fix_params(graph, {"T": bound}))
        want = {(k, expr.evaluate({t: k, T: bound})) for k in range(-6, 7)}
        assert {(p["t"], p["v"]) for p in found} == want


@settings(max_examples=60, deadline=None)
@given(a=_exprs, b=_exprs, op=st.sampled_from(["<", "<=", ">", ">=", "==", "!="]))
def test_cond_to_set_matches_evaluate(a: Expr, b: Expr, op: str) -> None:
    from tempo_jax._ir.expr import Cmp

    ctx = ic.isl_context()
    space = isl.Space.create_from_names(ctx, set=["t"], params=["T"])
    cond = Cmp(op, a, b)
    combined = (cond | eq(t, 0)) & ~(t > 5) & (t >= -5)
    found = ic.cond_to_set(combined, space)
    for bound in (1, 3):
        env = {T: bound}
        got = {p["t"] for p in ic.set_points(ic.fix_params(found, {"T": bound}))}
        assert got == {k for k in range(-8, 9) if combined.evaluate({**env, t: k})}


def _space() -> isl.Space:
    return isl.Space.create_from_names(ic.isl_context(), set=["t"], params=["T"])


@pytest.mark.parametrize(
    "expr",
    [Mul(t, t), Mul(t, T), FloorDiv(t, t), FloorDiv(t, T), Mod(t, T), FloorDiv(t, Const(0))],
    ids=str,
)
def test_unsupported_expressions_raise_naming_them(expr: Expr) -> None:
    with pytest.raises(IndexExprError) as info:
        ic.expr_to_pwaff(expr, _space())
    assert str(expr) in str(info.value)


def test_unknown_symbols_and_kind_mismatches_raise() -> None:
    with pytest.raises(IndexExprError, match="`i`"):
        ic.expr_to_pwaff(i + 1, _space())
    with pytest.raises(IndexExprError, match="condition"):
        ic.expr_to_pwaff(t < 3, _space())
    with pytest.raises(IndexExprError, match="integer"):
        ic.cond_to_set(t + 3, _space())


def test_access_map_errors_name_the_read() -> None:
    bad = Program((t,), (_input(0, (t,)), _op(1, (t,), _read(0, t * t))), ())
    ctx = ic.isl_context()
    with pytest.raises(IndexExprError, match=r"t \* t.*x0\[t \* t\].*op1"):
        ic.access_map(bad, bad.op(1), bad.op(1).inputs[0], ctx)
    with pytest.raises(IndexExprError, match="t // t"):
        ic.dependences(Program((t,), (_input(0, (t,)), _op(1, (t,), _read(0, t // t))), ()), ctx)
    arity = Program((t,), (_input(0, (t,)), _op(1, (t,), _read(0, t, t))), ())
    with pytest.raises(VerificationError, match="2 index items"):
        ic.access_map(arity, arity.op(1), arity.op(1).inputs[0], ctx)
