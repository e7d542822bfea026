"""Growing ranges end to end: compiled programs against the reference and a NumPy oracle.

A read such as ``k[0:t+1]``, ``x[max(0, t-3):t+1]`` or ``r[t:T]`` has a size that varies over
the domain; the compiler pads it to its largest size and masks the padding out of the
payload. Each program here is compiled and compared with ``tj.reference.run`` and, where
cheap, with a hand-written NumPy loop.
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj

STEPS = 33


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _assert_close(got: Any, want: Any) -> None:
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def _check(program: tj.Program, bounds: dict[str, int], inputs: dict[str, Any]) -> dict[str, Any]:
    """Compiled outputs equal the reference's; returns them for an oracle to check."""
    got = program.compile(bounds=bounds)(**inputs)
    want = tj.reference.run(program, bounds=bounds, inputs=inputs)
    assert set(got) == set(want)
    for name in want:
        assert np.shape(got[name]) == np.shape(want[name])
        _assert_close(got[name], want[name])
    return got


# -- causal attention over 0:t+1 with a computed key ---------------------------------------------


def _attention() -> tj.Program:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (4,), jnp.float32, domain=(t,))
        w = tj.input("W", (4, 4), jnp.float32)
        v = tj.input("v", (3,), jnp.float32, domain=(t,))
        k = tj.tanh(x[t] @ w)  # computed in the program, stored and read as a growing prefix
        scores = x[t] @ k[0 : t + 1].T / 2.0
        p.output("o", tj.softmax(scores, axis=-1) @ v[0 : t + 1])
    return p


def _attention_inputs() -> dict[str, np.ndarray]:
    rng = _rng(0)
    return {
        "x": rng.normal(size=(STEPS, 4)).astype(np.float32),
        "W": rng.normal(size=(4, 4)).astype(np.float32),
        "v": rng.normal(size=(STEPS, 3)).astype(np.float32),
    }


def _attention_oracle(inp: dict[str, np.ndarray]) -> np.ndarray:
    x, w, v = inp["x"], inp["W"], inp["v"]
    k = np.tanh(x @ w)
    outs = []
    for n in range(len(x)):
        s = k[: n + 1] @ x[n] / 2.0
        e = np.exp(s - s.max())
        outs.append((e / e.sum()) @ v[: n + 1])
    return np.stack(outs)


@functools.cache
def _attention_reference() -> np.ndarray:
    """The reference interpreter's attention output (slow: shared by two tests)."""
    out = tj.reference.run(_attention(), bounds={"T": STEPS}, inputs=_attention_inputs())
    return np.asarray(out["o"])


def test_causal_attention_over_a_computed_key() -> None:
    inputs = _attention_inputs()
    got = _attention().compile(bounds={"T": STEPS})(**inputs)
    assert got["o"].shape == (STEPS, 3)
    _assert_close(got["o"], _attention_reference())
    _assert_close(got["o"], _attention_oracle(inputs))


def test_causal_attention_with_a_dynamic_bound() -> None:
    inputs = _attention_inputs()
    compiled = _attention().compile(bounds={"T": tj.dynamic(max=40)})
    got = compiled(T=STEPS, **inputs)
    assert int(got["lengths"]["T"]) == STEPS
    assert got["o"].shape == (40, 3)  # padded to the max
    _assert_close(np.asarray(got["o"])[:STEPS], _attention_reference())
    _assert_close(np.asarray(got["o"])[:STEPS], _attention_oracle(inputs))


# -- windows and suffixes of computed values -----------------------------------------------------

WINDOW = 4


def test_sliding_window_mean_of_a_computed_value() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (2,), jnp.float32, domain=(t,))
        y = tj.sin(x[t]) * 3.0 + 1.0
        p.output("w", y[tj.max(0, t - WINDOW + 1) : t + 1].mean(axis=0))
    xs = _rng(1).normal(size=(11, 2)).astype(np.float32)
    got = _check(p, {"T": 11}, {"x": xs})
    y = np.sin(xs) * 3.0 + 1.0
    _assert_close(got["w"], [y[max(0, n - WINDOW + 1) : n + 1].mean(0) for n in range(11)])


def test_suffix_sum_of_a_computed_value() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        r = x * 2.0
        p.output("g", r[t : t.bound].sum())
    xs = _rng(2).normal(size=9).astype(np.float32)
    got = _check(p, {"T": 9}, {"x": xs})
    _assert_close(got["g"], [(2.0 * xs[n:]).sum() for n in range(9)])


def test_prefix_max_over_a_two_dim_domain() -> None:
    with tj.Program() as p:
        b, t = p.dims("b t")
        x = tj.input("x", (2,), jnp.float32, domain=(b, t))
        p.output("m", x[b, 0 : t + 1].max(axis=0))
    xs = _rng(3).normal(size=(3, 7, 2)).astype(np.float32)
    got = _check(p, {"B": 3, "T": 7}, {"x": xs})
    assert got["m"].shape == (3, 7, 2)
    _assert_close(got["m"], np.maximum.accumulate(xs, axis=1))


def test_prefix_mean_of_a_recurrence() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        h = tj.placeholder((), jnp.float32, domain=(t,))
        h[0] = 0.0
        h[t + 1] = 0.5 * h[t] + x[t]
        p.output("m", h[0 : t + 1].mean())
    xs = _rng(4).normal(size=10).astype(np.float32)
    got = _check(p, {"T": 10}, {"x": xs})
    h = np.zeros(10, np.float32)
    for n in range(9):
        h[n + 1] = 0.5 * h[n] + xs[n]
    _assert_close(got["m"], [h[: n + 1].mean() for n in range(10)])


# -- what the compiler refuses -------------------------------------------------------------------


def test_an_output_of_growing_shape_is_an_error() -> None:
    """Raised by the IR verifier (an `OutputError`) before the compiler's own check."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        p.output("prefix", x[0 : t + 1] * 2.0)
    with pytest.raises(tj.OutputError, match=r"output 'prefix' .*varies with t"):
        p.compile(bounds={"T": 5})


def test_flipping_a_growing_range_is_unsupported() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        p.output("last", tj.flip(x[0 : t + 1], 0)[t, 0])  # x[t], the long way round
    xs = np.arange(5, dtype=np.float32)
    with pytest.raises(tj.UnsupportedError, match=r"`flip` at .*the JAX primitive `rev`"):
        p.compile(bounds={"T": 5})(x=xs)  # raised when the payload is traced, at the call
    want = tj.reference.run(p, bounds={"T": 5}, inputs={"x": xs})  # the way out it names
    _assert_close(want["last"], xs)


# -- static axes and size-shaped values ---------------------------------------------------------


def test_a_column_of_a_growing_range() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (2,), jnp.float32, domain=(t,))
        p.output("s", x[0 : t + 1, 1].sum())
    xs = _rng(5).normal(size=(6, 2)).astype(np.float32)
    got = _check(p, {"T": 6}, {"x": xs})
    _assert_close(got["s"], np.cumsum(xs[:, 1]))


def test_a_payload_counting_rows_with_ones_like() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        mean = tj.lift(lambda w: w.sum() / jnp.ones_like(w).sum())
        p.output("m", mean(x[0 : t + 1]))
    xs = _rng(6).normal(size=6).astype(np.float32)
    got = _check(p, {"T": 6}, {"x": xs})
    _assert_close(got["m"], np.cumsum(xs) / np.arange(1, 7))
