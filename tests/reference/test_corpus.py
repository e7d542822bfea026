"""The reference interpreter on the corpus, against NumPy loops written in the tests."""

from __future__ import annotations

import numpy as np
import pytest

import tempo_jax as tj
from tests.corpus import CASES, Case


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_reference_matches_numpy(case: Case) -> None:
    program, bounds, inputs = case.build()
    got = tj.reference.run(program, bounds=bounds, inputs=inputs)
    want = case.oracle(inputs)
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(np.asarray(got[name]), value, rtol=1e-5, atol=1e-5)


def test_outputs_stack_domain_dims_first() -> None:
    program, bounds, inputs = CASES[2].build()  # ema: domain (b, t), shape (3,)
    got = tj.reference.run(program, bounds=bounds, inputs=inputs)
    assert got["m"].shape == (2, 9, 3)
    assert got["last"].shape == (2, 3)


def test_ir_is_immutable_and_reused() -> None:
    program, bounds, inputs = CASES[0].build()
    ir = program.to_ir()
    with pytest.raises(AttributeError):
        ir.ops = ()  # type: ignore[misc]
    first = tj.reference.run(ir, bounds=bounds, inputs=inputs)
    second = tj.reference.run(ir, bounds=bounds, inputs=inputs)
    np.testing.assert_array_equal(first["s"], second["s"])


def test_long_recurrence_has_no_recursion_limit() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), "int32", domain=(t,))
        x[0] = 0
        x[t + 1] = x[t] + 1
        p.output("last", x[t.bound - 1])
    assert int(tj.reference.run(p, bounds={t.bound: 3000})["last"]) == 2999
