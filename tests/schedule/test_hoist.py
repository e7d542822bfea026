"""Work guarded to a loop's first iteration moves before the loop
(`tempo_jax._schedule.hoist`), legally."""

from __future__ import annotations

from tempo_jax._ir.expr import Const, Slice, Symbol, eq
from tempo_jax._schedule import scheduler
from tempo_jax._schedule.hoist import hoist_first_iterations
from tempo_jax._schedule.tree import Exec, Guard, Loop, Sequence, loop_var, walk
from tests.schedule.test_scheduler import (
    T,
    _bound_values,
    _op,
    _program,
    _read,
    check_legal,
    i,
    t,
)

e = Symbol("e", 11, "E")
E = e.bound
I = i.bound
vi, ve, vt = loop_var("i"), loop_var("e"), loop_var("t")


def once_in_a_loop():
    """``c`` (no dims) starts a recurrence carried over ``(i, t)``; ``w[i]`` reads the previous
    ``i``'s result, so everything shares one loop over ``i``, and isl puts ``c`` into its first
    iteration: ``for i: ... if i == 0: c ...``."""
    return _program(
        (i, t),
        _op(0, (i,), _read(4, i - 1, cond=i >= 1)),
        _op(1, (i, t), _read(0, i)),
        _op(2, ()),
        _op(
            3,
            (i, t),
            _read(2, cond=eq(i, 0) & eq(t, 0)),
            _read(3, i, t - 1, cond=t >= 1),
            _read(3, i - 1, T - 1),
            kind="merge",
        ),
        _op(4, (i,), _read(3, i, T - 1), _read(1, i, Slice(Const(0), T))),
    )


def test_work_done_once_runs_before_the_loop() -> None:
    program = once_in_a_loop()
    tree = scheduler.schedule(program)
    assert not [node for node in walk(tree) if isinstance(node, Guard)]
    assert isinstance(tree, Sequence) and tree.children[0] == Exec(2, ())
    (outer,) = [node for node in tree.children if isinstance(node, Loop)]
    assert outer.dim == "i"
    for bounds in _bound_values(program):
        check_legal(program, bounds)


def test_a_guard_reading_an_earlier_sibling_stays() -> None:
    """``S1`` at ``i == 0`` reads ``S0``, which runs before it in that iteration."""
    program = _program((i,), _op(0, (i,)), _op(1, (), _read(0, Const(0))))
    tree = Loop("i", Const(0), I, Sequence((Exec(0, (vi,)), Guard(eq(vi, 0), Exec(1, ())))))
    assert hoist_first_iterations(tree, program) == tree


def test_a_loop_that_may_not_run_keeps_its_guard() -> None:
    program = _program((i,), _op(0, (i,)), _op(1, ()))
    body = Sequence((Guard(eq(vi, 1), Exec(1, ())), Exec(0, (vi,))))
    for loop in (
        Loop("i", Const(1), I, body),  # no iteration when I = 1
        Loop("i", Const(0), I - 1, Sequence((Guard(eq(vi, 0), Exec(1, ())), Exec(0, (vi,))))),
        Loop("i", Const(0), I, Sequence((Guard(eq(vi, 0), Exec(1, ())), Exec(0, (vi,)))), True),
    ):
        assert hoist_first_iterations(loop, program) == loop


def test_a_guard_on_two_loops_leaves_both_its_part_at_a_time() -> None:
    """``for e: for t: if (e == 0) & (t == 0): S1`` -> ``S1`` before both loops; a second
    condition on an outer loop's variable stays as a guard until that loop is left."""
    program = _program((e, t), _op(0, (e, t)), _op(1, ()), _op(2, (e,)))
    inner = Loop(
        "t",
        Const(0),
        T,
        Sequence((Guard(eq(ve, 0) & eq(vt, 0), Exec(1, ())), Exec(0, (ve, vt)))),
    )
    tree = Loop("e", Const(0), E, Sequence((inner, Exec(2, (ve,)))))
    hoisted = hoist_first_iterations(tree, program)
    inner_plain = Loop("t", Const(0), T, Exec(0, (ve, vt)))
    assert hoisted == Sequence(
        (Exec(1, ()), Loop("e", Const(0), E, Sequence((inner_plain, Exec(2, (ve,))))))
    )
