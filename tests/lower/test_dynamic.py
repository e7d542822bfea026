"""Dynamic bounds: compile once for `T <= max`, pass the actual `T` at call time."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj


def _returns() -> tj.Program:
    with tj.Program() as p:
        b, t = p.dims("b t")
        T = t.bound
        r = tj.input("r", (), jnp.float32, domain=(b, t))
        g = tj.placeholder((), jnp.float32, domain=(b, t))
        g[b, T - 1] = r[b, T - 1]
        g[True] = r[b, t] + 0.5 * g[b, t + 1]
        p.output("g", g)
        p.output("first", g[b, 0])
    return p


def test_one_compilation_serves_every_length() -> None:
    program = _returns()
    compiled = program.compile(bounds={"B": 2, "T": tj.dynamic(max=16)})
    rng = np.random.default_rng(0)
    for steps in (1, 5, 16):
        rewards = rng.normal(size=(2, steps)).astype(np.float32)
        got = compiled(T=steps, r=rewards)  # inputs may come at their actual length
        want = tj.reference.run(program, bounds={"B": 2, "T": steps}, inputs={"r": rewards})
        assert got["g"].shape == (2, 16)  # padded to max
        assert int(got["lengths"]["T"]) == steps
        np.testing.assert_allclose(got["g"][:, :steps], want["g"], rtol=1e-5)
        np.testing.assert_allclose(got["first"], want["first"], rtol=1e-5)
    assert compiled._jitted._cache_size() == 1  # no recompilation per length


def test_dynamic_bound_errors() -> None:
    compiled = _returns().compile(bounds={"B": 2, "T": tj.dynamic(max=8)})
    rewards = np.zeros((2, 8), np.float32)
    with pytest.raises(tj.MissingBoundError, match=r"dynamic bound T \(at most 8\) was not given"):
        compiled(r=rewards)
    with pytest.raises(tj.MissingBoundError, match=r"T=9 is outside 1\.\.8.*tj\.dynamic\(max=9\)"):
        compiled(T=9, r=rewards)
    with pytest.raises(tj.MissingBoundError, match=r"needs a positive int"):
        tj.dynamic(max=0)


def test_a_range_over_a_dynamic_bound_reads_only_the_actual_length() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        p.output("mean", x[0 : t.bound].mean())
        p.output("centred", x[t] - x[0 : t.bound].mean())
    compiled = p.compile(bounds={"T": tj.dynamic(max=8)})
    data = np.arange(1, 6, dtype=np.float32)  # the padding (zeros) must not count
    got = compiled(T=5, x=data)
    want = tj.reference.run(p, bounds={"T": 5}, inputs={"x": data})
    np.testing.assert_allclose(got["mean"], want["mean"])
    np.testing.assert_allclose(np.asarray(got["centred"])[:5], want["centred"])
