"""Simplification and logical equality of index expressions.

:func:`simplify` puts integer expressions in a canonical *linear form*: a sum of integer
coefficients times atoms (symbols, or non-linear nodes with simplified children) plus a
constant. Constants fold, ``min``/``max`` whose arguments differ by a constant resolve,
divisions and moduli of divisible linear forms resolve. Comparisons become
``linear-part <= c`` or ``>= c`` (or ``==`` / ``!=``) with a positive leading coefficient,
so equal conditions written differently compare equal structurally.

:func:`equivalent` decides logical equality: canonical forms first, then sympy.
"""

from __future__ import annotations

import functools

import sympy

from .expr import (
    FALSE,
    TRUE,
    Add,
    And,
    BoolConst,
    Cmp,
    Const,
    Expr,
    FloorDiv,
    IndexItem,
    Max,
    Min,
    Mod,
    Mul,
    Not,
    Or,
    Slice,
    Sub,
    Symbol,
)

# A linear form: ({atom: coefficient}, constant); atoms are frozen Exprs, coefficients != 0.
Linear = tuple[dict[Expr, int], int]


def simplify(item: IndexItem) -> IndexItem:
    """Canonical, simplified form of an expression or slice (evaluation is unchanged)."""
    if isinstance(item, Slice):
        return Slice(_simplify(item.start), _simplify(item.stop))
    return _simplify(item)


@functools.lru_cache(maxsize=65536)
def _simplify(expr: Expr) -> Expr:
    if expr.is_bool:
        return _simplify_bool(expr)
    return _from_linear(_linear(expr))


# -- integer expressions ---------------------------------------------------------------------


def _linear(expr: Expr) -> Linear:
    if isinstance(expr, Const):
        return {}, expr.value
    if isinstance(expr, Symbol):
        return {expr: 1}, 0
    if isinstance(expr, Add | Sub):
        sign = 1 if isinstance(expr, Add) else -1
        return _combine(_linear(expr.a), _linear(expr.b), sign)
    if isinstance(expr, Mul):
        return _linear_mul(_linear(expr.a), _linear(expr.b))
    if isinstance(expr, FloorDiv | Mod):
        return _linear_div(expr)
    if isinstance(expr, Min | Max):
        return _linear_minmax(expr)
    raise TypeError(f"cannot simplify {type(expr).__name__}")


def _combine(x: Linear, y: Linear, sign: int) -> Linear:
    terms = dict(x[0])
    for atom, coeff in y[0].items():
        total = terms.get(atom, 0) + sign * coeff
        if total:
            terms[atom] = total
        else:
            terms.pop(atom, None)
    return terms, x[1] + sign * y[1]


def _scale(x: Linear, k: int) -> Linear:
    if k == 0:
        return {}, 0
    return {atom: coeff * k for atom, coeff in x[0].items()}, x[1] * k


def _linear_mul(x: Linear, y: Linear) -> Linear:
    if not x[0]:
        return _scale(y, x[1])
    if not y[0]:
        return _scale(x, y[1])
    a, b = sorted((_from_linear(x), _from_linear(y)), key=_sort_key)
    return {Mul(a, b): 1}, 0


