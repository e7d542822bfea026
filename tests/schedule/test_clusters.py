"""Statement groups for isl (`tempo_jax._schedule.clusters`): which statements are scheduled
as one, that the schedules stay legal, and that they keep the loops of scheduling op by op."""

from __future__ import annotations

import types

import islpy as isl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tempo_jax._ir.errors import ScheduleInfeasibleError
from tempo_jax._ir.expr import Const, Slice, eq
from tempo_jax._ir.program import Program
from tempo_jax._schedule import isl_convert as ic
from tempo_jax._schedule import scheduler
from tempo_jax._schedule.clusters import _Incident, _sink, cluster
from tempo_jax._schedule.tree import Guard, Loop, execs, walk
from tests.corpus import CASES
from tests.schedule.test_scheduler import (
    HAND,
    I,
    T,
    _bound_values,
    _op,
    _program,
    _read,
    check_legal,
    i,
    t,
)


def _groups(program: Program) -> list[set[int]]:
    """The groups of op ids isl schedules as one statement each."""
    ctx = scheduler.scheduling_context()
    domain = scheduler._domain(program, ctx)
    deps = ic.dependences(program, ctx).intersect_domain(domain)
    return [{int(name[1:]) for name in group} for group in cluster(domain, deps).groups]


def chain(n: int) -> Program:
    """``a1[t] = x[t]; a_k[t] = f(a_{k-1}[t]); s[t] = s[t - 1] + a_n[t]``."""
    ops = [_op(0, (t,), kind="input"), _op(1, (t,), _read(0, t))]
    ops += [_op(k, (t,), _read(k - 1, t)) for k in range(2, n + 1)]
    ops.append(_op(n + 1, (t,), _read(n, t), _read(n + 1, t - 1, cond=t >= 1)))
    return _program((t,), *ops)


def forward_then_backward() -> Program:
    """``f[t] = f[t - 1] + x[t]; r[t] = 2 f[t]; g[t] = r[t] + g[t + 1]`` (acting, then a
    GAE-like backward recurrence over what it produced)."""
    return _program(
        (t,),
        _op(0, (t,), kind="input"),
        _op(1, (t,), _read(0, t), _read(1, t - 1, cond=t >= 1)),
        _op(2, (t,), _read(1, t)),
        _op(3, (t,), _read(2, t), _read(3, t + 1, cond=t < T - 1)),
    )


def barrier() -> Program:
    """``a[i, t] = x[t]; s[i] = sum(a[i, 0:T]); b[i, t] = a[i, t] * s[i]``: ``b`` reads ``a``
    at its own point, but every ``a[i, :]`` must run before any ``b[i, :]``."""
    return _program(
        (i, t),
        _op(0, (t,), kind="input"),
        _op(1, (i, t), _read(0, t)),
        _op(2, (i,), _read(1, i, Slice(Const(0), T))),
        _op(3, (i, t), _read(1, i, t), _read(2, i)),
    )


def test_a_chain_of_same_point_reads_is_one_statement() -> None:
    program = chain(12)
    assert _groups(program) == [set(range(1, 14))]
    tree = scheduler.schedule(program)
    (loop,) = [node for node in walk(tree) if isinstance(node, Loop)]
    assert [ex.op for ex in execs(loop.body)] == list(range(1, 14))  # producers first
    for bounds in _bound_values(program):
        check_legal(program, bounds)


def test_loops_running_in_opposite_directions_are_not_grouped() -> None:
    program = forward_then_backward()
    assert not any({1, 3} <= group for group in _groups(program))
    loops = [node for node in walk(scheduler.schedule(program)) if isinstance(node, Loop)]
    assert [loop.reverse for loop in loops] == [False, True]
    for bounds in _bound_values(program):
        check_legal(program, bounds)


def test_a_reduction_between_two_statements_keeps_them_apart() -> None:
    program = barrier()
    assert not any({1, 3} <= group for group in _groups(program))
    for bounds in _bound_values(program):
        check_legal(program, bounds)


def test_a_conditional_same_point_read_groups_and_a_shifted_one_does_not() -> None:
    """A read at the same point under a condition is a subset of the identity; one that also
    reads ``t - 1`` is not."""
    same = _program(
        (t,),
        _op(0, (t,)),
        _op(1, (t,), _read(0, t, cond=eq(t % 2, 0)), _read(1, t - 1, cond=t >= 1)),
    )
    shifted = _program((t,), _op(0, (t,)), _op(1, (t,), _read(0, t), _read(0, t - 1, cond=t >= 1)))
    assert _groups(same) == [{0, 1}]
    assert _groups(shifted) == [{0}, {1}]


