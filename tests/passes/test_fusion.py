"""``fuse_growing``: a value growing with a dim is computed by its only reader.

Oracle: the reference interpreter on the program before and after the pass (and on the
corpus), with the structure of the fused program checked by hand.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax._passes.fusion import fuse_growing
from tests.corpus import CASES, Case

D = 4


def _attention(read_scores: bool = False) -> tj.Program:
    """Attention written op by op; ``read_scores`` also outputs the scores (a second reader)."""
    with tj.Program() as p:
        b, t = p.dims("b t")
        q = tj.input("q", (D,), jnp.float32, domain=(b, t))
        k = tj.input("k", (D,), jnp.float32, domain=(b, t))
        v = tj.input("v", (D,), jnp.float32, domain=(b, t))
        s = k[b, 0 : t + 1] @ q[b, t]
        p.output("o", tj.softmax(s) @ v[b, 0 : t + 1])
        if read_scores:
            p.output("top", s.max())
    return p


def _inputs(steps: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.normal(size=(2, steps, D)).astype(np.float32) for n in "qkv"}


def test_attention_op_by_op_becomes_one_op_reading_the_ranges() -> None:
    ir = _attention().to_ir()
    fused = fuse_growing(ir)
    (op,) = [o for o in fused.ops if o.kind == "apply"]
    reads = sorted(fused.op(e.src).name for e in op.inputs)
    assert reads == ["k", "q", "v"]
    assert [name for name, _ in op.payload.fused] == ["softmax", "matmul"]
    bounds = {"B": 2, "T": 6}
    want = tj.reference.run(ir, bounds, _inputs())
    np.testing.assert_allclose(tj.reference.run(fused, bounds, _inputs())["o"], want["o"])
    assert fuse_growing(fused) == fused  # idempotent


def test_a_value_with_two_readers_is_kept() -> None:
    ir = _attention(read_scores=True).to_ir()
    fused = fuse_growing(ir)
    applied = [o for o in fused.ops if o.kind == "apply"]
    assert len(applied) == 3  # the scores (read twice), their max, softmax and matmul in one
    last = next(o for o in applied if o.payload.fused)
    assert [name for name, _ in last.payload.fused] == ["softmax"]


def test_compiled_attention_op_by_op_runs_in_query_blocks() -> None:
    program = _attention()
    compiled = program.compile({"B": 2, "T": 40})
    data = _inputs(40)
    want = tj.reference.run(program, {"B": 2, "T": 40}, data)["o"]
    np.testing.assert_allclose(compiled(**data)["o"], want, rtol=2e-5, atol=2e-5)
    text = str(compiled.jaxpr(**data))
    # blocks of queries, then tiles; and the point-by-point path for values not finite
    assert text.count("while[") == 2 and text.count("scan[") == 2


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_fuse_growing_keeps_the_outputs_on_the_corpus(case: Case) -> None:
    program, bounds, inputs = case.build()
    ir = program.to_ir()
    before = ir.ops
    out = fuse_growing(ir)
    assert ir.ops == before  # the input program is unchanged
    assert fuse_growing(out) == out
    want = tj.reference.run(ir, bounds, inputs)
    for name, value in tj.reference.run(out, bounds, inputs).items():
        np.testing.assert_allclose(value, want[name], rtol=1e-5, atol=1e-5)
