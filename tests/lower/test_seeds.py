"""A value kept as its latest point, or in a loop's ring, that a merge starts from an input:
the value starts as the input and the merge reads it alone (``plan_seeds``); a loop's last
value taken from its ring once the loop has run (``plan_last_of_loop``); each against the
reference interpreter."""

from __future__ import annotations

from typing import Any

import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _stepped_once(last: int, stop_above: float | None = None) -> tj.Program:
    """``w`` stepped over ``i`` alone from the input ``w0`` (one update per iteration: the
    loop carries the previous step in a ring), its value at ``I - last`` an output; with
    ``stop_above``, every step an output too and the loop stopped once the sum passes it."""
    with tj.Program() as p:
        (i,) = p.dims("i")
        w0 = tj.input("w0", (4,), jnp.float32)
        x = tj.input("x", (4,), jnp.float32, domain=(i,))
        w = tj.placeholder((4,), jnp.float32, domain=(i,))
        new = w * 0.9 + tj.tanh(x[i] * w)
        w[0] = w0
        w[i + 1] = new[i]
        p.output("w", new[i.bound - last])
        if stop_above is not None:
            p.output("path", new)
            p.stop_when(tj.lift(lambda v: v.sum() > stop_above)(new))
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


def test_a_last_value_read_inside_its_loop_is_still_captured() -> None:
    """``z`` reads ``new[T - 1]`` at ``t = T - 1`` in the loop that computes ``new``: the value
    is needed there, before the loop has run, so it stays captured when produced."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        a = tj.input("a", (3,), jnp.float32, domain=(t,))
        w = tj.placeholder((3,), jnp.float32, domain=(t,))
        new = tj.tanh(w) + a
        w[0] = a[0]
        w[t + 1] = new[t]
        z = tj.placeholder((3,), jnp.float32, domain=(t,))
        z[tj.eq(t, t.bound - 1)] = new[t.bound - 1]
        z[True] = new[t] * 0.5
        p.output("z", z)
    compiled = p.compile({"T": 5})
    plan = compiled._buffer_plan()
    assert plan.plan.held and not plan.ring_taken
    data = {"a": np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)}
    want = tj.reference.run(p, {"T": 5}, data)["z"]
    np.testing.assert_allclose(compiled(**data)["z"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_a_seeded_ring_and_its_last_value_under_a_dynamic_bound(steps: int) -> None:
    """The loop's length known at call time (at most 8): the ring starts as the input and the
    output is its slot after the last iteration run, at every length."""
    p = _stepped_once(last=1)
    compiled = p.compile({"I": tj.dynamic(max=8)})
    plan = compiled._buffer_plan()
    assert plan.seeds and plan.ring_taken == {"w"}
    x = np.random.default_rng(5).normal(size=(8, 4)).astype(np.float32)
    inputs = {"w0": _inputs()["w0"], "x": x}
    got = compiled(I=steps, **inputs)["w"]
    want = tj.reference.run(p, {"I": steps}, {"w0": inputs["w0"], "x": x[:steps]})["w"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("threshold", "length"), [(-1.0, 1), (6.0, 4), (1e9, 6)])
def test_a_seeded_ring_under_a_stop_matches_the_reference(threshold: float, length: int) -> None:
    """Under ``p.stop_when`` the loop may end before its last point: the output at ``I - 1``
    is then never computed (zeros) and is not taken from the ring; the seeded merge still
    starts from the input."""
    p = _stepped_once(last=1, stop_above=threshold)
    compiled = p.compile({"I": 6})
    plan = compiled._buffer_plan()
    assert plan.seeds and not plan.ring_taken
    x = np.random.default_rng(6).normal(size=(6, 4)).astype(np.float32)
    inputs = {"w0": np.abs(_inputs()["w0"]), "x": np.abs(x)}
    got, want = compiled(**inputs), tj.reference.run(p, {"I": 6}, inputs)
    for name in ("w", "path"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    assert int(got["lengths"]["I"]) == int(want["lengths"]["I"]) == length  # at once, midway, never


# -- random programs of recurrences started from inputs, read at their last point ------------

MAX_I = 5
stepped = st.lists(
    st.tuples(
        st.booleans(),  # started from an input (else from a computed value)
        st.lists(st.tuples(st.integers(0, 9), st.integers(-2, 1)), max_size=2),  # reads
        st.sampled_from(["last", "full", "both", "inside"]),  # what the outputs read
    ),
    min_size=1,
    max_size=3,
)


def _random_stepped(layout: list[tuple[bool, list[tuple[int, int]], str]]) -> tj.Program:
    """A chain of recurrences over ``i``, each ``w[0] = start``, ``w[i + 1] = new[i]`` with
    ``new = tanh(0.5 w + terms)`` reading earlier values at clamped offsets; outputs at the
    last point, over every point, both, or of a merge reading the last point inside the loop."""
    with tj.Program() as p:
        (i,) = p.dims("i")
        last = i.bound - 1
        values = [tj.input("x", (3,), jnp.float32, domain=(i,))]
        for k, (from_input, reads, outputs) in enumerate(layout):
            terms: Any = 0.1 * (k + 1) * values[0]
            for source, offset in reads:
                earlier = values[source % len(values)]
                terms = terms + 0.3 * earlier[tj.max(0, tj.min(i + offset, last))]
            w = tj.placeholder((3,), jnp.float32, domain=(i,), name=f"w{k}")
            new = tj.tanh(0.5 * w + terms)
            w[0] = tj.input(f"w{k}", (3,), jnp.float32) if from_input else tj.tanh(terms[0])
            w[i + 1] = new[i]
            values.append(new)
            if outputs in ("last", "both"):
                p.output(f"last{k}", new[last])
            if outputs in ("full", "both"):
                p.output(f"path{k}", new)
            if outputs == "inside":  # the last point read inside the loop, at its last step
                z = tj.placeholder((3,), jnp.float32, domain=(i,), name=f"z{k}")
                z[tj.eq(i, last)] = new[last]
                z[True] = new[i] * 0.5
                p.output(f"path{k}", z)
    return p


def _check_stepped(layout: list[tuple[bool, list[tuple[int, int]], str]], seed: int) -> None:
    program = _random_stepped(layout)
    rng = np.random.default_rng(seed)
    starts = {
        f"w{k}": rng.normal(size=3).astype(np.float32)
        for k, (from_input, _, _) in enumerate(layout)
        if from_input
    }
    xs = rng.normal(size=(MAX_I, 3)).astype(np.float32)
    dynamic = program.compile({"I": tj.dynamic(max=MAX_I)})
    for steps in (1, 2, MAX_I):
        inputs = {"x": xs[:steps], **starts}
        want = tj.reference.run(program, {"I": steps}, inputs)
        for got in (dynamic(I=steps, x=xs, **starts), program.compile({"I": steps})(**inputs)):
            for name, value in want.items():
                got_value = np.asarray(got[name])
                if name.startswith("path"):
                    got_value = got_value[:steps]
                np.testing.assert_allclose(got_value, value, rtol=1e-5, atol=1e-6)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(stepped, st.integers(0, 2**16))
def test_random_stepped_programs_compile_to_the_reference(layout, seed: int) -> None:
    _check_stepped(layout, seed)


@pytest.mark.slow
@settings(max_examples=120, deadline=None)
@given(stepped, st.integers(0, 2**16))
def test_many_random_stepped_programs_compile_to_the_reference(layout, seed: int) -> None:
    _check_stepped(layout, seed)