def _counts(tree) -> tuple[int, int]:
    nodes = list(walk(tree))
    return sum(isinstance(n, Loop) for n in nodes), sum(isinstance(n, Guard) for n in nodes)


@pytest.mark.parametrize(
    "build",
    [*HAND.values(), *(case.build for case in CASES)],
    ids=[*HAND, *(case.name for case in CASES)],
)
def test_groups_give_the_same_loops_or_fewer(build, monkeypatch) -> None:
    """The schedule with groups has no more loops and guards than isl's op by op, and runs
    the same points legally."""
    program = build()
    program = program if isinstance(program, Program) else program[0].to_ir()
    grouped = scheduler.schedule(program)
    none = types.SimpleNamespace(groups=())  # no statement grouped
    monkeypatch.setattr(scheduler, "cluster", lambda *_: none)
    alone = scheduler.schedule(program)
    assert sum(_counts(grouped)) <= sum(_counts(alone))
    assert {ex.op for ex in execs(grouped)} == {ex.op for ex in execs(alone)}
    for bounds in _bound_values(program):
        check_legal(program, bounds)


def test_gae_is_a_forward_loop_then_a_backward_one() -> None:
    """Op by op, isl skews the corpus's GAE (loops over ``T + t`` and ``B + T + t`` with
    guards); grouped, it is the plain nest a user would write: per ``b``, the forward loop
    then the backward one."""
    (gae,) = [case for case in CASES if case.name == "gae"]
    tree = scheduler.schedule(gae.build()[0].to_ir())
    assert _counts(tree) == (3, 0)
    nest = [(loop.dim, loop.reverse) for loop in walk(tree) if isinstance(loop, Loop)]
    assert nest == [("b", False), ("t", False), ("t", True)]


def test_a_same_point_cycle_is_left_to_the_scheduler_to_name() -> None:
    """``a[t]`` and ``b[t]`` read each other at ``t``: not grouped, and the error names both."""
    cycle = _program((t,), _op(0, (t,), _read(1, t)), _op(1, (t,), _read(0, t)))
    assert _groups(cycle) == [{0}, {1}]
    with pytest.raises(ScheduleInfeasibleError, match=r"op0.*op1|op1.*op0"):
        scheduler.schedule(cycle)


def twins() -> Program:
    """``a_k[i, t] = f_k(x[t])`` for ``k = 1, 2, 3``, and ``s[i] = g(a_1[i, :], a_2[i, :],
    a_3[i, :])``: the three are twins (no same-point read joins them to anything)."""
    whole = Slice(Const(0), T)
    return _program(
        (i, t),
        _op(0, (t,), kind="input"),
        *(_op(k, (i, t), _read(0, t)) for k in (1, 2, 3)),
        _op(4, (i,), _read(1, i, whole), _read(2, i, whole), _read(3, i, whole)),
    )


def test_twins_are_one_statement() -> None:
    """Groups over one set with the same dependences on and from every other group and none
    between them are scheduled as one; one read at another point is not their twin."""
    program = twins()
    assert {1, 2, 3} in _groups(program)
    for bounds in _bound_values(program):
        check_legal(program, bounds)
    last = _op(4, (i,), *program.op(4).inputs[:2], _read(3, i, T - 1))
    changed = _program(program.dims, *(last if op.id == 4 else op for op in program.ops))
    assert {1, 2} in _groups(changed) and {3} in _groups(changed)
    for bounds in _bound_values(changed):
        check_legal(changed, bounds)


