"""Index expressions evaluated once per trace, and merges lowered to as few selects as their
branches need: one expression, one computation, never a traced value reused outside the
trace it was made in; the branches' values checked against the reference interpreter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax._ir.errors import IndexExprError
from tempo_jax._ir.expr import Symbol
from tempo_jax._lower.evaluate import Evaluator
from tempo_jax._schedule.domains import covering_merges
from tempo_jax._schedule.isl_convert import isl_context


def _count(jaxpr: jax.extend.core.Jaxpr, name: str) -> int:
    """Equations of primitive ``name`` in ``jaxpr`` and every jaxpr inside it."""
    found = 0
    for eqn in jaxpr.eqns:
        found += eqn.primitive.name == name
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _count(inner, name)
    return found


def test_an_expression_is_computed_once_per_trace_and_values() -> None:
    t, u = Symbol("t"), Symbol("u")
    evaluate = Evaluator()
    seen: list[object] = []

    def fn(a: jax.Array, b: jax.Array) -> jax.Array:
        env = {t: a, u: b}
        first = evaluate(t + 1, env)
        assert evaluate(t + 1, {t: a, u: jnp.int32(7)}) is first  # u is not read: same value
        assert evaluate(t + 1, {t: b}) is not first  # another value of t: computed anew
        assert evaluate.index(t + 1, env) is evaluate.index(t + 1, env)

        def inside(x: jax.Array) -> jax.Array:
            value = evaluate(t * 2, env)  # made in the branch's trace
            seen.append(value)
            return x + value

        out = jax.lax.cond(a > 0, inside, lambda x: x, a)
        after = evaluate(t * 2, env)  # the branch's value would leak out of its trace
        assert after is not seen[0]
        return out + after + first

    assert int(jax.jit(fn)(jnp.int32(3), jnp.int32(4))) == 3 + 6 + 6 + 4
    assert evaluate(t + 1, {t: 2}) == 3  # Python ints stay Python ints
    with pytest.raises(IndexExprError, match="no value for symbol `u`"):
        evaluate(t + u, {t: 1})


def _stepped(every_step: bool = True) -> tj.Program:
    """A parameter ``w`` stepped over ``(i, m)`` by an optimiser-like update read at the step
    before (the next iteration's first step reads the last of this one); outputs the last
    update and, with ``every_step``, ``w`` at every step."""
    with tj.Program() as p:
        i, m = p.dims("i m")
        x = tj.input("x", (3,), jnp.float32, domain=(m,))
        w = tj.placeholder((3,), jnp.float32, domain=(i, m), name="w")
        new = w - 0.1 * tj.tanh(w * x[m])
        w[0, 0] = tj.ones(3)
        w[i + 1, 0] = new[i, m.bound - 1]
        w[i, m + 1] = new[i, m]
        p.output("w", new[i.bound - 1, m.bound - 1])
        if every_step:
            p.output("steps", w[0 : i.bound, 0 : m.bound])
    return p


def _holes() -> tj.Program:
    """A merge over ``(i, m)`` no branch of which defines ``m == 2`` (never read)."""
    with tj.Program() as p:
        i, m = p.dims("i m")
        x = tj.input("x", (3,), jnp.float32, domain=(m,))
        w = tj.placeholder((3,), jnp.float32, domain=(i, m), name="w")
        w[m < 2] = x[m] * 2.0
        w[m > 2] = tj.tanh(x[m]) + 1.0
        z = w * 1.5
        p.output("w", z[0 : i.bound, 0:2])
        p.output("steps", z[0 : i.bound, 3 : m.bound])
    return p


@pytest.mark.parametrize("holes", [False, True], ids=["covered", "holes"])
def test_merges_match_the_reference(holes: bool) -> None:
    p = _holes() if holes else _stepped()
    bounds = {"I": 3, "M": 5}
    xs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    compiled = p.compile(bounds)
    want = tj.reference.run(p, bounds, {"x": xs})
    got = compiled(x=xs)
    for name in ("w", "steps"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)
    (merge,) = [op for op in compiled.program.ops if op.name == "w"]
    assert (merge.id in compiled.covering) is not holes


def test_a_stepped_value_is_one_select_per_step() -> None:
    """The merge of ``w`` takes the start at ``(0, 0)`` and the update's one value (kept as
    its latest point) everywhere else: one select, the two later branches tested as one and
    the last one not at all (the branches cover the domain)."""
    p = _stepped(every_step=False)
    compiled = p.compile({"I": 3, "M": 4})
    xs = np.ones((4, 3), np.float32)
    assert _count(compiled.jaxpr(x=xs).jaxpr, "select_n") == 1


def test_covering_needs_every_point() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        full = tj.placeholder((), jnp.float32, domain=(t,), name="full")
        full[t.bound - 1] = x[t]
        full[True] = x[t] * 2.0
        part = tj.placeholder((), jnp.float32, domain=(t,), name="part")
        part[t < 2] = x[t]
        part[t > 2] = x[t] * 2.0
        p.output("full", full[0 : t.bound])
        p.output("part", part[0 : t.bound])
    ir = p.to_ir()
    names = {op.id: op.name for op in ir.ops}
    assert {names[k] for k in covering_merges(ir, isl_context())} == {"full"}
