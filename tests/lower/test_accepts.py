"""The compiler accepts exactly the programs the interpreter runs, at the bounds given.

Random programs over ``t`` read earlier tensors at constant points (``y[3]``), constant slices
(``y[1:4]``), the current point and the whole range (``y[0:T]``); tensors are maps, defined
only on a prefix (``y[t < 3] = ...``), with or without a default branch, or recurrences
(``y[t] = f(y[t - s])``) with or without their first ``s`` points. At a static ``T`` the
compiled program must raise the interpreter's error class or return its values; with a
dynamic ``T`` in ``1..max`` it must compile exactly when every ``T`` in the range runs.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tempo_jax as tj

MAX_T = 5

read = st.one_of(
    st.tuples(st.just("point"), st.integers(0, 9), st.integers(0, 5)),
    st.tuples(st.just("slice"), st.integers(0, 9), st.integers(0, 3), st.integers(1, 3)),
    st.tuples(st.just("here"), st.integers(0, 9)),
    st.tuples(st.just("all"), st.integers(0, 9)),
)
tensor = st.tuples(
    st.sampled_from(["map", "prefix", "prefix_default", "recurrence", "recurrence_no_start"]),
    st.integers(1, 4),  # the prefix length; a recurrence's distance is 1 + this % 2
    st.lists(read, max_size=3),
)
layouts = st.lists(tensor, min_size=1, max_size=3)


def _read(tensors: list[Any], item: tuple, T: Any) -> Any:
    source = tensors[item[1] % len(tensors)]
    if item[0] == "point":
        return source[item[2]]
    if item[0] == "slice":
        return source[item[2] : item[2] + item[3]].sum()
    if item[0] == "here":
        return source
    return source[0:T].sum()


def build(layout: list[tuple]) -> tj.Program:
    with tj.Program() as p:
        (t,) = p.dims("t")
        T = t.bound
        tensors: list[Any] = [tj.input("x", (), jnp.float32, domain=(t,))]
        for k, (kind, prefix, reads) in enumerate(layout):
            value: Any = 0.1 * (k + 1) * tensors[0]
            for item in reads:
                value = value + 0.3 * _read(tensors, item, T)
            if kind == "map":
                y = tj.tanh(value)
            elif kind.startswith("recurrence"):  # y[t] from y[t - s]; without a start, y[0]
                y = tj.placeholder((), jnp.float32, domain=(t,), name=f"y{k}")  # has no branch
                distance = 1 + prefix % 2
                if kind == "recurrence":
                    y[t < distance] = tj.tanh(value)
                y[t >= distance] = tj.tanh(0.5 * y[t - distance] + value)
            else:
                y = tj.placeholder((), jnp.float32, domain=(t,), name=f"y{k}")
                y[t < prefix] = tj.tanh(value)
                if kind == "prefix_default":
                    y[True] = tj.tanh(-value)
            tensors.append(y)
        p.output("last", tensors[-1])
        p.output("first", tensors[-1][0])
    return p


def _interpret(program: tj.Program, steps: int, xs: np.ndarray) -> dict | type:
    try:
        return tj.reference.run(program, bounds={"T": steps}, inputs={"x": xs})
    except tj.TempoError as error:
        return type(error)


def _agree(got: dict, want: dict, steps: int) -> None:
    np.testing.assert_allclose(np.asarray(got["last"])[:steps], want["last"], rtol=1e-5)
    np.testing.assert_allclose(got["first"], want["first"], rtol=1e-5)


def check(layout: list[tuple], seed: int) -> None:
    program = build(layout)
    inputs = {n: np.random.default_rng(seed).normal(size=n).astype(np.float32) for n in (1, 5)}
    inputs.update({n: inputs[5][:n] for n in range(2, MAX_T)})
    runs = {n: _interpret(program, n, inputs[n]) for n in range(1, MAX_T + 1)}
    for steps in (1, 3, MAX_T):  # static bounds: same error class, or same values
        want = runs[steps]
        if isinstance(want, type):
            with pytest.raises(want):
                program.compile(bounds={"T": steps})(x=inputs[steps])
        else:
            _agree(program.compile(bounds={"T": steps})(x=inputs[steps]), want, steps)
    failing = [n for n, want in runs.items() if isinstance(want, type)]
    if failing:  # a dynamic T: rejected at compile time, with an error some T gives
        with pytest.raises(tj.TempoError) as caught:
            program.compile(bounds={"T": tj.dynamic(max=MAX_T)})
        assert caught.type in {runs[n] for n in failing}
        assert f"T is dynamic, compiled for 1..{MAX_T}" in str(caught.value)
        return
    compiled = program.compile(bounds={"T": tj.dynamic(max=MAX_T)})
    for steps, want in runs.items():
        _agree(compiled(T=steps, x=inputs[steps]), want, steps)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(layouts, st.integers(0, 2**16))
def test_compile_accepts_what_the_interpreter_runs(layout: list[tuple], seed: int) -> None:
    check(layout, seed)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(layouts, st.integers(0, 2**16))
def test_compile_accepts_what_the_interpreter_runs_many(layout: list[tuple], seed: int) -> None:
    check(layout, seed)


def _reads(read: str) -> tj.Program:
    with tj.Program() as p:
        a, t = p.dims("a t")
        x = tj.input("x", (), jnp.float32, domain=(a, t))
        y = tj.placeholder((), jnp.float32, domain=(a, t), name="y")
        y[a, t < 3] = x * 2.0
        outputs = {
            "point": lambda: x[:, 3],
            "slice": lambda: x[:, 0:5].sum(),
            "plus": lambda: x + x[:, 2],
            "column": lambda: x[1, :],
            "prefix": lambda: y[:, 0 : t.bound].sum(),
        }
        p.output("o", outputs[read]())
    return p


@pytest.mark.parametrize(
    ("read", "steps"),
    [("point", 10), ("slice", 10), ("plus", 10), ("column", 10), ("prefix", 3)],
)
def test_reads_in_bounds_at_the_compiled_bounds_compile(read: str, steps: int) -> None:
    program = _reads(read)
    bounds = {"A": 4, "T": steps}
    xs = np.random.default_rng(0).normal(size=(4, steps)).astype(np.float32)
    want = tj.reference.run(program, bounds=bounds, inputs={"x": xs})
    got = program.compile(bounds=bounds)(x=xs)
    np.testing.assert_allclose(got["o"], want["o"], rtol=1e-6)


def test_a_rejection_names_the_bounds_compiled_for() -> None:
    with pytest.raises(tj.OutOfBoundsError, match=r"`x\[a, 3\]`.* at a=\d \(with A=4, T=3\)"):
        _reads("point").compile(bounds={"A": 4, "T": 3})
    with pytest.raises(tj.UndefinedPointError, match=r"at a=\d, t=3 \(with A=4, T=4\)"):
        _reads("prefix").compile(bounds={"A": 4, "T": 4})
    dynamic = r"\(with A=4, T=[123]; T is dynamic, compiled for 1\.\.10\)"
    with pytest.raises(tj.OutOfBoundsError, match=dynamic):
        _reads("point").compile(bounds={"A": 4, "T": tj.dynamic(max=10)})


def test_a_dynamic_bound_with_a_least_value_accepts_constant_reads() -> None:
    program = _reads("point")
    compiled = program.compile(bounds={"A": 4, "T": tj.dynamic(max=10, min=4)})
    xs = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    np.testing.assert_allclose(compiled(T=6, x=xs)["o"], xs[:, 3])
    with pytest.raises(tj.MissingBoundError, match=r"T=3 is outside 4\.\.10.*min=3"):
        compiled(T=3, x=xs[:, :3])


@pytest.mark.parametrize(
    "layout",
    [
        [("map", 1, []), ("map", 1, [("here", 1), ("point", 1, 1)])],
        [("prefix", 1, []), ("map", 1, [("here", 1), ("point", 0, 3)])],
        [("recurrence_no_start", 1, [("here", 0)])],
    ],
    ids=["point_past_a_maps_end", "two_faults", "no_start"],
)
def test_layouts_the_random_test_found(layout: list[tuple]) -> None:
    """A map's ``y0[1]`` at ``T = 1`` ran on a clamped index (the check ran after the passes
    had vectorised the map); with two faults the compiled error was the other one; a
    recurrence without its first point fails as the interpreter does."""
    check(layout, 0)