def _linear_div(expr: FloorDiv | Mod) -> Linear:
    num, den = _linear(expr.a), _linear(expr.b)
    if not den[0] and den[1] != 0:
        d = den[1]
        if not num[0]:
            return {}, expr.fn(num[1], d)
        if isinstance(expr, FloorDiv) and d == 1:
            return num
        if all(c % d == 0 for c in num[0].values()):
            # (d*L + c) // d == L + c // d  and  (d*L + c) % d == c % d
            if isinstance(expr, FloorDiv):
                return {a: c // d for a, c in num[0].items()}, num[1] // d
            return {}, num[1] % d
    return {type(expr)(_from_linear(num), _from_linear(den)): 1}, 0


def _linear_minmax(expr: Min | Max) -> Linear:
    a, b = _linear(expr.a), _linear(expr.b)
    diff = _combine(a, b, -1)
    if not diff[0]:  # the arguments differ by a constant: pick one
        a_smaller = diff[1] <= 0
        return a if a_smaller == isinstance(expr, Min) else b
    args = sorted((_from_linear(a), _from_linear(b)), key=_sort_key)
    return {type(expr)(*args): 1}, 0


def _sort_key(expr: Expr) -> tuple[int, str]:
    # Dims before bounds before compound atoms; then by text: a deterministic canonical order.
    if isinstance(expr, Symbol):  # same-named symbols of different programs differ
        return (1 if expr.is_bound else 0, expr.name, expr.program)
    return (2, str(expr), 0)


def _from_linear(lin: Linear) -> Expr:
    terms, const = lin
    ordered = sorted(terms.items(), key=lambda kv: _sort_key(kv[0]))
    positive = [(a, c) for a, c in ordered if c > 0]
    negative = [(a, -c) for a, c in ordered if c < 0]
    result: Expr | None = None
    for atom, coeff in positive:
        term = atom if coeff == 1 else Mul(Const(coeff), atom)
        result = term if result is None else Add(result, term)
    if result is None and negative:
        if const > 0:  # c - a - b
            result, const = Const(const), 0
        else:  # -a - b
            atom, coeff = negative.pop(0)
            result = Mul(Const(-coeff), atom)
    for atom, coeff in negative:
        term = atom if coeff == 1 else Mul(Const(coeff), atom)
        result = Sub(result, term)
    if result is None:
        return Const(const)
    if const > 0:
        return Add(result, Const(const))
    if const < 0:
        return Sub(result, Const(-const))
    return result


# -- boolean expressions ---------------------------------------------------------------------

_FLIP = {"<=": ">=", ">=": "<=", "==": "==", "!=": "!="}
_NEGATE = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


def _simplify_bool(expr: Expr) -> Expr:
    if isinstance(expr, BoolConst):
        return expr
    if isinstance(expr, Cmp):
        return _simplify_cmp(expr.op, expr.a, expr.b)
    if isinstance(expr, Not):
        inner = expr.a
        if isinstance(inner, Cmp):
            return _simplify_cmp(_NEGATE[inner.op], inner.a, inner.b)
        if isinstance(inner, Not):
            return _simplify_bool(inner.a)
        if isinstance(inner, And | Or):  # De Morgan
            dual = Or if isinstance(inner, And) else And
            return _simplify_bool(dual(Not(inner.a), Not(inner.b)))
        inner_s = _simplify_bool(inner)
        if isinstance(inner_s, BoolConst):
            return BoolConst(not inner_s.value)
        return Not(inner_s)
    if isinstance(expr, And | Or):
        return _simplify_junction(expr)
    raise TypeError(f"cannot simplify {type(expr).__name__}")


def _simplify_cmp(op: str, a: Expr, b: Expr) -> Expr:
    terms, const = _combine(_linear(a), _linear(b), -1)  # a - b  op  0
    # Integer arithmetic: a < b  <=>  a - b <= -1 ;  a > b  <=>  a - b >= 1.
    if op == "<":
        op, const = "<=", const + 1
    elif op == ">":
        op, const = ">=", const - 1
    if not terms:
        value = {"<=": const <= 0, ">=": const >= 0, "==": const == 0, "!=": const != 0}[op]
        return TRUE if value else FALSE
    lead = sorted(terms.items(), key=lambda kv: _sort_key(kv[0]))[0][1]
    if lead < 0:
        terms, const, op = {k: -v for k, v in terms.items()}, -const, _FLIP[op]
    # Dims (and compound atoms) on the left, bounds and the constant on the right:
    # t - T + 1 <= 0  ->  t <= T - 1.
    left = {a: c for a, c in terms.items() if not (isinstance(a, Symbol) and a.is_bound)}
    if not left:
        return Cmp(op, _from_linear((terms, 0)), Const(-const))
    right = {a: -c for a, c in terms.items() if a not in left}
    return Cmp(op, _from_linear((left, 0)), _from_linear((right, -const)))


def _simplify_junction(expr: And | Or) -> Expr:
    cls = type(expr)
    absorbing, neutral = (FALSE, TRUE) if cls is And else (TRUE, FALSE)
    parts: list[Expr] = []
    for part in _flatten(expr, cls):
        part_s = _simplify_bool(part)
        for leaf in _flatten(part_s, cls):
            if leaf == absorbing:
                return absorbing
            if leaf != neutral and leaf not in parts:
                parts.append(leaf)
    if not parts:
        return neutral
    parts.sort(key=str)
    result = parts[0]
    for part in parts[1:]:
        result = cls(result, part)
    return result


def _flatten(expr: Expr, cls: type) -> list[Expr]:
    if isinstance(expr, cls):
        return _flatten(expr.a, cls) + _flatten(expr.b, cls)
    return [expr]


# -- logical equality --------------------------------------------------------------------------


def equivalent(a: IndexItem, b: IndexItem) -> bool:
    """Whether two expressions (or slices) are equal at every point (all symbols >= 0).

    Decided by canonical forms, then by sympy; ``False`` means "not proven equal".
    """
    if isinstance(a, Slice) or isinstance(b, Slice):
        if not (isinstance(a, Slice) and isinstance(b, Slice)):
            return False
        return equivalent(a.start, b.start) and equivalent(a.stop, b.stop)
    sa, sb = simplify(a), simplify(b)
    if sa == sb:
        return True
    if sa.is_bool != sb.is_bool:
        return False
    if sa.is_bool:
        return _equivalent_bool(sa, sb)
    return bool(sympy.simplify(to_sympy(sa) - to_sympy(sb)) == 0)


def _equivalent_bool(a: Expr, b: Expr) -> bool:
    # Treat each canonical comparison as a propositional atom and compare the logic.
    atoms: dict[Expr, sympy.Symbol] = {}

    def convert(e: Expr) -> sympy.Basic:
        if isinstance(e, BoolConst):
            return sympy.true if e.value else sympy.false
        if isinstance(e, And):
            return sympy.And(convert(e.a), convert(e.b))
        if isinstance(e, Or):
            return sympy.Or(convert(e.a), convert(e.b))
        if isinstance(e, Not):
            return sympy.Not(convert(e.a))
        return atoms.setdefault(e, sympy.Symbol(f"c{len(atoms)}"))

    diff = sympy.Xor(convert(a), convert(b))
    return sympy.logic.inference.satisfiable(diff) is False


def to_sympy(expr: Expr) -> sympy.Basic:
    """The sympy form of an integer expression (dims are non-negative, bounds positive)."""
    if isinstance(expr, Const):
        return sympy.Integer(expr.value)
    if isinstance(expr, Symbol):
        name = f"{expr.name}#{expr.program}"  # `#` keeps programs apart and names unique
        if expr.is_bound:
            return sympy.Symbol(name, integer=True, positive=True)
        return sympy.Symbol(name, integer=True, nonnegative=True)
    a, b = (to_sympy(c) for c in expr.children())
    if isinstance(expr, Add):
        return a + b
    if isinstance(expr, Sub):
        return a - b
    if isinstance(expr, Mul):
        return a * b
    if isinstance(expr, FloorDiv):
        return sympy.floor(a / b)
    if isinstance(expr, Mod):
        return sympy.Mod(a, b)
    if isinstance(expr, Min):
        return sympy.Min(a, b)
    if isinstance(expr, Max):
        return sympy.Max(a, b)
    raise TypeError(f"no sympy form for {type(expr).__name__}")
