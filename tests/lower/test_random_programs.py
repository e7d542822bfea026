"""Random dynamic programs: compiled code against the reference interpreter.

Each program chains a few tensors over ``t``: forward recurrences (``x[0] = c``,
``x[t+1] = f(x[t], ...)``), backward ones (``x[T-1] = c``, ``x[True] = f(x[t+1], ...)``)
and plain maps, each reading earlier tensors at clamped offsets. One compilation with a
dynamic bound serves several lengths.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tempo_jax as tj

MAX_T = 6

spec = st.lists(
    st.tuples(
        st.sampled_from(["forward", "backward", "map"]),
        st.integers(1, 2),  # recurrence distance
        st.lists(st.tuples(st.integers(0, 9), st.integers(-2, 2)), max_size=3),  # reads
    ),
    min_size=1,
    max_size=4,
)


def build(layout: list[tuple[str, int, list[tuple[int, int]]]]) -> tj.Program:
    with tj.Program() as p:
        (t,) = p.dims("t")
        T = t.bound
        tensors = [tj.input("x", (), jnp.float32, domain=(t,))]
        for k, (kind, distance, reads) in enumerate(layout):
            terms: Any = 0.1 * (k + 1) * tensors[0]  # every tensor varies over t
            for source, offset in reads:
                earlier = tensors[source % len(tensors)]
                terms = terms + 0.3 * earlier[tj.max(0, tj.min(t + offset, T - 1))]
            if kind == "map":
                y = tj.tanh(terms)
            else:
                y = tj.placeholder((), jnp.float32, domain=(t,), name=f"y{k}")
                if kind == "forward":
                    y[t < distance] = tj.tanh(terms)
                    y[True] = tj.tanh(0.5 * y[t - distance] + terms)
                else:
                    y[t >= T - distance] = tj.tanh(terms)
                    y[True] = tj.tanh(0.5 * y[t + distance] + terms)
            tensors.append(y)
            p.output(f"y{k}", y)
    return p


def check(layout: list[tuple[str, int, list[tuple[int, int]]]], seed: int) -> None:
    program = build(layout)
    compiled = program.compile(bounds={"T": tj.dynamic(max=MAX_T)})
    for steps in (1, 2, MAX_T):
        xs = np.random.default_rng(seed).normal(size=steps).astype(np.float32)
        got = compiled(T=steps, x=xs)
        want = tj.reference.run(program, bounds={"T": steps}, inputs={"x": xs})
        for name, value in want.items():
            np.testing.assert_allclose(np.asarray(got[name])[:steps], value, rtol=1e-5, atol=1e-6)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(spec, st.integers(0, 2**16))
def test_random_programs_compile_to_the_reference(layout, seed: int) -> None:
    check(layout, seed)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(spec, st.integers(0, 2**16))
def test_many_random_programs_compile_to_the_reference(layout, seed: int) -> None:
    check(layout, seed)
