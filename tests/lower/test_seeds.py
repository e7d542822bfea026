"""A value kept as its latest point, or in a loop's ring, that a merge starts from an input:
the value starts as the input and the merge reads it alone (``plan_seeds``); a loop's last
value taken from its ring once the loop has run (``plan_last_of_loop``); each against the
reference interpreter."""

from __future__ import annotations

import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

import tempo_jax as tj
from tests.lower.helpers import equations

BOUNDS = {"I": 5, "M": 3}


def _stepped(reset_every_iteration: bool) -> tj.Program:
    """``w`` stepped over minibatches ``m`` of iterations ``i``, starting from the input
    ``w0``: once (an optimiser's parameters), or again at every iteration."""
    with tj.Program() as p:
        i, m = p.dims("i m")
        w0 = tj.input("w0", (4,), jnp.float32)
        x = tj.input("x", (4,), jnp.float32, domain=(m,))
        w = tj.placeholder((4,), jnp.float32, domain=(i, m))
        new = w * 0.9 + tj.tanh(x[m] * w)
        if reset_every_iteration:
            w[i, 0] = w0
        else:
            w[0, 0] = w0
            w[i + 1, 0] = new[i, m.bound - 1]
        w[i, m + 1] = new[i, m]
        p.output("w", new[i.bound - 1, m.bound - 1])
    return p


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "w0": rng.normal(size=4).astype(np.float32),
        "x": rng.normal(size=(BOUNDS["M"], 4)).astype(np.float32),
    }


def _selects(jaxpr: jex.Jaxpr) -> int:
    return sum(eqn.primitive.name == "select_n" for eqn in equations(jaxpr))


def test_a_recurrence_started_from_an_input_carries_it_without_a_select() -> None:
    p = _stepped(reset_every_iteration=False)
    compiled = p.compile(BOUNDS)
    plan = compiled._buffer_plan()
    merges = [op for op in compiled.program.ops if op.kind == "merge"]
    assert {merge for merge, _ in plan.seeds.values()} == {op.id for op in merges}
    inputs = _inputs()
    assert _selects(compiled.jaxpr(**inputs).jaxpr) == 0
    want = tj.reference.run(p, BOUNDS, inputs)["w"]
    np.testing.assert_allclose(compiled(**inputs)["w"], want, rtol=1e-5, atol=1e-6)


def test_a_value_started_again_at_every_iteration_is_not_seeded() -> None:
    """``w[i, 0] = w0`` holds at the first minibatch of every iteration, not at the nest's
    first point alone: the kept value is the last minibatch's there, so the merge selects."""
    p = _stepped(reset_every_iteration=True)
    compiled = p.compile(BOUNDS)
    assert not compiled._buffer_plan().seeds
    inputs = _inputs()
    want = tj.reference.run(p, BOUNDS, inputs)["w"]
    np.testing.assert_allclose(compiled(**inputs)["w"], want, rtol=1e-5, atol=1e-6)


def _stepped_once(last: int) -> tj.Program:
    """``w`` stepped over ``i`` alone from the input ``w0`` (one update per iteration: the
    loop carries the previous step in a ring), its value at ``I - last`` an output."""
    with tj.Program() as p:
        (i,) = p.dims("i")
        w0 = tj.input("w0", (4,), jnp.float32)
        x = tj.input("x", (4,), jnp.float32, domain=(i,))
        w = tj.placeholder((4,), jnp.float32, domain=(i,))
        new = w * 0.9 + tj.tanh(x[i] * w)
        w[0] = w0
        w[i + 1] = new[i]
        p.output("w", new[i.bound - last])
    return p


def test_a_loop_carried_recurrence_started_from_an_input_selects_nothing() -> None:
    """The merge reads the ring's one slot, which starts as the input, and the output at the
    loop's last point is that slot once the loop has run: no select at any step."""
    p = _stepped_once(last=1)
    compiled = p.compile({"I": 6})
    plan = compiled._buffer_plan()
    assert {merge for merge, _ in plan.seeds.values()} == {
        op.id for op in compiled.program.ops if op.kind == "merge"
    }
    assert plan.ring_taken == {"w"}
    inputs = {"w0": _inputs()["w0"], "x": np.random.default_rng(3).normal(size=(6, 4))}
    inputs["x"] = inputs["x"].astype(np.float32)
    assert _selects(compiled.jaxpr(**inputs).jaxpr) == 0
    want = tj.reference.run(p, {"I": 6}, inputs)["w"]
    np.testing.assert_allclose(compiled(**inputs)["w"], want, rtol=1e-5, atol=1e-6)


def test_a_value_before_the_last_point_is_still_captured() -> None:
    p = _stepped_once(last=2)
    compiled = p.compile({"I": 6})
    assert not compiled._buffer_plan().ring_taken
    inputs = {"w0": _inputs()["w0"], "x": np.random.default_rng(3).normal(size=(6, 4))}
    inputs["x"] = inputs["x"].astype(np.float32)
    want = tj.reference.run(p, {"I": 6}, inputs)["w"]
    np.testing.assert_allclose(compiled(**inputs)["w"], want, rtol=1e-5, atol=1e-6)
