"""Symbolic index expressions: immutable nodes, evaluation, substitution and printing.

Integer-valued nodes: :class:`Symbol`, :class:`Const`, :class:`Add`, :class:`Sub`,
:class:`Mul`, :class:`FloorDiv`, :class:`Mod`, :class:`Min`, :class:`Max`.
Boolean nodes: :class:`BoolConst`, :class:`Cmp`, :class:`And`, :class:`Or`, :class:`Not`.
A :class:`Slice` (``start:stop``, step 1) is an index item, not an expression.

Nodes are frozen dataclasses with structural ``==`` and ``hash`` (so symbols can key the
``bounds`` dict). Comparisons with ``< <= > >=`` build :class:`Cmp` nodes; equality
conditions are built with :func:`eq` / :func:`ne`. Simplification lives in
:mod:`tempo_jax._ir.simplify`.
"""

from __future__ import annotations

import dataclasses
import numbers
import operator
from collections.abc import Callable, Iterator, Mapping
from typing import Union

import numpy as np

from .errors import IndexExprError

IntLike = Union[int, "Expr"]


class Expr:
    """Base of all index-expression nodes."""

    __slots__ = ()

    # -- arithmetic (integer-valued nodes) ---------------------------------------------------
    def __add__(self, other: IntLike) -> Expr:
        return _arith(Add, self, other)

    def __radd__(self, other: IntLike) -> Expr:
        return _arith(Add, other, self)

    def __sub__(self, other: IntLike) -> Expr:
        return _arith(Sub, self, other)

    def __rsub__(self, other: IntLike) -> Expr:
        return _arith(Sub, other, self)

    def __mul__(self, other: IntLike) -> Expr:
        return _arith(Mul, self, other)

    def __rmul__(self, other: IntLike) -> Expr:
        return _arith(Mul, other, self)

    def __floordiv__(self, other: IntLike) -> Expr:
        return _arith(FloorDiv, self, other)

    def __rfloordiv__(self, other: IntLike) -> Expr:
        return _arith(FloorDiv, other, self)

    def __mod__(self, other: IntLike) -> Expr:
        return _arith(Mod, self, other)

    def __rmod__(self, other: IntLike) -> Expr:
        return _arith(Mod, other, self)

    def __neg__(self) -> Expr:
        return _arith(Mul, Const(-1), self)

    # -- comparisons ---------------------------------------------------------------------------
    def __lt__(self, other: IntLike) -> Expr:
        return _compare("<", self, other)

    def __le__(self, other: IntLike) -> Expr:
        return _compare("<=", self, other)

    def __gt__(self, other: IntLike) -> Expr:
        return _compare(">", self, other)

    def __ge__(self, other: IntLike) -> Expr:
        return _compare(">=", self, other)

    # -- logic (boolean nodes) -----------------------------------------------------------------
    def __and__(self, other: object) -> Expr:
        return _logic(And, self, other)

    def __rand__(self, other: object) -> Expr:
        return _logic(And, other, self)

    def __or__(self, other: object) -> Expr:
        return _logic(Or, self, other)

    def __ror__(self, other: object) -> Expr:
        return _logic(Or, other, self)

    def __invert__(self) -> Expr:
        if not self.is_bool:
            raise IndexExprError(f"`~{self}`: `~` applies to conditions, not integers.")
        return Not(self)

    # -- generic interface ---------------------------------------------------------------------
    @property
    def is_bool(self) -> bool:
        return False

    def children(self) -> tuple[Expr, ...]:
        return ()

    def rebuild(self, children: tuple[Expr, ...]) -> Expr:
        return self

    def evaluate(self, env: Mapping[Symbol, int]) -> int:
        """Value at a point; ``env`` maps every symbol (dims and bounds) to an int."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.render(0)

    def __repr__(self) -> str:
        return str(self)

    def render(self, precedence: int) -> str:
        raise NotImplementedError


def _defers(value: object) -> bool:
    """Whether an operand is a tensor whose reflected operator should handle the operation."""
    return getattr(value, "_tempo_tensor", False)


def _arith(cls: type, a: object, b: object) -> Expr:
    if _defers(a) or _defers(b):
        return NotImplemented
    a_e, b_e = as_expr(a), as_expr(b)
    for side in (a_e, b_e):
        if side.is_bool:
            raise IndexExprError(f"`{side}` is a condition; it cannot be used in arithmetic.")
    return cls(a_e, b_e)


def _compare(op: str, a: object, b: object) -> Expr:
    if _defers(a) or _defers(b):
        return NotImplemented
    return Cmp(op, as_expr(a), as_expr(b))


def _logic(cls: type, a: object, b: object) -> Expr:
    if _defers(a) or _defers(b):
        return NotImplemented
    a_e, b_e = as_expr(a), as_expr(b)
    for side in (a_e, b_e):
        if not side.is_bool:
            raise IndexExprError(
                f"`{side}` is an integer; `&` and `|` combine conditions such as `t < 5`."
            )
    return cls(a_e, b_e)


def as_expr(value: object) -> Expr:
    """Convert an int, a bool or an Expr to an Expr (bools become :class:`BoolConst`)."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, bool):
        return BoolConst(value)
    if isinstance(value, int):
        return Const(value)
    if hasattr(value, "__index__") and not hasattr(value, "shape"):
        return Const(operator.index(value))
    try:  # numpy / jax integer scalars
        import numpy as np

        if isinstance(value, np.integer) or (
            isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "iu"
        ):
            return Const(int(value))
    except ImportError:  # pragma: no cover
        pass
    raise IndexExprError(
        f"`{value!r}` (of type {type(value).__name__}) is not an index expression: use ints, "
        "symbols from `p.dims(...)`, their bounds, `+ - * // %`, `tj.min` and `tj.max`."
    )


