"""Dynamic bounds: compile once for `T <= max`, pass the actual `T` at call time."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

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
    with pytest.raises(tj.MissingBoundError, match=r"min is above max"):
        tj.dynamic(max=4, min=5)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (5.9, r"T must be an integer, got 5\.9"),
        (True, r"T must be an integer, got True"),
        (np.float32(3), r"T must be an integer"),
        (0, r"T=0 is outside 1\.\.8.*a bound is at least 1"),
        (-2, r"T=-2 is outside 1\.\.8"),
    ],
)
def test_a_dynamic_bound_is_validated_like_a_static_one(value: object, message: str) -> None:
    compiled = _returns().compile(bounds={"B": 2, "T": tj.dynamic(max=8)})
    with pytest.raises(tj.MissingBoundError, match=message):
        compiled(T=value, r=np.zeros((2, 8), np.float32))


def test_an_integer_of_any_kind_is_a_bound() -> None:
    program = _returns()
    compiled = program.compile(bounds={"B": 2, "T": tj.dynamic(max=8)})
    rewards = np.random.default_rng(3).normal(size=(2, 5)).astype(np.float32)
    want = tj.reference.run(program, bounds={"B": 2, "T": 5}, inputs={"r": rewards})
    for value in (np.int64(5), jnp.int32(5), np.array(5)):
        np.testing.assert_allclose(compiled(T=value, r=rewards)["first"], want["first"], rtol=1e-5)


@pytest.mark.parametrize("rows", [3, 7, 9])
def test_inputs_over_a_dynamic_dim_come_with_t_rows_or_max(rows: int) -> None:
    """Fewer rows than T would read padding as data: the interpreter refuses, so must we."""
    program = _returns()
    compiled = program.compile(bounds={"B": 2, "T": tj.dynamic(max=8)})
    rewards = np.ones((2, rows), np.float32)
    with pytest.raises(
        tj.InputError,
        match=rf"input 'r' .* has shape \(2, {rows}\): {rows} rows along `t` \(axis 1\), "
        r"expected 5 \(T\) or 8 \(padded to max\)",
    ):
        compiled(T=5, r=rewards)
    with pytest.raises(tj.InputError):
        tj.reference.run(program, bounds={"B": 2, "T": 5}, inputs={"r": rewards})


def test_a_wrong_shape_is_quoted_as_passed() -> None:
    compiled = _returns().compile(bounds={"B": 2, "T": tj.dynamic(max=8)})
    with pytest.raises(tj.InputError, match=r"has shape \(3, 5\), expected \(2, 8\)"):
        compiled(T=5, r=np.ones((3, 5), np.float32))


def test_a_traced_bound_is_clamped_and_reported() -> None:
    """Under `jax.jit` the bound is a tracer: the program runs the clamped value, `lengths`
    says so, and `checkify` turns the clamp into an error."""
    program = _returns()
    compiled = program.compile(bounds={"B": 2, "T": tj.dynamic(max=8)})
    run = jax.jit(lambda T, r: compiled(T=T, r=r))
    rewards = np.random.default_rng(4).normal(size=(2, 8)).astype(np.float32)
    for asked, ran in ((20, 8), (-3, 1), (0, 1), (6, 6)):
        out = run(asked, rewards)
        assert int(out["lengths"]["T"]) == ran
        want = tj.reference.run(program, bounds={"B": 2, "T": ran}, inputs={"r": rewards[:, :ran]})
        np.testing.assert_allclose(out["first"], want["first"], rtol=1e-5)
        error, _ = checkify.checkify(run)(asked, rewards)
        if asked == ran:
            assert error.get() is None
        else:
            assert f"T={asked} is outside 1..8" in error.get()
            assert f"it ran as {ran}" in error.get()
    short = run(7, rewards[:, :5])  # an input with fewer rows bounds what can run
    assert int(short["lengths"]["T"]) == 5
    with pytest.raises(tj.MissingBoundError, match="must be an integer scalar"):
        run(5.0, rewards)


def test_reverse_mode_through_a_dynamic_bound() -> None:
    """The loops over a dynamic bound run as static-length masked loops: `jax.grad` works and
    equals the gradient of the program compiled for that length."""
    program = _returns()
    dynamic = program.compile(bounds={"B": 2, "T": tj.dynamic(max=8)})
    rewards = np.random.default_rng(5).normal(size=(2, 8)).astype(np.float32)
    for steps in (1, 5, 8):
        static = program.compile(bounds={"B": 2, "T": steps})
        got = jax.grad(lambda r, n=steps: dynamic(T=n, r=r)["first"].sum())(rewards)
        want = jax.grad(lambda r, f=static: f(r=r)["first"].sum())(rewards[:, :steps])
        np.testing.assert_allclose(got[:, :steps], want, rtol=1e-5)
        np.testing.assert_array_equal(got[:, steps:], 0.0)


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


def test_an_input_padded_to_max_is_still_checked_against_its_dtype() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.int32, domain=(t,))
        p.output("o", x * 2)
    compiled = p.compile(bounds={"T": tj.dynamic(max=8)})
    np.testing.assert_array_equal(compiled(T=3, x=np.array([1, 2, 3]))["o"][:3], [2, 4, 6])
    with pytest.raises(tj.InputError, match=r"holds 8589934592, outside the range of its"):
        compiled(T=3, x=np.array([1, 2, 2**33]))
