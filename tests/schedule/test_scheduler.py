"""The polyhedral scheduler (`tempo_jax._schedule.scheduler`), against execution legality.

The oracle runs the schedule tree with concrete bounds (`tree.points`) and checks, by brute
force with our own `evaluate` (first-match merge semantics, like the reference interpreter):
every point of every computed op's box domain runs exactly once, and every producer point that a
consumer point reads (inside the producer's domain) runs before that consumer point.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import islpy as isl
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tempo_jax._ir.errors import ScheduleInfeasibleError, TempoError
from tempo_jax._ir.expr import TRUE, Const, Expr, Slice, Symbol, eq, maximum
from tempo_jax._ir.program import Edge, Op, Program, TensorSpec
from tempo_jax._schedule.scheduler import _respects, schedule
from tempo_jax._schedule.tree import (
    Exec,
    Guard,
    Loop,
    Sequence,
    execs,
    loops,
    points,
    render,
    walk,
)
from tests.corpus import CASES

Point = tuple[int, ...]
Env = dict[Symbol, int]

i = Symbol("i", 11, "I")
t = Symbol("t", 11, "T")
I, T = i.bound, t.bound
SPEC = (TensorSpec((), np.float32),)


def _op(op_id: int, domain: tuple[Symbol, ...], *edges: Edge, kind: str = "apply") -> Op:
    return Op(op_id, kind, f"op{op_id}", domain, edges, SPEC)


def _read(src: int, *index: Expr | Slice, cond: Expr = TRUE) -> Edge:
    return Edge(src, 0, tuple(index), cond)


def _program(dims: tuple[Symbol, ...], *ops: Op) -> Program:
    return Program(dims, ops, ())


# ---------------------------------------------------------------------------------------------
# Hand-written programs
# ---------------------------------------------------------------------------------------------


def forward() -> Program:
    """``s[0] = x[0]; s[t] = s[t - 1] + x[t]``."""
    return _program(
        (t,),
        _op(0, (t,), kind="input"),
        _op(1, (t,), _read(0, Const(0), cond=eq(t, 0)), _read(2, t - 1, cond=t >= 1), kind="merge"),
        _op(2, (t,), _read(1, t), _read(0, t)),
    )


def backward() -> Program:
    """``g[T - 1] = r[T - 1]; g[t] = r[t] + c * g[t + 1]``."""
    return _program(
        (t,),
        _op(0, (t,), kind="input"),
        _op(1, (t,), _read(0, T - 1, cond=eq(t, T - 1)), _read(3, t), kind="merge"),
        _op(2, (t,), _read(1, t + 1)),
        _op(3, (t,), _read(0, t), _read(2, t)),
    )


def params_over_i() -> Program:
    """Parameters ``w[i]`` updated over ``i`` from a loss read over every ``t``."""
    return _program(
        (i, t),
        _op(0, (t,), kind="input"),
        _op(1, ()),
        _op(2, (i,), _read(1, cond=eq(i, 0)), _read(5, i - 1, cond=i >= 1), kind="merge"),
        _op(3, (i, t), _read(2, i), _read(0, t)),
        _op(4, (i,), _read(3, i, Slice(Const(0), T))),
        _op(5, (i,), _read(2, i), _read(4, i)),
    )


def suffix() -> Program:
    """``y[t] = f(x[t:T])`` with ``x`` computed, not an input."""
    return _program((t,), _op(0, (t,)), _op(1, (t,), _read(0, Slice(t, T))))


def window() -> Program:
    """``y[t] = f(x[max(0, t - 2):t + 1])`` and a running recurrence over ``y``."""
    return _program(
        (t,),
        _op(0, (t,)),
        _op(1, (t,), _read(0, Slice(maximum(0, t - 2), t + 1))),
        _op(2, (t,), _read(1, t), _read(2, t - 1, cond=t >= 1)),
    )


def branches() -> Program:
    """First match: ``t < 2`` reads a later point; even ``t`` read back two; else an input."""
    return _program(
        (t,),
        _op(0, (t,), kind="input"),
        _op(
            1,
            (t,),
            _read(0, t + 1, cond=t < 2),
            _read(1, t - 2, cond=eq(t % 2, 0)),
            _read(2, t),
            kind="merge",
        ),
        _op(2, (t,), _read(0, t)),
    )


def mixed_directions() -> Program:
    """A forward recurrence over ``t`` feeding a backward one over ``t``."""
    return _program(
        (t,),
        _op(0, (t,), _read(0, t - 1, cond=t >= 1)),
        _op(1, (t,), _read(0, T - 1), _read(1, t + 1, cond=t < T - 1)),
    )


HAND = {
    "forward": forward,
    "backward": backward,
    "params_over_i": params_over_i,
    "suffix": suffix,
    "window": window,
    "branches": branches,
    "mixed_directions": mixed_directions,
}

# ---------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------


def _box(op: Op, env: Env) -> Iterator[Point]:
    return itertools.product(*(range(env[dim.bound]) for dim in op.domain))


def _read_points(program: Program, edge: Edge, env: Env) -> Iterator[Point]:
    """Producer points one consumer point reads through ``edge``, inside the producer."""
    producer = program.op(edge.src)
    ranges = [
        item.evaluate(env) if isinstance(item, Slice) else [item.evaluate(env)]
        for item in edge.index
    ]
    for point in itertools.product(*ranges):
        if all(0 <= v < env[d.bound] for v, d in zip(point, producer.domain, strict=True)):
            yield point


def _dependences(program: Program, bounds: Env) -> Iterator[tuple[tuple, tuple]]:
    """Every ``((producer id, point), (consumer id, point))`` pair, by brute force."""
    for op in program.ops:
        for point in _box(op, bounds):
            env = {**bounds, **dict(zip(op.domain, point, strict=True))}
            read = [edge for edge in op.inputs if edge.cond.evaluate(env)]
            for edge in read[:1] if op.kind == "merge" else read:
                for src in _read_points(program, edge, env):
                    yield (edge.src, src), (op.id, point)


def check_legal(program: Program, bounds: Env) -> None:
    """Each point runs exactly once and after every point it reads."""
    order = points(schedule(program), bounds)
    computed = [op for op in program.ops if op.kind != "input"]  # inputs are not scheduled
    expected = sorted((op.id, p) for op in computed for p in _box(op, bounds))
    assert sorted(order) == expected, "not every point runs exactly once"
    position = {item: k for k, item in enumerate(order)}
    for producer, consumer in _dependences(program, bounds):
        if producer in position:
            assert position[producer] < position[consumer], f"{producer} before {consumer}"


def _bound_values(program: Program) -> list[Env]:
    bounds = program.bounds
    combos = [(1,) * len(bounds), (2,) * len(bounds), (5, 3, 4)[: len(bounds)]]
    if len(bounds) > 1:
        combos.append((3, 1, 2)[: len(bounds)])
    return [dict(zip(bounds, values, strict=True)) for values in combos]


# ---------------------------------------------------------------------------------------------
# Legality
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HAND)
def test_hand_written_programs_are_legal(name: str) -> None:
    program = HAND[name]()
    for bounds in _bound_values(program):
        check_legal(program, bounds)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_corpus_programs_are_legal(case) -> None:
    program = case.build()[0].to_ir()
    for bounds in _bound_values(program):
        check_legal(program, bounds)


def test_oracle_rejects_a_wrong_order() -> None:
    """The oracle itself catches a consumer scheduled before its producer."""
    program = forward()
    bounds = {T: 3}
    order = points(schedule(program), bounds)
    position = {item: k for k, item in enumerate(reversed(order))}
    pairs = [(p, c) for p, c in _dependences(program, bounds) if p in position]
    assert pairs and any(position[p] > position[c] for p, c in pairs)


# ---------------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------------


def test_forward_recurrence_is_one_loop_over_t() -> None:
    tree = schedule(forward())
    (loop,) = loops(tree)
    assert loop.dim == "t" and not isinstance(loop.body, Loop)
    assert {ex.op for ex in execs(loop.body)} == {1, 2}  # op 0 is an input: not scheduled


def test_corpus_running_sum_is_one_loop() -> None:
    program = next(c for c in CASES if c.name == "running_sum").build()[0].to_ir()
    assert [loop.dim for loop in loops(schedule(program))] == ["t"]


def test_params_over_i_give_nested_loops() -> None:
    tree = schedule(params_over_i())
    outer = [loop for loop in loops(tree) if loop.dim == "i"]
    assert len(outer) == 1
    inner = loops(outer[0].body)
    assert [loop.dim for loop in inner] == ["t"]
    assert {ex.op for ex in execs(inner[0].body)} == {3}
    assert {ex.op for ex in execs(outer[0].body)} >= {2, 3, 4, 5}


def test_backward_recurrence_runs_t_downwards() -> None:
    program = backward()
    tree = schedule(program)
    order = [p for op, p in points(tree, {T: 4}) if op == 1]
    assert order == [(3,), (2,), (1,), (0,)]
    (loop,) = loops(tree)
    assert loop.dim == "t" and loop.reverse
    assert {ex.point for ex in execs(loop)} == {(loop.var,)}


def test_tree_uses_only_our_expressions() -> None:
    for program in (params_over_i(), branches(), backward()):
        for node in walk(schedule(program)):
            assert isinstance(node, Loop | Sequence | Guard | Exec)
            if isinstance(node, Loop):
                exprs = [node.start, node.stop]
            elif isinstance(node, Guard):
                exprs = [node.cond]
            else:
                exprs = list(getattr(node, "point", ()))
            assert all(isinstance(e, Expr) for e in exprs)


def test_render_shows_loops_and_op_names() -> None:
    program = params_over_i()
    text = render(schedule(program), program)
    assert "for i in" in text and "for t in" in text
    for op in program.ops:
        assert (op.name in text) == (op.kind != "input")
    backward_text = render(schedule(backward()), backward())
    assert "for t in" in backward_text and "op3" in backward_text


# ---------------------------------------------------------------------------------------------
# Infeasible programs
# ---------------------------------------------------------------------------------------------


def test_self_dependence_is_infeasible() -> None:
    program = _program((t,), _op(0, (t,), kind="input"), _op(1, (t,), _read(0, t), _read(1, t)))
    with pytest.raises(ScheduleInfeasibleError, match="op1") as info:
        schedule(program)
    assert isinstance(info.value, TempoError)
    assert "op0" not in str(info.value)


def test_cycle_through_two_ops_names_both() -> None:
    program = _program(
        (t,),
        _op(0, (t,), _read(1, t)),
        _op(1, (t,), _read(0, t + 1, cond=t < T - 1), _read(0, t, cond=eq(t, T - 1))),
        _op(2, (t,), _read(0, t)),
    )
    with pytest.raises(ScheduleInfeasibleError) as info:
        schedule(program)
    message = str(info.value)
    assert "op0" in message and "op1" in message and "op2" not in message


def test_reading_a_later_point_is_feasible() -> None:
    """``x[t] = f(x[t + 1])`` is a legal backward recurrence, not a cycle."""
    program = _program((t,), _op(0, (t,), _read(0, t + 1, cond=t < T - 1)))
    for bounds in _bound_values(program):
        check_legal(program, bounds)


# ---------------------------------------------------------------------------------------------
# Random acyclic programs
# ---------------------------------------------------------------------------------------------


@st.composite
def random_programs(draw: st.DrawFn) -> Program:
    """Ops over ``t`` reading earlier ops at any offset and themselves in one direction."""
    ops = []
    for k in range(draw(st.integers(1, 5))):
        edges = []
        for src in draw(st.lists(st.integers(0, k - 1), max_size=3)) if k else []:
            edges.append(_read(src, t + draw(st.integers(-2, 2))))
        step = draw(st.sampled_from([0, 1, 2, -1, -2]))
        if step > 0:
            edges.append(_read(k, t - step, cond=t >= step))
        elif step < 0:
            edges.append(_read(k, t - step, cond=t < T + step))
        ops.append(_op(k, (t,), *edges))
    return _program((t,), *ops)


@settings(max_examples=40, deadline=None)
@given(random_programs())
def test_random_programs_are_legal(program: Program) -> None:
    for size in (1, 3, 5):
        check_legal(program, {T: size})


def test_the_dependence_check_rejects_a_schedule_that_breaks_one() -> None:
    """``_respects`` (differences of schedule times) against the pairwise definition."""
    ctx = isl.Context()
    deps = isl.UnionMap.read_from_str(ctx, "[T] -> { S1[t] -> S1[t + 1] : 0 <= t < T - 1 }")
    forward = isl.UnionMap.read_from_str(ctx, "[T] -> { S1[t] -> [t, 0] }")
    backward = isl.UnionMap.read_from_str(ctx, "[T] -> { S1[t] -> [-t, 0] }")
    for sched, want in ((forward, True), (backward, False)):
        pairwise = deps.is_subset(sched.lex_lt_union_map(sched))
        assert _respects(sched, deps) == pairwise == want
    two = isl.UnionMap.read_from_str(ctx, "[T] -> { S1[t] -> S2[t] : 0 <= t < T }")
    for text, want in (
        ("S1[t] -> [t, 0]; S2[t] -> [t, 1]", True),
        ("S1[t] -> [t, 1]; S2[t] -> [t, 0]", False),
    ):
        sched = isl.UnionMap.read_from_str(ctx, f"[T] -> {{ {text} }}")
        assert _respects(sched, two) == two.is_subset(sched.lex_lt_union_map(sched)) == want