# ---------------------------------------------------------------------------------------------
# Integer nodes
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class Symbol(Expr):
    """A domain dim (``t``) or its bound (``T``); ``program`` identifies the owning program.

    ``bound_name`` is the name of the dim's bound, or ``None`` when the symbol *is* a bound.
    """

    name: str
    program: int = 0
    bound_name: str | None = None

    @property
    def is_bound(self) -> bool:
        return self.bound_name is None

    @property
    def bound(self) -> Symbol:
        """The exclusive upper bound of this dim (``t.bound`` is ``T``)."""
        if self.bound_name is None:
            raise IndexExprError(f"`{self.name}` is a bound; bounds have no bound of their own.")
        return Symbol(self.bound_name, self.program, None)

    def evaluate(self, env: Mapping[Symbol, int]) -> int:
        try:
            return env[self]  # an int, or a traced scalar inside point-valued payloads
        except KeyError:
            raise IndexExprError(f"no value for symbol `{self.name}`") from None

    def render(self, precedence: int) -> str:
        return self.name


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class Const(Expr):
    value: int

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise IndexExprError(f"index constants must be ints, got {self.value!r}")

    def evaluate(self, env: Mapping[Symbol, int]) -> int:
        return self.value

    def render(self, precedence: int) -> str:
        text = str(self.value)
        return f"({text})" if self.value < 0 and precedence > 0 else text


class _Binary(Expr):
    __slots__ = ()
    a: Expr
    b: Expr
    symbol: str = "?"
    precedence: int = 0
    fn: Callable[[int, int], int]

    def children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)

    def rebuild(self, children: tuple[Expr, ...]) -> Expr:
        return type(self)(*children)

    def evaluate(self, env: Mapping[Symbol, int]) -> int:
        return type(self).fn(self.a.evaluate(env), self.b.evaluate(env))

    def render(self, precedence: int) -> str:
        p = self.precedence
        # Left-associative: the right operand of - // % needs brackets at equal precedence.
        right_p = p + 1 if self.symbol in ("-", "//", "%", "*") else p
        text = f"{self.a.render(p)} {self.symbol} {self.b.render(right_p)}"
        return f"({text})" if precedence > p else text


def _floordiv(a: int, b: int) -> int:
    if isinstance(b, numbers.Integral) and b == 0:
        raise IndexExprError("division by zero in an index expression")
    return a // b


def _mod(a: int, b: int) -> int:
    if isinstance(b, numbers.Integral) and b == 0:
        raise IndexExprError("modulo by zero in an index expression")
    return a % b


def _jnp(*values: object):  # the array module for ``values``: numpy unless one is a JAX array
    if all(isinstance(v, np.ndarray | np.generic | numbers.Number) for v in values):
        return np
    import jax.numpy as jnp  # imported lazily: only traced (compiled) evaluation needs it

    return jnp


def _is_python(value: object) -> bool:
    return isinstance(value, numbers.Integral | bool)


