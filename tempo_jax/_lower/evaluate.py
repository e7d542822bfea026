"""Index expressions evaluated once per trace: a point, a read's start, a merge's condition.

The lowering evaluates the same expressions over and over while it traces one loop body:
every exec of a nest at ``(i, e, m)`` computes its point, every merge over that domain tests
the same branch conditions (an optimiser's twenty-six states and twelve parameters, four
conditions each), every read of ``x[t - 1]`` computes ``t - 1``. Each evaluation is new JAX
operations, and the program XLA compiles grows with them. :class:`Evaluator` computes each
expression once per set of values of its symbols, in the trace it runs in: a value traced
inside a ``lax.cond`` branch or a loop body is never reused outside it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from .._ir.expr import Expr, Symbol, symbols_of

try:  # the trace JAX is recording into (a new one inside each cond branch and loop body)
    from jax._src.core import trace_ctx as _trace_ctx
except ImportError:  # pragma: no cover - an older or newer JAX: nothing is reused
    _trace_ctx = None


@functools.lru_cache(maxsize=65536)
def _names(expr: Expr) -> tuple[Symbol, ...]:
    return tuple(sorted(symbols_of(expr), key=lambda s: s.name))


class Evaluator:
    """``evaluator(expr, env)``: ``expr.evaluate(env)``, computed once per trace and per
    values of the symbols it reads (a traced value by identity, a Python int by value);
    ``evaluator.index(expr, env)``: the same as a coordinate (a Python int as it is, else an
    int32 scalar)."""

    def __init__(self) -> None:
        # key -> (what the key's ids name, kept alive so no id is reused; the value)
        self._memo: dict[tuple, tuple[Any, Any]] = {}

    def __call__(self, expr: Expr, env: Mapping[Symbol, Any]) -> Any:
        return self._get("value", expr, env)

    def index(self, expr: Expr, env: Mapping[Symbol, Any]) -> Any:
        return self._get("index", expr, env)

    def _get(self, kind: str, expr: Expr, env: Mapping[Symbol, Any]) -> Any:
        trace = None if _trace_ctx is None else _trace_ctx.trace
        names = _names(expr)
        if trace is None or any(name not in env for name in names):
            return _compute(kind, expr, env)  # an unknown symbol raises as evaluate does
        values = tuple(env[name] for name in names)
        key = (kind, expr, id(trace), tuple(v if isinstance(v, int) else id(v) for v in values))
        hit = self._memo.get(key)
        if hit is not None:
            return hit[1]
        value = _compute(kind, expr, env)
        self._memo[key] = ((trace, values), value)
        return value


def _compute(kind: str, expr: Expr, env: Mapping[Symbol, Any]) -> Any:
    value = expr.evaluate(env)
    if kind == "index" and not isinstance(value, int):
        return jnp.asarray(value, jnp.int32)
    return value
