"""The pass pipeline: dead-op elimination, pass statistics, debug printing, turning passes off."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax._passes.copies import remove_copies
from tempo_jax._passes.pipeline import dead_ops
from tests.corpus import CASES, Case
from tests.lower.test_compile import _loops


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_dead_op_elimination_keeps_the_outputs_on_the_corpus(case: Case) -> None:
    program, bounds, inputs = case.build()
    ir = program.to_ir()
    before = ir.ops
    out = dead_ops(ir)
    assert ir.ops == before  # the input program is unchanged
    assert dead_ops(out) == out  # idempotent
    want = tj.reference.run(ir, bounds, inputs)
    got = tj.reference.run(out, bounds, inputs)
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=1e-6)


def _with_dead_ops() -> tuple[tj.Program, tj.Symbol]:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        unused_input = tj.input("unused", (), jnp.float32)
        dead = tj.exp(x) * 3.0  # read by nothing
        del dead, unused_input
        p.output("y", (x * 2.0)[0 : t.bound])
    return p, t


def test_dead_ops_are_removed_and_inputs_kept() -> None:
    p, _ = _with_dead_ops()
    ir = p.to_ir()
    out = dead_ops(ir)
    names = [op.name for op in out.ops]
    assert "exp" not in names and "multiply" in names
    assert {op.name for op in out.ops if op.kind == "input"} == {"x", "unused"}
    assert len(out.ops) == len(ir.ops) - 2  # exp and its multiply (3.0 is in the payload)


def test_compiled_stats_report_each_pass_and_passes_can_be_turned_off() -> None:
    p, t = _with_dead_ops()
    xs = np.arange(5, dtype=np.float32)
    compiled = p.compile({t.bound: 5})
    assert [s.name for s in compiled.stats] == [p.__name__ for p in tj.Pipeline().passes]
    assert compiled.stats[0].ops_before - compiled.stats[0].ops_after == 2
    assert all(s.seconds >= 0 for s in compiled.stats)
    bare = p.compile({t.bound: 5}, pipeline=tj.Pipeline(passes=()))
    assert bare.stats == [] and len(bare.program.ops) == len(compiled.program.ops) + 2
    for f in (compiled, bare):
        np.testing.assert_allclose(f(x=xs, unused=np.float32(0))["y"], xs * 2)
    only_copies = p.compile({t.bound: 5}, pipeline=tj.Pipeline(passes=(remove_copies,)))
    assert [s.name for s in only_copies.stats] == ["remove_copies"]


def test_debug_prints_the_program_after_each_pass(monkeypatch, capsys) -> None:
    p, t = _with_dead_ops()
    monkeypatch.setenv("TEMPO_JAX_DEBUG", "1")
    p.compile({t.bound: 3})
    printed = capsys.readouterr().out
    assert "program after dead_ops" in printed and "program after remove_copies" in printed
    assert "exp" not in printed.split("program after dead_ops")[1]


def test_a_loss_that_only_feeds_gradients_is_dead() -> None:
    """Only the gradient is an output: the loss's own reduction is never computed."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), domain=(t,))
        w = tj.param(jnp.asarray([0.5, -1.0, 2.0]))
        loss = (tj.tanh(x * w) ** 2).sum()
        (g,) = tj.grad(loss, [w])
        p.output("g", g)
    compiled = p.compile({t.bound: 4})
    assert compiled.stats[0].ops_after < compiled.stats[0].ops_before
    xs = np.ones((4, 3), np.float32)
    np.testing.assert_allclose(
        compiled(x=xs)["g"], tj.reference.run(p, {t.bound: 4}, {"x": xs})["g"], rtol=1e-6
    )


def test_the_default_pipeline_lifts_an_accumulator_out_of_any_loop() -> None:
    """rewrite lifts the running sum to a cumsum; vectorize makes the pick over t an array op."""
    program, bounds, inputs = next(c for c in CASES if c.name == "running_sum").build()
    compiled = program.compile(bounds)
    assert "for t" not in compiled.schedule
    assert _loops(compiled.jaxpr(**inputs).jaxpr) == []
    np.testing.assert_allclose(compiled(**inputs)["s"], np.cumsum(inputs["x"]), rtol=1e-5)


def _returns() -> tj.Program:
    with tj.Program() as p:
        b, t = p.dims("b t")
        T = t.bound
        r = tj.input("r", (), jnp.float32, domain=(b, t))
        g = tj.placeholder((), jnp.float32, domain=(b, t))
        g[b, T - 1] = r[b, T - 1]
        g[True] = r[b, t] + 0.99 * g[b, t + 1]
        p.output("g", g)
    return p


def test_passes_are_left_out_or_replaced_by_name() -> None:
    """The README's compile example: lifted to a scan by default; a reversed loop over t with
    b vectorised without the rewrite; loops over both without vectorisation too."""
    p = _returns()
    bounds = {"B": 4, "T": 50}
    ones = {"r": np.ones((4, 50), np.float32)}
    lifted = p.compile(bounds)
    assert "for" not in lifted.schedule
    looped = p.compile(bounds, pipeline=tj.Pipeline().without("rewrite"))
    assert "for t in reversed" in looped.schedule and "for b" not in looped.schedule
    both = p.compile(bounds, pipeline=tj.Pipeline().without("rewrite", "vectorize"))
    assert "for b" in both.schedule
    want = np.cumsum(0.99 ** np.arange(50))[::-1]
    for f in (lifted, looped, both):
        np.testing.assert_allclose(f(**ones)["g"], np.broadcast_to(want, (4, 50)), rtol=1e-5)
    with pytest.raises(ValueError, match="no pass named"):
        tj.Pipeline().without("vectorise")
    tiles = functools.partial(tj.tile_dynamic_ranges, block=3)
    replaced = tj.Pipeline().replacing("tile_dynamic_ranges", tiles)
    assert [s.__name__ if hasattr(s, "__name__") else s.func.__name__ for s in replaced.passes] == [
        s.__name__ for s in tj.Pipeline().passes
    ]
    assert replaced.passes[-1] is tiles