def _truth(value: object) -> object:
    """A condition's value: 0/1 for Python operands, a traced bool under JAX."""
    return int(value) if isinstance(value, bool | numbers.Integral) else value


def _logical(name: str, a: object, b: object) -> object:
    if _is_python(a) and _is_python(b):
        return int(bool(a) and bool(b)) if name == "logical_and" else int(bool(a) or bool(b))
    return getattr(_jnp(a, b), name)(a, b)


def _min(a: int, b: int) -> int:
    # Also evaluated on traced JAX scalars (point-valued payloads), hence jnp off the fast path.
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    return _jnp(a, b).minimum(a, b)


def _max(a: int, b: int) -> int:
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    return _jnp(a, b).maximum(a, b)


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class Add(_Binary):
    a: Expr
    b: Expr
    symbol = "+"
    precedence = 1
    fn = staticmethod(operator.add)


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class Sub(_Binary):
    a: Expr
    b: Expr
    symbol = "-"
    precedence = 1
    fn = staticmethod(operator.sub)


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class Mul(_Binary):
    a: Expr
    b: Expr
    symbol = "*"
    precedence = 2
    fn = staticmethod(operator.mul)

    def render(self, precedence: int) -> str:
        if self.a == Const(-1):
            text = f"-{self.b.render(3)}"
            return f"({text})" if precedence > 1 else text
        return super().render(precedence)


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class FloorDiv(_Binary):
    a: Expr
    b: Expr
    symbol = "//"
    precedence = 2
    fn = staticmethod(_floordiv)


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class Mod(_Binary):
    a: Expr
    b: Expr
    symbol = "%"
    precedence = 2
    fn = staticmethod(_mod)


class _Call(_Binary):
    __slots__ = ()

    def render(self, precedence: int) -> str:
        return f"{self.symbol}({self.a.render(0)}, {self.b.render(0)})"


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class Min(_Call):
    a: Expr
    b: Expr
    symbol = "min"
    fn = staticmethod(_min)


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class Max(_Call):
    a: Expr
    b: Expr
    symbol = "max"
    fn = staticmethod(_max)


def minimum(*args: IntLike) -> Expr:
    """Symbolic ``min`` of two or more index expressions."""
    return _fold_call(Min, args)


def maximum(*args: IntLike) -> Expr:
    """Symbolic ``max`` of two or more index expressions."""
    return _fold_call(Max, args)


def _fold_call(cls: type, args: tuple[IntLike, ...]) -> Expr:
    if len(args) < 2:
        raise IndexExprError(f"{cls.symbol}() of index expressions needs at least two arguments")
    result = as_expr(args[0])
    for arg in args[1:]:
        result = _arith(cls, result, arg)
    return result


# ---------------------------------------------------------------------------------------------
# Boolean nodes
# ---------------------------------------------------------------------------------------------


class _BoolExpr(Expr):
    __slots__ = ()

    @property
    def is_bool(self) -> bool:
        return True

    def __bool__(self) -> bool:
        raise IndexExprError(
            f"the condition `{self}` is symbolic and has no truth value in Python; use it to "
            "index a definition (`x[t < 5] = ...`) or with `&`, `|`, `~`."
        )


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class BoolConst(_BoolExpr):
    value: bool

    def __bool__(self) -> bool:
        return self.value

    def evaluate(self, env: Mapping[Symbol, int]) -> int:
        return int(self.value)

    def render(self, precedence: int) -> str:
        return "True" if self.value else "False"


TRUE = BoolConst(True)
FALSE = BoolConst(False)

