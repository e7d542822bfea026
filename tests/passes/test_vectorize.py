"""Vectorisation: dims without a dependence along them become array axes; values unchanged."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax._passes.vectorize import vectorize
from tests.corpus import CASES, Case
from tests.lower.test_compile import _loops as loops_in

LOOPED = tj.Pipeline(passes=tuple(p for p in tj.Pipeline().passes if p is not vectorize))


def _loops(jaxpr: Any) -> int:
    """How many loops (scan or while) the jaxpr runs, nested ones included."""
    return len(loops_in(jaxpr))


def _close(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert set(got) >= set(want)
    for name, value in want.items():
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(value), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_vectorize_keeps_the_outputs_on_the_corpus(case: Case) -> None:
    program, bounds, inputs = case.build()
    ir = program.to_ir()
    before = ir.ops
    out = vectorize(ir)
    assert ir.ops == before  # the input program is unchanged
    assert vectorize(out) == out  # idempotent
    want = tj.reference.run(ir, bounds, inputs)
    _close(tj.reference.run(out, bounds, inputs), want)
    _close(program.compile(bounds)(**inputs), want)


def _batched_rnn(b_dependence: bool = False) -> tuple[tj.Program, dict, dict, np.ndarray]:
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(4, 4)) / 2).astype(np.float32)
    xs = rng.normal(size=(6, 5, 4)).astype(np.float32)
    with tj.Program() as p:
        b, t = p.dims("b t")
        x = tj.input("x", (4,), jnp.float32, domain=(b, t))
        h = tj.placeholder((4,), jnp.float32, domain=(b, t))
        h[b, 0] = tj.tanh(x[b, 0])
        if b_dependence:  # each env starts from the previous env's state: a loop over b
            h[b, t + 1] = tj.tanh(h[b, t] @ w + x[b, t + 1] + h[tj.max(b - 1, 0), t])
        else:
            h[b, t + 1] = tj.tanh(h[b, t] @ w + x[b, t + 1])
        p.output("h", h)
        p.output("last", h[b, t.bound - 1])
        p.output("across", h[0 : b.bound, t.bound - 1])
        p.output("first_env", h[0, t])
    return p, {"B": 6, "T": 5}, {"x": xs}, w


def test_independent_batch_dim_has_no_loop() -> None:
    p, bounds, inputs, w = _batched_rnn()
    compiled = p.compile(bounds)
    assert "for b" not in compiled.schedule and "for t" in compiled.schedule
    assert _loops(compiled.jaxpr(**inputs).jaxpr) == 1  # only the recurrence over t
    looped = p.compile(bounds, pipeline=LOOPED)
    assert "for b" in looped.schedule
    xs = inputs["x"]
    h = np.zeros_like(xs)
    h[:, 0] = np.tanh(xs[:, 0])
    for k in range(1, xs.shape[1]):
        h[:, k] = np.tanh(h[:, k - 1] @ w + xs[:, k])
    want = {"h": h, "last": h[:, -1], "across": h[:, -1], "first_env": h[0]}
    _close(compiled(**inputs), want)
    _close(looped(**inputs), want)
    _close(tj.reference.run(vectorize(p.to_ir()), bounds, inputs), want)


def test_a_dependence_along_the_dim_keeps_it_a_loop() -> None:
    xs = np.random.default_rng(4).normal(size=(6, 3)).astype(np.float32)
    with tj.Program() as p:
        (b,) = p.dims("b")
        x = tj.input("x", (3,), jnp.float32, domain=(b,))
        s = tj.placeholder((3,), jnp.float32, domain=(b,))
        s[0] = x[0]
        s[b + 1] = tj.tanh(s[b]) + x[b + 1]  # each env from the previous one: a loop over b
        p.output("s", s)
    ir = vectorize(p.to_ir())
    assert all(op.domain == (b,) for op in ir.ops if op.kind != "input" and op.name != "const")
    compiled = p.compile({"B": 6})
    assert "for b" in compiled.schedule
    _close(compiled(x=xs), tj.reference.run(p, {"B": 6}, {"x": xs}))


def test_a_dependence_along_the_dim_carried_by_another_dim() -> None:
    """``h[b-1, t]`` read inside the step of ``t``: that op keeps ``b`` a loop, but the cycle
    through ``h`` runs through ``t - 1``, so ``h`` itself computes all ``b`` at once."""
    p, bounds, inputs, _ = _batched_rnn(b_dependence=True)
    ir = vectorize(p.to_ir())
    (h,) = [op for op in ir.ops if op.name == "h"]
    picks = [o for o in ir.ops if o.name == "pick h" and any(e.src == h.id for e in o.inputs)]
    assert [d.name for d in h.domain] == ["t"] and picks
    assert any("b" in [d.name for d in o.domain] for o in picks)  # h[max(b-1, 0), t]: a loop
    _close(p.compile(bounds)(**inputs), tj.reference.run(p, bounds, inputs))


def test_ops_read_at_other_points_go_through_picks() -> None:
    """Readers outside the group (a sink, a shifted read, a merge) take one point of the axis."""
    xs = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    seen: list[tuple[int, float]] = []
    with tj.Program() as p:
        (b,) = p.dims("b")
        x = tj.input("x", (3,), jnp.float32, domain=(b,))
        y = tj.sin(x) * 2.0  # vectorised over b
        z = tj.placeholder((3,), jnp.float32, domain=(b,))
        z[0] = y[0]
        z[b + 1] = z[b] + y[b + 1]  # a recurrence along b: stays a loop, picks y's rows
        tj.sink(y.sum(), lambda v, at: seen.append((at["b"], float(v))))
        p.output("z", z)
        p.output("y", y)
    ir = vectorize(p.to_ir())
    assert any(op.name.startswith("pick") for op in ir.ops)
    (sin,) = [op for op in ir.ops if op.name == "sin"]
    assert sin.domain == ()
    ys = np.sin(xs) * 2
    want = {"z": np.cumsum(ys, axis=0), "y": ys}
    _close(p.compile({"B": 4})(**inputs_of(xs)), want)
    assert sorted(seen) == [(k, pytest.approx(float(ys[k].sum()), rel=1e-5)) for k in range(4)]


def inputs_of(xs: np.ndarray) -> dict[str, np.ndarray]:
    return {"x": xs}


def test_random_keys_folded_per_point_are_vectorised() -> None:
    with tj.Program() as p:
        b, t = p.dims("b t")
        key = tj.random.key_at(jax.random.PRNGKey(3), (b, t))
        noise = tj.random.normal(key, (2,))
        walk = tj.placeholder((2,), jnp.float32, domain=(b, t))
        walk[b, 0] = noise[b, 0]
        walk[b, t + 1] = walk[b, t] + noise[b, t + 1]
        p.output("walk", walk)
    bounds = {"B": 3, "T": 4}
    compiled = p.compile(bounds)
    assert "for b" not in compiled.schedule
    _close(compiled(), tj.reference.run(p, bounds, {}))


def test_a_dynamic_bound_is_not_vectorised() -> None:
    p, _, inputs, _ = _batched_rnn()
    compiled = p.compile({"B": tj.dynamic(max=6), "T": 5})
    assert "for b" in compiled.schedule
    got = compiled(x=inputs["x"][:4], B=4)
    _close(
        {k: np.asarray(v)[:4] for k, v in got.items() if k == "h"},
        {"h": tj.reference.run(p, {"B": 4, "T": 5}, {"x": inputs["x"][:4]})["h"]},
    )


def test_gradients_through_a_vectorised_recurrence() -> None:
    rng = np.random.default_rng(2)
    xs = rng.normal(size=(5, 6, 3)).astype(np.float32)
    w0 = (rng.normal(size=(3, 3)) / 2).astype(np.float32)
    with tj.Program() as p:
        b, t = p.dims("b t")
        x = tj.input("x", (3,), jnp.float32, domain=(b, t))
        w = tj.param(jnp.asarray(w0))
        h = tj.placeholder((3,), jnp.float32, domain=(b, t))
        h[b, 0] = tj.tanh(x[b, 0] @ w)
        h[b, t + 1] = tj.tanh(h[b, t] @ w + x[b, t + 1])
        (g,) = tj.grad((h**2).sum(), [w])
        p.output("g", g)

    def loss(w: jax.Array) -> jax.Array:
        def step(h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
            h = jnp.tanh(h @ w + x)
            return h, h

        h0 = jnp.tanh(xs[:, 0] @ w)
        _, hs = jax.lax.scan(step, h0, jnp.swapaxes(xs[:, 1:], 0, 1))
        return (h0**2).sum() + (hs**2).sum()

    compiled = p.compile({"B": 5, "T": 6})
    assert "for b" not in compiled.schedule
    _close(compiled(x=xs), {"g": jax.grad(loss)(jnp.asarray(w0))})


def _training_with_metrics(rows: int) -> tj.Program:
    """A parameter ``w`` stepped over iterations ``i``; each iteration computes ``rows`` values
    from it and the mean of their squares, a per-iteration metric (an output over ``i``), and
    the rows themselves of the last iteration."""
    with tj.Program() as p:
        i, r = p.dims("i r")
        x = tj.input("x", (), jnp.float32, domain=(r,))
        w = tj.placeholder((), jnp.float32, domain=(i,), name="w")
        row = tj.tanh(w * x)  # over (i, r): made in each iteration's loop
        step = row[i, 0 : r.bound].mean()
        w[0] = tj.const(0.5)
        w[i + 1] = w[i] - 0.1 * step[i]
        square = row * row  # a metric's rows: read by the metric alone
        metric = square[i, 0 : r.bound].mean()
        p.output("metric", metric)
        p.output("last", row[i.bound - 1, 0 : r.bound])
    return p


def test_a_per_iteration_metric_reads_each_iteration_in_its_loop() -> None:
    """The metric reduces rows made in the loop over ``i``: vectorised over ``i`` it would
    need every iteration's rows at once (a buffer growing with the iterations); it runs in
    the loop instead, and nothing of size ``I x R`` is stored. Values: the reference's."""
    p = _training_with_metrics(rows=64)
    bounds = {"I": 40, "R": 64}
    xs = np.random.default_rng(2).normal(size=64).astype(np.float32)
    compiled = p.compile(bounds)
    assert all(v.shape[:2] != (40, 64) for v in compiled.memory().values)
    want = tj.reference.run(p, bounds, {"x": xs})
    _close(compiled(x=xs), want)
    w, metrics = 0.5, []
    for _ in range(40):
        row = np.tanh(w * xs)
        metrics.append((row * row).mean())
        w = w - 0.1 * row.mean()
    np.testing.assert_allclose(compiled(x=xs)["metric"], metrics, rtol=1e-5, atol=1e-6)
