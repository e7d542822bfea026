"""``p.stop_when``: a data-dependent end to the loop over a dim, compiled and interpreted.

The oracle is a NumPy loop that runs until the condition holds; the compiled program and the
reference interpreter must both give its values, zeros past the stop, and its length.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj


def _growth(threshold: float) -> tj.Program:
    """``x[t+1] = 1.5 x[t] + a[t]``, stopping once ``x`` passes ``threshold``."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        a = tj.input("a", (), jnp.float32, domain=(t,))
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[0] = tj.const(1.0)
        x[t + 1] = x[t] * 1.5 + a[t]
        p.output("x", x)
        p.output("twice", x * 2.0)  # an op over t that vectorises: masked past the stop too
        p.stop_when(x > threshold)
    return p


def _numpy_growth(a: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    x, out = 1.0, np.zeros(len(a), np.float32)
    for i in range(len(a)):
        out[i] = x
        if x > threshold:
            return out, i + 1
        x = np.float32(x * 1.5 + a[i])
    return out, len(a)


@pytest.mark.parametrize("threshold", [0.5, 10.0, 1e9])  # at once, midway, never
def test_stop_matches_numpy_compiled_and_interpreted(threshold: float) -> None:
    a = np.random.default_rng(0).uniform(0, 1, 12).astype(np.float32)
    want, length = _numpy_growth(a, threshold)
    p = _growth(threshold)
    for out in (p.compile({"T": 12})(a=a), tj.reference.run(p, {"T": 12}, {"a": a})):
        np.testing.assert_allclose(out["x"], want, rtol=1e-6)
        np.testing.assert_allclose(out["twice"], 2 * want, rtol=1e-6)
        assert int(out["lengths"]["T"]) == length
        assert "@stop" not in out


def test_stop_runs_a_while_loop_that_exits_early() -> None:
    p = _growth(10.0)
    compiled = p.compile({"T": 1000})
    text = str(compiled.jaxpr(a=np.zeros(1000, np.float32)))
    assert "while" in text
    calls: list[int] = []
    with tj.Program() as q:
        (t,) = q.dims("t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[0] = tj.const(1.0)
        x[t + 1] = x[t] * 1.5
        tj.sink(x, lambda v, at: calls.append(at["t"]))
        q.output("x", x)
        q.stop_when(x > 10.0)
    out = q.compile({"T": 1000})()
    import jax

    jax.effects_barrier()
    assert int(out["lengths"]["T"]) == 7 and calls == list(range(7))


def test_stop_with_a_nested_loop_and_a_batch() -> None:
    """Rows stop independently; the loop over t ends when every row is done."""
    with tj.Program() as p:
        t, l = p.dims("t l")
        step = tj.input("step", (3,), jnp.float32, domain=(l,))
        h = tj.placeholder((3,), jnp.float32, domain=(t, l))
        y = h + step
        h[0, 0] = tj.zeros((3,), jnp.float32)
        h[t, l + 1] = y[t, l]
        h[t + 1, 0] = y[t, -1]
        total = y[t, -1]
        p.output("total", total)
        p.stop_when(tj.all(total > 5.0))
    step = np.array([[0.5, 1.0, 0.25], [0.5, 1.0, 0.25]], np.float32)  # L = 2: + (1, 2, 0.5)
    out = p.compile({"T": 20, "L": 2})(step=step)
    rows = np.arange(1, 21)[:, None] * np.array([1.0, 2.0, 0.5], np.float32)
    length = int(np.argmax((rows > 5).all(axis=1))) + 1  # row 3 passes 5 at t = 10
    assert int(out["lengths"]["T"]) == length == 11
    np.testing.assert_allclose(out["total"][:length], rows[:length])
    np.testing.assert_array_equal(out["total"][length:], 0.0)
    ref = tj.reference.run(p, {"T": 20, "L": 2}, {"step": step})
    np.testing.assert_allclose(ref["total"], out["total"])


def test_stop_needs_a_boolean_scalar_over_one_dim() -> None:
    with tj.Program() as p:
        b, t = p.dims("b t")
        x = tj.input("x", (2,), jnp.float32, domain=(b, t))
        with pytest.raises(tj.TempoError, match="boolean scalar over one dim"):
            p.stop_when(x > 0)
        with pytest.raises(tj.TempoError, match="boolean scalar over one dim"):
            p.stop_when(tj.all(x > 0))  # over (b, t)
        p.stop_when(tj.all(x[0] > 0))
        with pytest.raises(tj.TempoError, match="stops once only"):
            p.stop_when(tj.all(x[0] > 0))
        with pytest.raises(tj.TempoError, match="reserved"):
            p.output("@stop", x)


def test_stop_from_an_input_alone() -> None:
    """A condition no recurrence carries still gets a loop of its own (it is not vectorised),
    which ends at the stop; values computed outside it are masked past the stop."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        a = tj.input("a", (), jnp.float32, domain=(t,))
        p.output("a2", a * 2.0)
        p.stop_when(a > 3.0)
    a = np.array([1, 2, 5, 1, 7], np.float32)
    out = p.compile({"T": 5})(a=a)
    assert int(out["lengths"]["T"]) == 3
    np.testing.assert_allclose(out["a2"], [2, 4, 10, 0, 0])
    np.testing.assert_allclose(tj.reference.run(p, {"T": 5}, {"a": a})["a2"], out["a2"])
