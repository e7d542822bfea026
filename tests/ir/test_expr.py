"""Symbolic index expressions (`tempo_jax._ir.expr`) and their simplification
(`tempo_jax._ir.simplify`): construction, printing, evaluation, equality, errors, and
hypothesis properties of `simplify`, `equivalent` and `substitute`."""

from __future__ import annotations

import ast
import copy
import dataclasses
import operator

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import tempo_jax as tj
from tempo_jax._ir.errors import IndexExprError
from tempo_jax._ir.expr import (
    FALSE,
    TRUE,
    Add,
    And,
    BoolConst,
    Cmp,
    Const,
    Expr,
    FloorDiv,
    Max,
    Min,
    Mod,
    Mul,
    Not,
    Or,
    Slice,
    Sub,
    Symbol,
    dims_of,
    eq,
    format_index,
    maximum,
    minimum,
    ne,
    substitute,
    symbols_of,
    walk,
)
from tempo_jax._ir.simplify import equivalent, simplify

t = Symbol("t", 1, "T")
s = Symbol("s", 1, "S")
u = Symbol("u", 1, "U")
T, S, U = t.bound, s.bound, u.bound
DIMS = (t, s, u)
BOUNDS = (T, S, U)
SYMBOLS = DIMS + BOUNDS


# =============================================================================================
# Helpers
# =============================================================================================


class _InvertToNot(ast.NodeTransformer):
    """`~cond` on a Python bool is an int (`~True == -2`); evaluate it as `not cond`."""

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Invert):
            return ast.copy_location(ast.UnaryOp(op=ast.Not(), operand=node.operand), node)
        return node


def eval_text(text: str, env: dict[Symbol, int]) -> int | bool:
    """Evaluate the printed form of an expression as Python source (checks the brackets)."""
    tree = ast.fix_missing_locations(_InvertToNot().visit(ast.parse(text, mode="eval")))
    namespace = {"__builtins__": {}, "min": min, "max": max, "True": True, "False": False}
    namespace.update({sym.name: value for sym, value in env.items()})
    return eval(compile(tree, "<index expression>", "eval"), namespace)


_MIRROR_CMP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def mirror(e: Expr) -> Expr:
    """The same value written differently: operands of commutative nodes swapped."""
    if isinstance(e, Add | Mul | Min | Max | And | Or):
        return type(e)(mirror(e.b), mirror(e.a))
    if isinstance(e, Cmp):
        return Cmp(_MIRROR_CMP[e.op], mirror(e.b), mirror(e.a))
    if isinstance(e, Sub | FloorDiv | Mod):
        return type(e)(mirror(e.a), mirror(e.b))
    if isinstance(e, Not):
        return Not(mirror(e.a))
    return e


def env_of(**values: int) -> dict[Symbol, int]:
    by_name = {sym.name: sym for sym in SYMBOLS}
    return {by_name[name]: value for name, value in values.items()}


# =============================================================================================
# Construction
# =============================================================================================


def test_symbol_and_its_bound() -> None:
    assert Symbol("T", 1, None) == T
    assert T.is_bound and not t.is_bound
    assert t.bound is not t.bound  # a fresh node each time, yet equal
    assert t.bound == t.bound
    with pytest.raises(IndexExprError, match="bound"):
        _ = T.bound


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (t + 1, Add(t, Const(1))),
        (1 + t, Add(Const(1), t)),
        (t - s, Sub(t, s)),
        (3 - t, Sub(Const(3), t)),
        (t * 2, Mul(t, Const(2))),
        (2 * t, Mul(Const(2), t)),
        (t // 2, FloorDiv(t, Const(2))),
        (7 // t, FloorDiv(Const(7), t)),
        (t % T, Mod(t, T)),
        (7 % t, Mod(Const(7), t)),
        (-t, Mul(Const(-1), t)),
        (t + np.int64(2), Add(t, Const(2))),
        (np.int32(2) * t, Mul(Const(2), t)),
        (minimum(t, 5), Min(t, Const(5))),
        (minimum(5, t), Min(Const(5), t)),
        (maximum(t, s, 0), Max(Max(t, s), Const(0))),
        (t < 5, Cmp("<", t, Const(5))),
        (t <= s, Cmp("<=", t, s)),
        (t > 5, Cmp(">", t, Const(5))),
        (t >= T, Cmp(">=", t, T)),
        # Reflected: int.__gt__ defers to Expr.__lt__.
        (5 > t, Cmp("<", t, Const(5))),  # noqa: SIM300
        (5 <= t, Cmp(">=", t, Const(5))),  # noqa: SIM300
        (eq(t, 3), Cmp("==", t, Const(3))),
        (ne(3, t), Cmp("!=", Const(3), t)),
        ((t < 5) & (s < 3), And(Cmp("<", t, Const(5)), Cmp("<", s, Const(3)))),
        ((t < 5) | (s < 3), Or(Cmp("<", t, Const(5)), Cmp("<", s, Const(3)))),
        (True & (t < 5), And(TRUE, Cmp("<", t, Const(5)))),
        (False | (t < 5), Or(FALSE, Cmp("<", t, Const(5)))),
        (~(t < 5), Not(Cmp("<", t, Const(5)))),
    ],
)
def test_operators_build_nodes(built: Expr, expected: Expr) -> None:
    assert built == expected
    assert type(built) is type(expected)


