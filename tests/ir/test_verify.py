"""The SDG verifier: each named check rejects the malformation it is about."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest

import tempo_jax as tj
from tempo_jax._ir import verify as V
from tempo_jax._ir.expr import Const, Symbol
from tempo_jax._ir.program import Edge, Program, TensorSpec


def _program() -> Program:
    with tj.Program() as p:
        i, t = p.dims("i t")
        x = tj.input("x", (3,), jnp.float32, domain=(t,))
        w = tj.placeholder((3,), jnp.float32, domain=(i,))
        w[0] = jnp.zeros(3)
        w[i + 1] = w[i] + x[0 : t.bound].mean(axis=0)
        p.output("w", w)
    return p.to_ir()


def _edit_op(program: Program, op_id: int, **changes: object) -> Program:
    ops = tuple(op.replace(**changes) if op.id == op_id else op for op in program.ops)
    return program.replace(ops=ops)


def _first(program: Program, kind: str) -> int:
    return next(op.id for op in program.ops if op.kind == kind)


def test_a_recorded_program_passes_every_check() -> None:
    program = _program()
    for check in V.CHECKS:
        check(program)
    assert V.verify(program) is program


def test_check_op_ids_rejects_dangling_edges() -> None:
    program = _program()
    merge = program.op(_first(program, "merge"))
    bad = dataclasses.replace(merge.inputs[0], src=999)
    with pytest.raises(tj.VerificationError, match=r"reads op %999, which is absent"):
        V.check_op_ids(_edit_op(program, merge.id, inputs=(bad, *merge.inputs[1:])))


def test_check_op_kinds_rejects_apply_without_payload() -> None:
    program = _program()
    apply_id = _first(program, "apply")
    with pytest.raises(tj.VerificationError, match=r"apply op without a payload"):
        V.check_op_kinds(_edit_op(program, apply_id, payload=None))


def test_check_domains_rejects_unordered_and_foreign_dims() -> None:
    program = _program()
    i, t = program.dims
    apply_id = _first(program, "apply")
    with pytest.raises(tj.VerificationError, match=r"not in declaration order"):
        V.check_domains(_edit_op(program, apply_id, domain=(t, i)))
    stranger = Symbol("s", 12345, "S")
    with pytest.raises(tj.ForeignSymbolError, match=r"symbol `s`, which belongs to another"):
        V.check_domains(_edit_op(program, apply_id, domain=(stranger,)))


def test_check_edges_rejects_wrong_arity_and_missing_dims() -> None:
    program = _program()
    merge = program.op(_first(program, "merge"))
    branch = merge.inputs[1]
    too_long = dataclasses.replace(branch, index=(*branch.index, Const(0)))
    with pytest.raises(tj.VerificationError, match=r"has 2 index items for the 1 domain dims"):
        V.check_edges(_edit_op(program, merge.id, inputs=(merge.inputs[0], too_long)))
    t = program.dims[1]
    reads_t = dataclasses.replace(branch, index=(t,))
    with pytest.raises(tj.VerificationError, match=r"uses dims t that the reading op"):
        V.check_edges(_edit_op(program, merge.id, inputs=(merge.inputs[0], reads_t)))


def test_check_branches_rejects_a_different_dtype() -> None:
    program = _program()
    merge = program.op(_first(program, "merge"))
    spec = merge.outputs[0]
    retyped = _edit_op(program, merge.id, outputs=(TensorSpec(spec.shape, jnp.int32),))
    with pytest.raises(tj.BranchMismatchError, match=r"gives float32\[3\], but `w` holds int32"):
        V.check_branches(retyped)


def test_check_outputs_rejects_duplicate_names() -> None:
    program = _program()
    with pytest.raises(tj.OutputError, match=r"two outputs are named 'w'"):
        V.check_outputs(program.replace(outputs=program.outputs * 2))


def test_edges_carry_index_and_condition() -> None:
    program = _program()
    merge = program.op(_first(program, "merge"))
    first, second = merge.inputs
    assert str(first.cond) == "i == 0"
    assert str(second.cond) == "i >= 1"
    assert str(second.index[0]) == "i - 1"  # w[i+1] = f(w[i])  reads f at i - 1
    assert isinstance(first, Edge) and first.source.line > 0


def test_recurrent_tensors_are_pytrees_with_static_metadata() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (2,), jnp.float32, domain=(t,))
        view = x[t - 1]
        leaves, treedef = jax.tree_util.tree_flatten({"a": view, "b": 1.0})
        assert leaves == [1.0]  # the RT has no array leaves
        rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)["a"]
        assert isinstance(rebuilt, tj.RecurrentTensor)
        assert rebuilt.name == "x[t - 1]" and rebuilt.domain == (t,) and rebuilt.shape == (2,)
        mapped = jax.tree_util.tree_map(lambda v: v * 2, {"a": view, "b": 1.0})
        assert mapped["b"] == 2.0 and mapped["a"].edge() == view.edge()
