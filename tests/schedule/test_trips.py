"""The most iterations of loops over dynamic bounds (``Loop.trips``), against enumeration."""

from __future__ import annotations

import jax.numpy as jnp

import tempo_jax as tj
from tempo_jax._ir.expr import Const, Max, Min
from tempo_jax._schedule.tree import Exec, Loop, loop_var, loops
from tempo_jax._schedule.trips import bound_trips


def _program() -> tuple[tj.Program, object, object]:
    with tj.Program() as p:
        b, t = p.dims("b t")
        x = tj.input("x", (), jnp.float32, domain=(b, t))
        p.output("x", x)
    ir = p.to_ir()
    return ir, b.bound, t.bound


def test_trips_of_nested_loops_over_a_dynamic_bound() -> None:
    ir, _, T = _program()
    s = loop_var("s")
    leaf = Exec(ir.ops[0].id, (Const(0), Const(0)))
    inner = Loop("u", Max(Const(0), s - 2), Min(s + 1, T), leaf)  # a window, clipped at T
    tree = Loop("s", Const(0), T + 1, inner)
    bounded = bound_trips(tree, ir, {"B": (3, 3), "T": (1, 7)})
    outer_loop, inner_loop = loops(bounded)
    assert outer_loop.trips == 8  # s in 0..T, T at most 7
    want = max(min(v + 1, n) - max(0, v - 2) for n in range(1, 8) for v in range(n + 1))
    assert inner_loop.trips == want == 3


def test_loops_over_static_bounds_keep_no_trips() -> None:
    ir, B, _ = _program()
    tree = Loop("s", Const(0), B, Exec(ir.ops[0].id, (Const(0), Const(0))))
    assert loops(bound_trips(tree, ir, {"B": (3, 3), "T": (1, 7)}))[0].trips is None
    assert bound_trips(tree, ir, {"B": (3, 3), "T": (7, 7)}) is tree
