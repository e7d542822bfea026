"""Every user error raises a TempoError subclass whose message names the tensor, the index,
the user's source line and how to fix it."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj

SRC = r"test_errors\.py:\d+"


def test_read_of_undefined_point() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[0] = 1.0
        x[t + 2] = x[t] * 2.0
        p.output("x", x[0 : t.bound])
    with pytest.raises(
        tj.UndefinedPointError,
        match=rf"`x` is read as `x\[0:T\]` at {SRC}: `p.output\(\"x\", x\[0 : t.bound\]\)`, but "
        r"no branch defines it at t=1 \(its branches cover t == 0 \| t >= 2\)\. Add a branch",
    ):
        tj.reference.run(p, bounds={t.bound: 5})


def test_placeholder_without_branches() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        h = tj.placeholder((), jnp.float32, domain=(t,))
        p.output("h", h)
    with pytest.raises(tj.UndefinedPointError, match=r"`h` .* \(it has no branches\)"):
        tj.reference.run(p, bounds={t.bound: 2})


def test_read_past_the_end() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        r = tj.input("r", (), jnp.float32, domain=(t,))
        nxt = r[t + 1] * 2.0
        p.output("y", nxt)
    with pytest.raises(
        tj.OutOfBoundsError,
        match=rf"`r\[t \+ 1\]` at {SRC}: `nxt = r\[t \+ 1\] \* 2.0`, read by multiply, reads past "
        r"the end of the domain 0 <= t < T: `t \+ 1` is 4 at t=3 \(T=4\)\. Add a condition",
    ):
        tj.reference.run(p, bounds={"T": 4}, inputs={"r": np.zeros(4, np.float32)})


def test_read_before_the_start() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[True] = x[t - 1] + 1.0
        p.output("x", x)
    with pytest.raises(
        tj.OutOfBoundsError,
        match=rf"`x\[t - 1\]` at {SRC}: .* reads before the start .* `t - 1` is -1 at t=0 .*"
        r"Define the first points separately \(e\.g\. `x\[0\] = \.\.\.`",
    ):
        tj.reference.run(p, bounds={"T": 3})


def test_point_depending_on_itself() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[True] = x[t] + 1.0
        p.output("x", x)
    with pytest.raises(
        tj.DependenceCycleError,
        match=rf"`x` depends on itself: `x`\[t=0\] at {SRC}: .* -> `add`\[t=0\] at {SRC}: "
        r"`x\[True\] = x\[t\] \+ 1.0` -> `x`\[t=0\].*read an earlier one",
    ):
        tj.reference.run(p, bounds={"T": 3})


def test_cycle_through_two_tensors() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        a = tj.placeholder((), jnp.float32, domain=(t,))
        b = tj.placeholder((), jnp.float32, domain=(t,))
        a[True] = b * 2.0
        b[True] = a[t] + 1.0
        p.output("a", a)
    with pytest.raises(tj.DependenceCycleError, match=r"`a` depends on itself: .*`b`\[t=0\]"):
        tj.reference.run(p, bounds={"T": 2})


def _self_cycle() -> tj.Program:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[True] = x[t] + 1.0
        p.output("x", x)
    return p


def _two_tensor_cycle() -> tj.Program:
    with tj.Program() as p:
        (t,) = p.dims("t")
        a = tj.placeholder((), jnp.float32, domain=(t,))
        b = tj.placeholder((), jnp.float32, domain=(t,))
        a[True] = b * 2.0
        b[True] = a[t] + 1.0
        p.output("a", a)
    return p


FIX = r"A point can only read other points: read an earlier one \(e\.g\. `x\[t - 1\]`\)"


@pytest.mark.parametrize(
    ("build", "name", "steps"),
    [
        (
            _self_cycle,
            "x",
            rf"`x` at {SRC}: .* -> `add` at {SRC}: `x\[True\] = x\[t\] \+ 1.0` -> `x`",
        ),
        (
            _two_tensor_cycle,
            "a",
            rf"`a` at {SRC}: .* -> `multiply` at {SRC}: `a\[True\] = b \* 2.0` -> `b` at {SRC}: "
            rf".* -> `add` at {SRC}: `b\[True\] = a\[t\] \+ 1.0` -> `a`",
        ),
    ],
)
def test_cycle_is_one_error_compiled_and_interpreted(build: Any, name: str, steps: str) -> None:
    """The compiler's ScheduleInfeasibleError is a DependenceCycleError naming the user's
    tensors (not the ops left after the passes), their lines, a point and the fix."""
    program = build()
    with pytest.raises(tj.DependenceCycleError, match=rf"`{name}` depends on itself: .*{FIX}"):
        tj.reference.run(program, bounds={"T": 3})
    with pytest.raises(
        tj.DependenceCycleError,
        match=rf"`{name}` depends on itself at t=0 \(T=3\), so no execution order exists: "
        rf"{steps}\. {FIX}",
    ) as info:
        program.compile(bounds={"T": 3})
    assert isinstance(info.value, tj.ScheduleInfeasibleError)


def test_equality_on_a_symbol_is_not_a_condition() -> None:
    """`t == 0` is structural equality (a Python False), so `x[t == 0] = v` never fires."""
    with tj.Program() as p:
        b, t = p.dims("b t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        y = tj.placeholder((), jnp.float32, domain=(b, t))
        with pytest.raises(
            tj.DefinitionError,
            match=rf"`x\[False\] = \.\.\.` at {SRC}: `x\[t == 0\] = 1.0`: the condition is "
            r"always false, so this branch never fires\. `==` and `!=` on symbols .*: write "
            r"`x\[0\] = \.\.\.` for one point, or use the conditions `tj\.eq\(t, 0\)`",
        ):
            x[t == 0] = 1.0
        with pytest.raises(tj.DefinitionError, match=r"`y\[b, False\] = .* never fires"):
            y[b, t == 0] = 1.0
        with pytest.raises(tj.IndexingError, match=r"to read one point, write `x\[0\]`"):
            x[t == 0]
        x[tj.eq(t, 0)] = 1.0  # the condition the user meant
        x[True] = 2.0
        p.output("x", x)
    np.testing.assert_array_equal(tj.reference.run(p, bounds={"T": 3, "B": 1})["x"], [1, 2, 2])


def test_branch_after_the_default_never_fires() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[True] = 2.0
        with pytest.raises(
            tj.DefinitionError,
            match=rf"`x\[0\] = \.\.\.` at {SRC}: `x\[0\] = 1.0`: this branch never fires: `x` "
            rf"is already defined at every point by its default branch at {SRC}: `x\[True\] = "
            r"2.0` .* Define this branch before the default\.",
        ):
            x[0] = 1.0


def test_branch_repeating_a_condition_never_fires() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        x[0] = 1.0
        x[t + 1] = x[t] * 2.0
        with pytest.raises(
            tj.DefinitionError,
            match=rf"`x\[t \+ 1\] = \.\.\.` at {SRC}: .*: this branch never fires: the branch "
            rf"at {SRC}: `x\[t \+ 1\] = x\[t\] \* 2.0` has the same condition `t >= 1`",
        ):
            x[t + 1] = x[t] * 3.0


def test_integer_input_that_does_not_fit_its_dtype() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        n = tj.input("n", (), jnp.int32, domain=(t,))
        p.output("y", n + 1)
    big = np.array([1, 2**31, 3], np.int64)
    message = (
        rf"input 'n' \(declared at {SRC}: .*\) holds 2147483648, outside the range of its "
        r"declared int32 \(-2147483648\.\.2147483647\); it would wrap around\. Pass values"
    )
    with pytest.raises(tj.InputError, match=message):
        tj.reference.run(p, bounds={"T": 3}, inputs={"n": big})
    compiled = p.compile(bounds={"T": 3})
    with pytest.raises(tj.InputError, match=message):
        compiled(n=big)
    with pytest.raises(tj.InputError, match=r"holds 1099511627776, outside"):
        compiled(n=[1, 2, 2**40])  # a Python int JAX would refuse with an OverflowError
    np.testing.assert_array_equal(compiled(n=big - 2**31)["y"], big - 2**31 + 1)


def test_negative_size_in_a_declared_shape() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        with pytest.raises(
            tj.ShapeError,
            match=rf"the shape of input 'x' at {SRC}: .* is \(3, -1\): axis 1 has the negative "
            r"size -1\. Every size must be >= 0",
        ):
            tj.input("x", (3, -1))
        with pytest.raises(tj.ShapeError, match=r"placeholder 'h' .* the negative size -2"):
            h = tj.placeholder((-2,), jnp.float32, domain=(t,))  # noqa: F841


def test_branches_of_different_shape() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((4,), jnp.float32, domain=(t,))
        v = tj.input("v", (3,), jnp.float32)
        with pytest.raises(
            tj.BranchMismatchError,
            match=rf"`x\[0\] = \.\.\.` at {SRC}: `x\[0\] = v`: the value is float32\[3\], but `x` "
            r"holds float32\[4\]\. Every branch must give the same shape and dtype",
        ):
            x[0] = v


def test_branches_of_different_dtype() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), jnp.float32, domain=(t,))
        with pytest.raises(
            tj.BranchMismatchError,
            match=r"the value is int32\[\], but `x` holds float32\[\].*astype",
        ):
            x[True] = t * 2


def test_constant_branch_that_cannot_fill() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((4,), jnp.float32, domain=(t,))
        with pytest.raises(tj.BranchMismatchError, match=r"cannot fill `x` of float32\[4\]"):
            x[0] = np.ones(3)


def test_missing_bound() -> None:
    with tj.Program() as p:
        b, t = p.dims("b t")
        p.output("t", t + b)
    with pytest.raises(
        tj.MissingBoundError, match=r"no value for the bound\(s\) T; pass them, e\.g\. `bounds="
    ):
        tj.reference.run(p, bounds={b.bound: 2})


def test_unknown_or_bad_bound() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        p.output("t", t * 1)
    with pytest.raises(tj.MissingBoundError, match=r"`Z` is not a bound of this program"):
        tj.reference.run(p, bounds={"T": 2, "Z": 3})
    with pytest.raises(tj.MissingBoundError, match=r"bound `T` must be a positive int, got 0"):
        tj.reference.run(p, bounds={"T": 0})


def test_missing_input() -> None:
    with tj.Program() as p:
        x = tj.input("x", (2,))
        p.output("y", x * 2.0)
    with pytest.raises(tj.InputError, match=rf"input 'x' \(declared at {SRC}: .*\) was not given"):
        tj.reference.run(p)


def test_input_of_wrong_shape() -> None:
    with tj.Program() as p:
        (b,) = p.dims("b")
        x = tj.input("x", (2,), jnp.float32, domain=(b,))
        p.output("y", x * 2.0)
    with pytest.raises(
        tj.InputError,
        match=r"input 'x' .* has shape \(3,\), expected \(4, 2\): the domain bounds \(B\) then the "
        r"spatial shape float32\[2\]",
    ):
        tj.reference.run(p, bounds={"B": 4}, inputs={"x": np.zeros(3, np.float32)})


def test_unknown_input_and_bad_dtype() -> None:
    with tj.Program() as p:
        x = tj.input("x", (), jnp.int32)
        p.output("y", x + 1)
    with pytest.raises(
        tj.InputError, match=r"unknown input\(s\) 'z'; this program's inputs are 'x'"
    ):
        tj.reference.run(p, inputs={"x": 1, "z": 2})
    with pytest.raises(tj.InputError, match=r"is float32, which does not convert to .*int32"):
        tj.reference.run(p, inputs={"x": np.float32(1.5)})


def test_symbol_from_another_program() -> None:
    with tj.Program() as other:
        (s,) = other.dims("s")
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        with pytest.raises(
            tj.ForeignSymbolError,
            match=rf"`x\[s\]` at {SRC}: .* uses the symbol `s`, which belongs to another program",
        ):
            x[s]
        with pytest.raises(tj.ForeignSymbolError, match=r"uses the symbol `s`"):
            tj.placeholder((), jnp.float32, domain=(s,))


def test_tensor_from_another_program() -> None:
    with tj.Program():
        y = tj.input("y", ())
    with tj.Program() as p:
        x = tj.input("x", ())
        with pytest.raises(tj.ForeignSymbolError, match=r"mixes tensors of different programs"):
            x + y
        with pytest.raises(tj.ForeignSymbolError, match=r"tensor of another program"):
            p.output("y", y)


def test_slice_with_a_step() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        with pytest.raises(
            tj.SliceStepError,
            match=rf"`x\[\.\.\.\]` at {SRC}: .*: the slice `0:T:2` over dim `t` has step 2; slices "
            r"over domain dims have step 1\. Read the range and index the result spatially",
        ):
            x[0 : t.bound : 2]


def test_only_placeholders_can_be_defined() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        y = x * 2.0
        with pytest.raises(tj.DefinitionError, match=r"only placeholders can be defined"):
            y[0] = 1.0


def test_definition_value_over_a_foreign_dim() -> None:
    with tj.Program() as p:
        i, t = p.dims("i t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        w = tj.placeholder((), jnp.float32, domain=(i,))
        with pytest.raises(tj.DefinitionError, match=r"the value varies over t, which `w` has no"):
            w[0] = x


def test_output_shape_varying_over_the_domain() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        p.output("prefix", x[0 : t + 1])
    with pytest.raises(tj.OutputError, match=r"output 'prefix' .* varies with t.*x\[0:T\]"):
        p.to_ir()


def test_shape_error_names_the_op_and_line() -> None:
    with tj.Program():
        x = tj.input("x", (3,))
        with pytest.raises(
            tj.ShapeError,
            match=rf"`matmul` at {SRC}: .* cannot be applied to inputs float32\[3\]: TypeError",
        ):
            x @ jnp.ones((4, 2))


def test_symbolic_values_have_no_truth_value() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        with pytest.raises(tj.TempoError, match=r"no truth value.*tj\.where"):
            bool(x > 0)
        with pytest.raises(tj.TempoError, match=r"condition `t < 5` is symbolic"):
            bool(t < 5)


def test_calls_outside_a_program() -> None:
    with pytest.raises(tj.DefinitionError, match=r"inside `with tj.Program\(\) as p:`"):
        tj.placeholder((), jnp.float32)