def test_a_broadcast_fed_group_joins_its_first_consumers_group() -> None:
    """``h[i, t]`` reads ``p[i]`` (a broadcast along ``t``) and is read at its own point by
    ``c`` and ``x``: it joins ``c``'s group (the first); ``c``, which also reads ``w`` at its
    own point, is not broadcast-fed and stays; so does ``g``, fed by ``p`` along ``t`` but
    by no one at its own point."""
    space = {"S1": "[I] -> { S1[i] : 0 <= i < I }"}
    for name in ("S2", "S3", "S4", "S5", "S6"):
        space[name] = f"[I, T] -> {{ {name}[i, t] : 0 <= i < I and 0 <= t < T }}"
    sets = {name: isl.Set(text) for name, text in space.items()}
    edges = [
        ("S1", "S2", False),
        ("S1", "S6", False),
        ("S2", "S4", True),
        ("S2", "S5", True),
        ("S3", "S3", False),
        ("S3", "S4", True),
    ]
    members = {name: {name} for name in sets}
    group_of = {name: name for name in sets}
    assert _sink(sets, _Incident.of(edges), members, group_of)
    assert sorted(map(sorted, members.values())) == [["S1"], ["S2", "S4"], ["S3"], ["S5"], ["S6"]]
    assert group_of["S2"] == "S4"
    alone = _Incident.of([("S3", "S4", True)])
    assert not _sink(sets, alone, {n: {n} for n in sets}, {n: n for n in sets})


def test_a_sunk_group_that_closes_a_cycle_is_scheduled_without_sinking(monkeypatch) -> None:
    """``h[i, t] = f(p[i])``, ``s[i] = sum(h[i, 0:T])``, ``c[i, t] = g(h[i, t], s[i])`` (a
    softmax's normaliser): ``h`` sunk into ``c``'s group would read the sum that reads it.
    isl finds no schedule for those groups; the groups without sinking give one."""
    program = _program(
        (i, t),
        _op(1, (i,)),
        _op(2, (i, t), _read(1, i)),
        _op(3, (i,), _read(2, i, Slice(Const(0), T))),
        _op(4, (i, t), _read(2, i, t), _read(3, i)),
    )
    ctx = scheduler.scheduling_context()
    domain = scheduler._domain(program, ctx)
    deps = ic.dependences(program, ctx).intersect_domain(domain)
    sunk = cluster(domain, deps)
    assert sunk.sunk and any({2, 4} <= {int(n[1:]) for n in g} for g in sunk.groups)
    calls = []

    def spy(domain, deps, sink=True):
        calls.append(sink)
        return cluster(domain, deps, sink)

    monkeypatch.setattr(scheduler, "cluster", spy)
    order = [ex.op for ex in execs(scheduler.schedule(program))]
    assert calls == [True, False]
    assert order.index(2) < order.index(3) < order.index(4)
    for bounds in _bound_values(program):
        check_legal(program, bounds)


@st.composite
def nested_programs(draw: st.DrawFn) -> Program:
    """Ops over ``(i,)`` and ``(i, t)``: broadcasts (``x[i]`` at every ``t``), reductions
    (``x[i, 0:T]``, ``x[i, T - 1]``), same-point and shifted reads, recurrences over ``t`` and
    over ``i``, and reads of any op, later ones too, at the previous ``i`` (an iteration's
    parameters made by the last one's update): the groups broadcast-fed statements sink into,
    and the cycles some of those joins close."""
    whole = Slice(Const(0), T)
    domains = [
        draw(st.sampled_from([(i,), (i, t), (i, t)])) for _ in range(draw(st.integers(3, 7)))
    ]
    ops = []
    for k, domain in enumerate(domains):
        edges = []
        sources = draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=3)) if k else []
        if len(domain) == 2 and draw(st.booleans()):  # fed by broadcasts alone
            sources = [src for src in sources if len(domains[src]) == 1]
        for src in sources:
            over_t = len(domains[src]) == 2
            if not over_t:
                edges.append(_read(src, i))  # a broadcast along t where k is over (i, t)
            elif len(domain) == 2:
                shift = draw(st.sampled_from([0, 0, 1]))
                edges.append(_read(src, i, t - shift, cond=t >= shift))
            else:
                edges.append(_read(src, i, draw(st.sampled_from([whole, T - 1]))))
        for src in draw(st.lists(st.integers(0, len(domains) - 1), max_size=1)):
            at_t = (t,) if len(domain) == 2 else (T - 1,)
            edges.append(_read(src, i - 1, *at_t[: len(domains[src]) - 1], cond=i >= 1))
        if len(domain) == 2 and draw(st.booleans()):
            edges.append(_read(k, i, t - 1, cond=t >= 1))
        ops.append(_op(k, domain, *edges))
    return _program((i, t), *ops)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(nested_programs())
def test_random_nested_programs_are_scheduled_legally(program: Program) -> None:
    for bounds in ({I: 1, T: 1}, {I: 2, T: 3}, {I: 3, T: 2}):
        check_legal(program, bounds)
