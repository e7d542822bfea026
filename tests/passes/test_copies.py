"""Copy elimination: same outputs, fewer ops (the corpus and gradient programs)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax._passes.copies import remove_copies
from tests.corpus import CASES, Case


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_outputs_are_unchanged_on_the_corpus(case: Case) -> None:
    program, bounds, inputs = case.build()
    ir = program.to_ir()
    want = tj.reference.run(ir, bounds, inputs)
    got = tj.reference.run(remove_copies(ir), bounds, inputs)
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=1e-6)


def test_a_copy_merge_is_dropped_and_its_readers_redirected() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        y = tj.placeholder((), jnp.float32, domain=(t,))
        y[True] = x * 2.0
        z = tj.placeholder((), jnp.float32, domain=(t,))
        z[True] = y  # a copy of a copy
        p.output("z", z[0 : t.bound])
        p.output("y", y[t])
    ir = p.to_ir()
    out = remove_copies(ir)
    assert [op.kind for op in out.ops].count("merge") == 0
    assert len(out.ops) == len(ir.ops) - 2
    assert remove_copies(out) == out  # idempotent
    assert ir.ops[-1].kind == "merge"  # the input program is unchanged
    xs = np.arange(5, dtype=np.float32)
    for result in (tj.reference.run(out, {t.bound: 5}, {"x": xs}), p.compile({t.bound: 5})(x=xs)):
        np.testing.assert_allclose(result["z"], xs * 2)
        np.testing.assert_allclose(result["y"], xs * 2)


def test_a_recurrence_is_not_a_copy() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        s = tj.placeholder((), jnp.float32, domain=(t,))
        s[0] = x[0]
        s[t + 1] = s[t] + x[t + 1]
        p.output("s", s[0 : t.bound])
    ir = p.to_ir()
    assert remove_copies(ir) == ir