_CMP_FNS: dict[str, Callable[[int, int], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class Cmp(_BoolExpr):
    op: str
    a: Expr
    b: Expr

    def __post_init__(self) -> None:
        if self.op not in _CMP_FNS:
            raise IndexExprError(f"unknown comparison {self.op!r}")
        for side in (self.a, self.b):
            if side.is_bool:
                raise IndexExprError(f"`{side}` is a condition; comparisons take integers.")

    def children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)

    def rebuild(self, children: tuple[Expr, ...]) -> Expr:
        return Cmp(self.op, *children)

    def evaluate(self, env: Mapping[Symbol, int]) -> int:
        return _truth(_CMP_FNS[self.op](self.a.evaluate(env), self.b.evaluate(env)))

    def render(self, precedence: int) -> str:
        text = f"{self.a.render(1)} {self.op} {self.b.render(1)}"
        return f"({text})" if precedence > 0 else text


def eq(a: IntLike, b: IntLike) -> Expr:
    """The condition ``a == b`` (``==`` on expressions is structural equality)."""
    return Cmp("==", as_expr(a), as_expr(b))


def ne(a: IntLike, b: IntLike) -> Expr:
    """The condition ``a != b``."""
    return Cmp("!=", as_expr(a), as_expr(b))


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class And(_BoolExpr):
    a: Expr
    b: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)

    def rebuild(self, children: tuple[Expr, ...]) -> Expr:
        return And(*children)

    def evaluate(self, env: Mapping[Symbol, int]) -> int:
        return _logical("logical_and", self.a.evaluate(env), self.b.evaluate(env))

    def render(self, precedence: int) -> str:
        text = f"{self.a.render(2)} & {self.b.render(2)}"
        return f"({text})" if precedence > 2 else text


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class Or(_BoolExpr):
    a: Expr
    b: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)

    def rebuild(self, children: tuple[Expr, ...]) -> Expr:
        return Or(*children)

    def evaluate(self, env: Mapping[Symbol, int]) -> int:
        return _logical("logical_or", self.a.evaluate(env), self.b.evaluate(env))

    def render(self, precedence: int) -> str:
        text = f"{self.a.render(2)} | {self.b.render(2)}"
        return f"({text})" if precedence > 1 else text


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class Not(_BoolExpr):
    a: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.a,)

    def rebuild(self, children: tuple[Expr, ...]) -> Expr:
        return Not(*children)

    def evaluate(self, env: Mapping[Symbol, int]) -> int:
        value = self.a.evaluate(env)
        return _truth(not value) if _is_python(value) else _jnp(value).logical_not(value)

    def render(self, precedence: int) -> str:
        return f"~{self.a.render(3)}"


# ---------------------------------------------------------------------------------------------
# Slices (index items, not expressions)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class Slice:
    """The range ``start:stop`` (step 1) over one domain dim."""

    start: Expr
    stop: Expr

    @property
    def size(self) -> Expr:
        from .simplify import simplify

        return simplify(self.stop - self.start)

    def children(self) -> tuple[Expr, ...]:
        return (self.start, self.stop)

    def evaluate(self, env: Mapping[Symbol, int]) -> range:
        return range(self.start.evaluate(env), self.stop.evaluate(env))

    def __str__(self) -> str:
        return f"{self.start.render(1)}:{self.stop.render(1)}"

    def __repr__(self) -> str:
        return str(self)


IndexItem = Expr | Slice


# ---------------------------------------------------------------------------------------------
# Traversals
# ---------------------------------------------------------------------------------------------


def walk(item: IndexItem) -> Iterator[Expr]:
    """All nodes of an expression (or both ends of a slice), pre-order."""
    stack: list[Expr] = list(reversed(item.children())) if isinstance(item, Slice) else [item]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children()))


def symbols_of(item: IndexItem) -> frozenset[Symbol]:
    """Every symbol (dims and bounds) that occurs in an expression or slice."""
    return frozenset(node for node in walk(item) if isinstance(node, Symbol))


def dims_of(item: IndexItem) -> frozenset[Symbol]:
    """The domain dims (not bounds) that occur in an expression or slice."""
    return frozenset(s for s in symbols_of(item) if not s.is_bound)


def conjuncts(cond: Expr) -> list[Expr]:
    """The terms of a conjunction ``a & b & ...``, in order (``[cond]`` when it is not one)."""
    if isinstance(cond, And):
        return conjuncts(cond.a) + conjuncts(cond.b)
    return [cond]


def substitute(item: IndexItem, mapping: Mapping[Symbol, Expr]) -> IndexItem:
    """Replace symbols by expressions (simultaneously)."""
    if isinstance(item, Slice):
        return Slice(substitute(item.start, mapping), substitute(item.stop, mapping))
    if isinstance(item, Symbol):
        return mapping.get(item, item)
    children = item.children()
    if not children:
        return item
    return item.rebuild(tuple(substitute(c, mapping) for c in children))


def format_index(items: tuple[IndexItem, ...]) -> str:
    """``t-1, 0:t+1`` style text for an index tuple."""
    return ", ".join(str(item) for item in items)