def test_double_equals_is_structural_equality_not_a_condition() -> None:
    assert (t == Symbol("t", 1, "T")) is True
    assert (t == 5) is False
    assert (t != s) is True
    assert (t + 1 == t + 1) is True
    assert (t + 1 == 1 + t) is False  # structural, not logical


def test_minimum_needs_two_arguments() -> None:
    with pytest.raises(IndexExprError, match="at least two"):
        minimum(t)
    with pytest.raises(IndexExprError, match="at least two"):
        maximum()


# =============================================================================================
# Printing
# =============================================================================================


@pytest.mark.parametrize(
    ("e", "text"),
    [
        (t, "t"),
        (T, "T"),
        (Const(-3), "-3"),
        (t + 1, "t + 1"),
        (1 + t, "1 + t"),
        (t - 1, "t - 1"),
        (t + -1, "t + (-1)"),
        (t - -1, "t - (-1)"),
        (2 - t, "2 - t"),
        (-t, "-t"),
        (-(t + 1), "-(t + 1)"),
        ((t + 1) * 2, "(t + 1) * 2"),
        (2 * (t + 1), "2 * (t + 1)"),
        (t * 2 + 1, "t * 2 + 1"),
        (t - (s - 1), "t - (s - 1)"),
        (t - s - 1, "t - s - 1"),
        (t + (s - 1), "t + s - 1"),
        (t // 2 * 3, "t // 2 * 3"),
        (t * (s // 2), "t * (s // 2)"),
        (t // (s * 2), "t // (s * 2)"),
        ((t + 1) // 2, "(t + 1) // 2"),
        (t % T, "t % T"),
        ((t - 1) % T, "(t - 1) % T"),
        (minimum(t, 5), "min(t, 5)"),
        (maximum(t - 1, 0), "max(t - 1, 0)"),
        (maximum(t, s, 0), "max(max(t, s), 0)"),
        (minimum(t, s) + 1, "min(t, s) + 1"),
        (t + 1 < 5, "t + 1 < 5"),
        (t >= T - 1, "t >= T - 1"),
        (eq(t, 3), "t == 3"),
        (ne(t, s), "t != s"),
        ((t < 5) & (s >= 2), "(t < 5) & (s >= 2)"),
        ((t < 5) | (s >= 2), "(t < 5) | (s >= 2)"),
        (~(t < 5), "~(t < 5)"),
        (((t < 5) | (s < 2)) & (t > 1), "((t < 5) | (s < 2)) & (t > 1)"),
        (((t < 5) & (s < 2)) | (t > 1), "(t < 5) & (s < 2) | (t > 1)"),
        (~((t < 5) & (s < 2)), "~((t < 5) & (s < 2))"),
        (TRUE, "True"),
        (FALSE, "False"),
    ],
)
def test_printing(e: Expr, text: str) -> None:
    assert str(e) == text
    assert repr(e) == text


def test_printing_of_slices_and_index_tuples() -> None:
    assert str(Slice(Const(0), t + 1)) == "0:t + 1"
    assert repr(Slice(t, T)) == "t:T"
    assert format_index((t - 1, Slice(Const(0), t + 1))) == "t - 1, 0:t + 1"
    assert format_index((t,)) == "t"
    assert format_index(()) == ""


# =============================================================================================
# Evaluation
# =============================================================================================


def test_evaluate() -> None:
    env = env_of(t=3, s=4, T=10)
    assert (t + 1).evaluate(env) == 4
    assert (2 * t - s).evaluate(env) == 2
    assert (T - t - 1).evaluate(env) == 6
    assert minimum(t, s).evaluate(env) == 3
    assert maximum(t, s, 7).evaluate(env) == 7
    assert (-t).evaluate(env) == -3
    assert Const(5).evaluate({}) == 5
    assert (t < s).evaluate(env) == 1
    assert (t >= s).evaluate(env) == 0
    assert eq(t + 1, s).evaluate(env) == 1
    assert ne(t + 1, s).evaluate(env) == 0
    assert ((t < 5) & (s > 5)).evaluate(env) == 0
    assert ((t < 5) | (s > 5)).evaluate(env) == 1
    assert (~(t < 5)).evaluate(env) == 0
    assert TRUE.evaluate({}) == 1 and FALSE.evaluate({}) == 0


def test_evaluate_accepts_numpy_values() -> None:
    env = {t: np.int64(3), T: np.int32(10)}
    assert (T - t).evaluate(env) == 7
    assert (t % T + t // 2).evaluate(env) == 4
    assert minimum(t, T).evaluate(env) == 3
    assert (t < T).evaluate(env) == 1


@pytest.mark.parametrize("divisor", [-3, -2, -1, 1, 2, 3])
def test_floordiv_and_mod_follow_python_on_negatives(divisor: int) -> None:
    for numerator in range(-7, 8):
        env = env_of(t=numerator, s=divisor)
        assert (t // s).evaluate(env) == numerator // divisor
        assert (t % s).evaluate(env) == numerator % divisor
        assert (t // divisor).evaluate(env) == numerator // divisor
        assert (numerator % s).evaluate(env) == numerator % divisor


@pytest.mark.parametrize("e", [t // s, t % s, t // 0, t % 0, 5 // (s - s), (t + 1) % (t - t)])
def test_division_by_zero_raises_tempo_error(e: Expr) -> None:
    with pytest.raises(tj.TempoError, match="by zero"):
        e.evaluate(env_of(t=3, s=0))


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_division_by_zero_with_numpy_values_raises_tempo_error() -> None:
    env = {t: np.int64(3), s: np.int64(0)}
    with pytest.raises(tj.TempoError, match="by zero"):
        (t // s).evaluate(env)


def test_division_by_zero_survives_simplification() -> None:
    # Simplifying must not raise nor invent a value; the error comes at evaluation.
    for e in (t // 0, t % 0, Const(5) // 0, Const(5) % (t - t)):
        simple = simplify(e)
        with pytest.raises(tj.TempoError, match="by zero"):
            simple.evaluate(env_of(t=3))


def test_missing_symbol_raises() -> None:
    with pytest.raises(IndexExprError, match="no value for symbol `s`"):
        (t + s).evaluate(env_of(t=1))


def test_condition_has_no_python_truth_value() -> None:
    with pytest.raises(tj.TempoError, match="no truth value"):
        bool(t < 5)
    with pytest.raises(tj.TempoError):
        bool((t < 5) & (s < 3))
    with pytest.raises(tj.TempoError):
        if eq(t, 1):
            pass
    with pytest.raises(tj.TempoError, match="no truth value"):
        min(t, 5)  # Python's min compares, which builds a condition
    assert bool(TRUE) is True
    assert bool(FALSE) is False


# =============================================================================================
# Errors on malformed expressions
# =============================================================================================


def test_index_expr_error_is_a_tempo_error() -> None:
    assert issubclass(IndexExprError, tj.TempoError)
    assert tj.IndexExprError is IndexExprError


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: t & 1, id="int-and-int"),
        pytest.param(lambda: 1 | t, id="int-or-int-reflected"),
        pytest.param(lambda: t & (s < 3), id="int-and-cond"),
        pytest.param(lambda: (s < 3) | t, id="cond-or-int"),
        pytest.param(lambda: ~t, id="invert-int"),
        pytest.param(lambda: (t < 5) + 1, id="cond-plus"),
        pytest.param(lambda: 2 * (t < 5), id="int-times-cond"),
        pytest.param(lambda: t - (s < 3), id="minus-cond"),
        pytest.param(lambda: (t < 5) // 2, id="cond-floordiv"),
        pytest.param(lambda: minimum(t, s < 3), id="min-of-cond"),
        pytest.param(lambda: (t < 5) < 3, id="compare-cond"),
        pytest.param(lambda: eq(t < 5, 1), id="eq-of-cond"),
        pytest.param(lambda: t + True, id="plus-bool"),
        pytest.param(lambda: t + 1.5, id="plus-float"),
        pytest.param(lambda: 1.5 * t, id="float-times"),
        pytest.param(lambda: t < 2.5, id="compare-float"),
        pytest.param(lambda: t + np.float32(1.0), id="plus-numpy-float"),
        pytest.param(lambda: t + "1", id="plus-str"),
        pytest.param(lambda: Const(1.5), id="const-float"),
        pytest.param(lambda: Const(True), id="const-bool"),
        pytest.param(lambda: Cmp("=", t, Const(1)), id="unknown-comparison"),
    ],
)
def test_malformed_expressions_raise_index_expr_error(build) -> None:
    with pytest.raises(IndexExprError):
        build()


# =============================================================================================
# Equality, hashing, immutability
# =============================================================================================


def test_symbols_are_dict_keys() -> None:
    bounds = {T: 10, S: 3}
    assert bounds[Symbol("T", 1, None)] == 10
    assert bounds[s.bound] == 3
    assert Symbol("T", 2, None) not in bounds  # another program's bound
    assert Symbol("t", 1, None) != t  # a bound named t is not the dim t
    assert len({t, Symbol("t", 1, "T"), s, T, T}) == 3


def test_equal_trees_hash_equal() -> None:
    a = maximum(t * 2 - T // 3, s % 4) + 1
    b = maximum(Symbol("t", 1, "T") * 2 - Symbol("T", 1) // 3, s % 4) + 1
    assert a == b and a is not b
    assert hash(a) == hash(b)
    assert len({a, b, copy.deepcopy(a)}) == 1
    c1, c2 = (t < 5) & ~eq(s, 2), (t < 5) & ~eq(s, 2)
    assert c1 == c2 and hash(c1) == hash(c2)
    assert Slice(t, t + 1) == Slice(t, t + 1)
    assert hash(Slice(t, t + 1)) == hash(Slice(t, t + 1))
    assert (t + 1) != (t + 2)
    assert (t < 5) != (t <= 5)
    assert Const(1) != TRUE


@pytest.mark.parametrize(
    ("node", "field", "value"),
    [
        (t, "name", "x"),
        (Const(1), "value", 2),
        (t + 1, "a", s),
        (minimum(t, 1), "b", Const(2)),
        (t < 5, "op", ">"),
        ((t < 5) & (s < 2), "a", TRUE),
        (~(t < 5), "a", TRUE),
        (TRUE, "value", False),
        (Slice(t, T), "stop", t),
    ],
)
def test_nodes_are_immutable(node: object, field: str, value: object) -> None:
    before = str(node)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(node, field, value)
    assert str(node) == before


# =============================================================================================
# Simplification examples
# =============================================================================================


@pytest.mark.parametrize(
    ("e", "expected"),
    [
        (t + 1 - 1, t),
        (t - t, Const(0)),
        (2 * (t + 1) - t, t + 2),
        (t + s - t, s),
        ((2 * t + 4) // 2, t + 2),
        ((2 * t + 5) // 2, t + 2),
        ((2 * t + 5) % 2, Const(1)),
        ((4 * t - 3) % 2, Const(1)),
        ((6 * t + 3 * s) // 3, s + 2 * t),  # dims in name order
        (t // 1, t),
        (t % 1, Const(0)),
        (Const(7) // -2, Const(-4)),
        (Const(-7) % 3, Const(2)),
        (minimum(t + 10, t + 3), t + 3),
        (maximum(t + 10, t + 3), t + 10),
        (maximum(t, t), t),
        (minimum(Const(4), Const(9)), Const(4)),
        (3 * (t * 1) + 0, 3 * t),
        (0 * t + 5, Const(5)),
    ],
)
def test_simplify_integer_examples(e: Expr, expected: Expr) -> None:
    assert simplify(e) == expected
    assert simplify(expected) == expected


def test_simplify_keeps_genuine_max() -> None:
    e = simplify(maximum(0, t - 4 + 1))
    assert isinstance(e, Max)
    assert str(e) == "max(0, t - 3)"
    assert simplify(maximum(t - 4 + 1, 0)) == e  # argument order does not matter
    assert isinstance(simplify(minimum(t, s)), Min)


def test_simplify_is_order_insensitive_on_examples() -> None:
    assert simplify(t + s + T) == simplify(T + s + t)
    assert simplify(t * s) == simplify(s * t)
    assert simplify(minimum(t, s + 1)) == simplify(minimum(s + 1, t))
    assert simplify((t < 5) & (s < 3)) == simplify((s < 3) & (t < 5))
    assert simplify(((t < 5) | (s < 3)) | (u < 1)) == simplify((u < 1) | ((s < 3) | (t < 5)))


@pytest.mark.parametrize(
    ("e", "expected"),
    [
        (t + 1 < 5, t <= 3),
        (t < 4, t <= 3),
        (4 > t, t <= 3),  # noqa: SIM300
        (5 - t > 1, t <= 3),
        (~(t >= 3), t < 3),
        (~(t < 3), t >= 3),
        (~~(t < 3), t < 3),
        (~eq(t, 3), ne(t, 3)),
        (eq(t + 1, s), eq(s, t + 1)),
        ((t < 5) & TRUE, t < 5),
        (TRUE & (t < 5), t < 5),
        ((t < 5) | FALSE, t < 5),
        ((t < 5) & (t < 5), t < 5),
        (~((t < 5) & (s < 3)), (t >= 5) | (s >= 3)),
        (~((t < 5) | (s < 3)), (t >= 5) & (s >= 3)),
    ],
)
def test_simplify_condition_examples(e: Expr, expected: Expr) -> None:
    assert simplify(e) == simplify(expected)


def test_simplified_condition_forms() -> None:
    assert simplify(t + 1 < 5) == Cmp("<=", t, Const(3))
    assert simplify((t < 5) & TRUE) == Cmp("<=", t, Const(4))
    assert str(simplify(t + 1 < 5)) == "t <= 3"


@pytest.mark.parametrize(
    ("e", "expected"),
    [
        ((t < 5) & FALSE, FALSE),
        (FALSE & ((t < 5) | (s < 2)), FALSE),
        ((t < 5) | TRUE, TRUE),
        (Const(3) < 5, TRUE),
        (Const(5) < 5, FALSE),
        (t + 1 > t, TRUE),
        (eq(t, t), TRUE),
        (ne(t + 1, t), TRUE),
        (~TRUE, FALSE),
        (~(FALSE | FALSE), TRUE),
        (TRUE & TRUE, TRUE),
    ],
)
def test_simplify_constant_conditions(e: Expr, expected: BoolConst) -> None:
    assert simplify(e) == expected


def test_simplify_slice() -> None:
    assert simplify(Slice(t + 1 - 1, T + 0)) == Slice(t, T)


# =============================================================================================
# equivalent
# =============================================================================================


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((t + 1) * 2, 2 * t + 2),
        (t * (s + 1), t * s + t),
        ((t + 1) * (t - 1), t * t - 1),
        (minimum(t, s), minimum(s, t)),
        (maximum(t, 0), t),  # dims are non-negative
        (minimum(T, 0), Const(0)),  # bounds are positive
        (maximum(T, 1), T),
        (t + 1 < 5, t <= 3),
        (~((t < 5) & (s < 3)), (t >= 5) | (s >= 3)),
        ((t < 5) & (s < 3), (s < 3) & (t < 5)),
        (Slice(t, t + 2), Slice(t + 0, 2 + t)),
    ],
)
def test_equivalent_true(a: Expr, b: Expr) -> None:
    assert equivalent(a, b) is True
    assert equivalent(b, a) is True


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (t, t + 1),
        (t, s),
        (t, T),
        (minimum(t, s), t),
        (t // 2, t),
        (minimum(t, 1), Const(1)),  # a dim may be 0
        (maximum(T, 2), T),  # a bound may be 1
        (t < 5, t < 6),
        ((t < 5) & (s < 3), (t < 5) | (s < 3)),
        (t, t < 5),  # an integer is never a condition
        (Slice(t, t + 1), Slice(t, t + 2)),
        (Slice(t, t + 1), t),
    ],
)
def test_equivalent_false(a: Expr, b: Expr) -> None:
    assert equivalent(a, b) is False
    assert equivalent(b, a) is False


def test_equivalent_distinguishes_programs() -> None:
    other_t = Symbol("t", 2, "T")
    assert other_t != t
    assert equivalent(t, other_t) is False


def test_simplify_is_canonical_for_same_named_symbols() -> None:
    other_t = Symbol("t", 2, "T")
    assert simplify(t + other_t) == simplify(other_t + t)


# =============================================================================================
# Slices, substitution, traversals
# =============================================================================================


def test_slice_size_evaluate_substitute() -> None:
    assert Slice(t, t + 3).size == Const(3)
    assert Slice(Const(0), T).size == T
    assert Slice(t - 1, T).size == T - t + 1
    assert Slice(t - 1, t + 1).evaluate(env_of(t=5)) == range(4, 6)
    assert Slice(Const(0), T).evaluate(env_of(T=3)) == range(0, 3)
    assert substitute(Slice(t, t + 1), {t: s}) == Slice(s, s + 1)
    assert substitute(Slice(Const(0), T), {T: Const(7)}) == Slice(Const(0), Const(7))
    assert Slice(t, T).children() == (t, T)


def test_substitute_is_simultaneous() -> None:
    assert substitute(t - s, {t: s, s: t}) == s - t
    assert substitute(t + 1, {t: t + 1}) == (t + 1) + 1  # no repeated rewriting
    assert substitute(maximum(t, T), {t: T, T: t}) == maximum(T, t)


def test_substitute_reaches_every_node_kind() -> None:
    cond = (t < T) & ~eq(s % 2, 0) | (minimum(t, s) >= 1)
    result = substitute(cond, {t: Const(1), T: Const(5), s: u})
    assert result == (Const(1) < 5) & ~eq(u % 2, 0) | (minimum(Const(1), u) >= 1)
    assert substitute(Const(3), {t: s}) == Const(3)
    assert substitute(TRUE, {t: s}) == TRUE
    assert substitute(t + 1, {}) == t + 1
    assert substitute(t + s, {u: t}) == t + s


def test_symbols_and_dims_of() -> None:
    e = t + T * s - minimum(u, 3) // S
    assert symbols_of(e) == frozenset({t, T, s, u, S})
    assert dims_of(e) == frozenset({t, s, u})
    assert symbols_of(Const(3)) == frozenset()
    assert symbols_of((t < T) & eq(s, 1)) == frozenset({t, T, s})
    assert symbols_of(Slice(t, T)) == frozenset({t, T})
    assert dims_of(Slice(Const(0), T)) == frozenset()


def test_walk_is_preorder() -> None:
    e = t + s * 2
    assert list(walk(e)) == [e, t, s * 2, s, Const(2)]
    cond = ~(t < 1)
    assert list(walk(cond)) == [cond, t < 1, t, Const(1)]


def test_walk_visits_both_ends_of_a_slice() -> None:
    assert sorted(map(str, walk(Slice(t, T - 1)))) == ["1", "T", "T - 1", "t"]


def test_walk_of_a_slice_is_preorder() -> None:
    assert list(walk(Slice(t, T - 1))) == [t, T - 1, T, Const(1)]


# =============================================================================================
# Property tests
# =============================================================================================

_consts = st.integers(-4, 6).map(Const)
_leaves = st.one_of(st.sampled_from(SYMBOLS), _consts)
_nonzero = st.sampled_from([-3, -2, -1, 1, 2, 3, 5])


def _extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    # Divisors are never zero: non-zero constants, bounds (>= 1), or max(e, 1).
    divisors = st.one_of(
        _nonzero.map(Const),
        st.sampled_from(BOUNDS),
        children.map(lambda e: maximum(e, 1)),
    )
    pairs = st.tuples(children, children)
    return st.one_of(
        pairs.map(lambda p: p[0] + p[1]),
        pairs.map(lambda p: p[0] - p[1]),
        pairs.map(lambda p: p[0] * p[1]),
        st.tuples(children, divisors).map(lambda p: p[0] // p[1]),
        st.tuples(children, divisors).map(lambda p: p[0] % p[1]),
        st.tuples(children, _nonzero).map(lambda p: p[0] // p[1]),
        pairs.map(lambda p: minimum(*p)),
        pairs.map(lambda p: maximum(*p)),
        children.map(operator.neg),
        # Shapes the simplifier resolves: divisible numerators, min/max of shifted copies.
        st.tuples(children, st.integers(-2, 2), st.integers(1, 4), st.integers(-6, 6)).map(
            lambda p: (p[1] * p[2] * p[0] + p[3]) // p[2]
        ),
        st.tuples(children, st.integers(-2, 2), _nonzero, st.integers(-6, 6)).map(
            lambda p: (p[1] * p[2] * p[0] + p[3]) % p[2]
        ),
        st.tuples(children, st.integers(-3, 3), st.integers(-3, 3)).map(
            lambda p: minimum(p[0] + p[1], p[0] + p[2])
        ),
        st.tuples(children, st.integers(-3, 3), st.integers(-3, 3)).map(
            lambda p: maximum(p[1] + p[0], p[0] + p[2])
        ),
        st.tuples(st.integers(-3, 3), children).map(lambda p: p[0] * p[1]),  # reflected
        st.tuples(st.integers(-3, 3), children).map(lambda p: p[0] - p[1]),  # reflected
    )


int_exprs = st.recursive(_leaves, _extend, max_leaves=10)
small_int_exprs = st.recursive(_leaves, _extend, max_leaves=4)

_CMPS = (operator.lt, operator.le, operator.gt, operator.ge, eq, ne)


def _comparison(p: tuple) -> Expr:
    op, a, b, reflected = p
    if reflected and isinstance(b, int):  # `3 < t` goes through Expr.__gt__
        return op(b, a)
    return op(a, b)


_comparisons = st.tuples(
    st.sampled_from(_CMPS),
    small_int_exprs,
    st.one_of(small_int_exprs, st.integers(-3, 8)),
    st.booleans(),
).map(_comparison)
_bool_leaves = st.one_of(_comparisons, _comparisons, st.sampled_from([TRUE, FALSE]))
bool_exprs = st.recursive(
    _bool_leaves,
    lambda c: st.one_of(
        st.tuples(c, c).map(lambda p: p[0] & p[1]),
        st.tuples(c, c).map(lambda p: p[0] | p[1]),
        c.map(operator.invert),
    ),
    max_leaves=6,
)

envs = st.fixed_dictionaries(
    {**{d: st.integers(0, 20) for d in DIMS}, **{b: st.integers(1, 20) for b in BOUNDS}}
)
env_lists = st.lists(envs, min_size=1, max_size=4)
CORNER = {**{d: 0 for d in DIMS}, **{b: 1 for b in BOUNDS}}  # the least point

# Cheap properties (no sympy) run more examples than hypothesis' default of 100.
MANY = settings(max_examples=250, deadline=None)


@MANY
@given(int_exprs, env_lists)
def test_prop_simplify_preserves_value(e: Expr, points: list[dict[Symbol, int]]) -> None:
    simple = simplify(e)
    for env in points:
        assert simple.evaluate(env) == e.evaluate(env)


@MANY
@given(bool_exprs, env_lists)
def test_prop_simplify_preserves_truth(b: Expr, points: list[dict[Symbol, int]]) -> None:
    simple = simplify(b)
    assert simple.is_bool
    for env in points:
        assert bool(simple.evaluate(env)) == bool(b.evaluate(env))


@MANY
@given(st.one_of(int_exprs, bool_exprs))
def test_prop_simplify_is_idempotent(e: Expr) -> None:
    once = simplify(e)
    assert simplify(once) == once
    assert str(simplify(once)) == str(once)


@MANY
@given(st.one_of(int_exprs, bool_exprs))
def test_prop_simplified_text_is_canonical(e: Expr) -> None:
    # Structurally equal inputs print the same; so do inputs that only differ in the order of
    # the operands of + * min max & | == != (and `a < b` written `b > a`).
    rebuilt = copy.deepcopy(e)
    assert str(simplify(rebuilt)) == str(simplify(e))
    swapped = mirror(e)
    assert simplify(swapped) == simplify(e)
    assert str(simplify(swapped)) == str(simplify(e))


@MANY
@given(int_exprs, env_lists)
def test_prop_printed_form_evaluates_like_the_expression(
    e: Expr, points: list[dict[Symbol, int]]
) -> None:
    simple = simplify(e)
    for env in points:
        assert eval_text(str(e), env) == e.evaluate(env)
        assert eval_text(str(simple), env) == e.evaluate(env)


@MANY
@given(bool_exprs, env_lists)
def test_prop_printed_condition_evaluates_like_the_condition(
    b: Expr, points: list[dict[Symbol, int]]
) -> None:
    simple = simplify(b)
    for env in points:
        assert bool(eval_text(str(b), env)) == bool(b.evaluate(env))
        assert bool(eval_text(str(simple), env)) == bool(b.evaluate(env))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(small_int_exprs, int_exprs, bool_exprs))
def test_prop_equivalent_to_own_simplification(e: Expr) -> None:
    assert equivalent(e, simplify(e)) is True
    assert equivalent(e, e) is True


def _substitution(pairs: list[tuple[Symbol, Expr]]) -> dict[Symbol, Expr]:
    # A bound stays >= 1 (it may divide) when replaced by max(e, 1).
    return {sym: maximum(e, 1) if sym.is_bound else e for sym, e in pairs}


substitutions = st.lists(st.tuples(st.sampled_from(SYMBOLS), small_int_exprs), max_size=4).map(
    _substitution
)


@MANY
@given(st.one_of(int_exprs, bool_exprs), substitutions, env_lists)
def test_prop_substitute_then_evaluate(
    e: Expr, mapping: dict[Symbol, Expr], points: list[dict[Symbol, int]]
) -> None:
    replaced = substitute(e, mapping)
    assert symbols_of(replaced) <= (symbols_of(e) - mapping.keys()) | frozenset().union(
        *(symbols_of(v) for v in mapping.values())
    )
    for env in points:
        shifted = {
            sym: (mapping[sym].evaluate(env) if sym in mapping else v) for sym, v in env.items()
        }
        assert replaced.evaluate(env) == e.evaluate(shifted)


@MANY
@given(small_int_exprs, small_int_exprs, substitutions, envs)
def test_prop_substitute_slice(
    start: Expr, stop: Expr, mapping: dict[Symbol, Expr], env: dict[Symbol, int]
) -> None:
    sl = Slice(start, stop)
    shifted = {sym: (mapping[sym].evaluate(env) if sym in mapping else v) for sym, v in env.items()}
    assert substitute(sl, mapping).evaluate(env) == sl.evaluate(shifted)
    assert sl.size.evaluate(env) == stop.evaluate(env) - start.evaluate(env)
    assert simplify(sl).evaluate(env) == sl.evaluate(env)


# -- soundness of `equivalent` on identities, valid and invalid ------------------------------


def _candidate_identities(a: Expr, b: Expr, k: int) -> list[tuple[Expr, Expr]]:
    """Pairs that hold for all integers, and look-alikes that do not."""
    return [
        (a * (b + 1), a * b + a),
        ((a // k) * k + a % k, a),
        (a % k, a - k * (a // k)),
        (minimum(a, b) + maximum(a, b), a + b),
        (maximum(a - b, 0) + minimum(a, b), a),
        ((a + k) // k, a // k + 1),
        ((a // k) // 2, a // (2 * k)),
        ((a * k) // k, a),
        ((a // k) * k, a),  # invalid
        ((a + b) // k, a // k + b // k),  # invalid
        (maximum(a - b, 0), a - b),  # invalid
        (a % k + b % k, (a + b) % k),  # invalid
        ((a * b) // k, a * (b // k)),  # invalid
        (minimum(a, b), a),  # invalid
        (maximum(a, 0), a),  # valid only when a >= 0
        (minimum(a, 1), Const(1)),  # valid only when a >= 1
    ]


tiny_exprs = st.recursive(
    st.one_of(st.sampled_from((t, s, T)), st.integers(0, 3).map(Const)), _extend, max_leaves=3
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_exprs, tiny_exprs, st.integers(1, 4), st.lists(envs, min_size=6, max_size=6))
def test_prop_equivalent_is_sound(
    a: Expr, b: Expr, k: int, points: list[dict[Symbol, int]]
) -> None:
    for which, (lhs, rhs) in enumerate(_candidate_identities(a, b, k)):
        proven = equivalent(lhs, rhs)
        event(f"identity {which} proven: {proven}")
        if proven:
            for env in [*points, CORNER]:
                assert lhs.evaluate(env) == rhs.evaluate(env), (which, lhs, rhs, env)


@settings(max_examples=60, deadline=None)
@given(bool_exprs, bool_exprs, env_lists)
def test_prop_equivalent_conditions_is_sound(
    a: Expr, b: Expr, points: list[dict[Symbol, int]]
) -> None:
    # Propositional identities are always proven (canonical comparisons are the atoms).
    assert equivalent(a & b, b & a) is True
    assert equivalent(~(a | b), ~a & ~b) is True
    assert equivalent(a | (a & b), a) is True
    if equivalent(a, b):
        for env in points:
            assert bool(a.evaluate(env)) == bool(b.evaluate(env))
