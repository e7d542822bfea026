"""Guards with the same condition in one sequence are brought together and merged, unless an
op between them reads what one runs or runs what it reads (or both hold sinks). The values of
a program whose guards merge are checked in tests/algorithms/test_baselines.py (PPO's
minibatch loop, against the hand-written baseline)."""

from __future__ import annotations

import jax.numpy as jnp

import tempo_jax as tj
from tempo_jax._ir.expr import Symbol, eq
from tempo_jax._schedule.grouping import group_guards
from tempo_jax._schedule.tree import Exec, Guard, Node, Sequence, execs, loop_var

T = Symbol("t")
FIRST = eq(T, 0)


def _program() -> tuple[tj.Program, dict[str, int]]:
    """``a = tanh(x)``, ``b = 2a``, ``c = exp(x)``, ``d = c + b`` over ``t``, two sinks; the
    ops' ids by name."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        a = tj.lift(jnp.tanh, name="a")(x)
        b = tj.lift(lambda v: v * 2.0, name="b")(a)
        c = tj.lift(jnp.exp, name="c")(x)
        d = tj.lift(lambda u, v: u + v, name="d")(c, b)
        tj.sink(c, lambda v, pt: None)
        tj.sink(d, lambda v, pt: None)
        p.output("d", d[0 : t.bound])
    ir = p.to_ir()
    ids = {op.name: op.id for op in ir.ops if op.name in "abcd"}
    sinks = [op.id for op in ir.ops if op.kind == "sink"]
    ids.update(sink_c=sinks[0], sink_d=sinks[1])
    return ir, ids


def _run(ids: dict[str, int], name: str) -> Exec:
    return Exec(ids[name], (T,))


def _shape(node: Node, ids: dict[str, int]) -> list:
    """The tree as nested lists: op names, and ``("if", [...])`` for a guard."""
    names = {v: k for k, v in ids.items()}
    if isinstance(node, Sequence):
        return [_shape(child, ids) for child in node.children]
    if isinstance(node, Guard):
        body = _shape(node.body, ids)
        return ("if", body if isinstance(body, list) else [body])
    assert isinstance(node, Exec)
    return names[node.op]


def test_a_later_guard_moves_back_over_what_it_does_not_read() -> None:
    ir, ids = _program()
    tree = Sequence((Guard(FIRST, _run(ids, "a")), _run(ids, "c"), Guard(FIRST, _run(ids, "b"))))
    assert _shape(group_guards(tree, ir), ids) == [("if", ["a", "b"]), "c"]


def test_an_earlier_guard_moves_forward_when_the_later_one_cannot_move() -> None:
    ir, ids = _program()
    tree = Sequence(
        (Guard(FIRST, _run(ids, "a")), _run(ids, "c"), Guard(FIRST, _run(ids, "d")))
    )  # d reads c; a does not touch c
    assert _shape(group_guards(tree, ir), ids) == ["c", ("if", ["a", "d"])]


def test_guards_stay_apart_when_both_conflict_with_what_is_between() -> None:
    ir, ids = _program()
    tree = Sequence(
        (Guard(FIRST, _run(ids, "a")), _run(ids, "b"), Guard(FIRST, _run(ids, "d")))
    )  # b reads a, d reads b
    assert _shape(group_guards(tree, ir), ids) == [("if", ["a"]), "b", ("if", ["d"])]


def test_other_conditions_and_sinks_keep_their_places() -> None:
    ir, ids = _program()
    other = Guard(eq(T, 1), _run(ids, "b"))
    tree = Sequence((Guard(FIRST, _run(ids, "a")), other, Guard(FIRST, _run(ids, "c"))))
    assert _shape(group_guards(tree, ir), ids) == [("if", ["a", "c"]), ("if", ["b"])]
    sinks = Sequence(
        (Guard(FIRST, _run(ids, "sink_c")), _run(ids, "sink_d"), Guard(FIRST, _run(ids, "a")))
    )
    got = _shape(group_guards(sinks, ir), ids)
    assert got == [("if", ["sink_c", "a"]), "sink_d"]  # a moves; the sinks keep their order
    kept = Sequence(
        (Guard(FIRST, _run(ids, "sink_c")), _run(ids, "sink_d"), Guard(FIRST, _run(ids, "sink_c")))
    )
    assert _shape(group_guards(kept, ir), ids) == [("if", ["sink_c"]), "sink_d", ("if", ["sink_c"])]


def test_ppo_runs_its_rollout_under_one_guard_and_each_minibatch_at_its_own_point() -> None:
    """PPO with CleanRL's settings: the rollout and the advantages of an iteration, which isl
    places in two guards of the minibatch loop's body, run under one; the gathers of a
    minibatch run at its own ``(e, m)`` (sunk into their consumer's group,
    :func:`~tempo_jax._schedule.clusters._sink`), not all of an iteration's at its first."""
    from tempo_jax.algorithms import config as rl_config
    from tempo_jax.algorithms import ppo

    built = ppo.build(rl_config.load("ppo_cartpole"))
    compiled = built.program.compile(built.bounds)
    assert compiled.schedule.count("if (e == 0) & (m == 0):") == 1
    gathers = [ex for ex in execs(compiled.tree) if compiled.program.op(ex.op).name == "minibatch"]
    assert len(gathers) == 6
    assert all(ex.point == tuple(loop_var(d) for d in "iem") for ex in gathers)
