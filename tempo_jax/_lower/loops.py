"""The loops the lowering runs: a ``fori_loop`` (of static length where the range is known
only at run time) and a ``while_loop`` that ends where ``p.stop_when``'s condition held."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Buffers = dict[tuple, jax.Array]


def fori(lo: Any, hi: Any, body: Callable, carried: Buffers, trips: int | None) -> Buffers:
    """``fori_loop(lo, hi, body)``; a range known only at run time, with at most ``trips``
    iterations, runs as ``trips`` steps that skip past ``hi``: a static-length loop, which
    reverse-mode autodiff can go through (a ``while_loop`` cannot)."""
    if trips is None or (isinstance(lo, int) and isinstance(hi, int)):
        return lax.fori_loop(lo, hi, body, carried)

    def step(j: Any, b: Buffers) -> Buffers:
        k = lo + j
        return lax.cond(k < hi, lambda b: body(k, b), lambda b: b, b)

    return lax.fori_loop(0, trips, step, carried)


def stoppable(
    body: Callable, lo: Any, hi: Any, carried: Buffers, peeled: bool, stopped: tuple
) -> Buffers:
    """Iterations ``lo .. hi - 1`` of ``body`` up to the one where the stop condition held
    (``carried[stopped]``)."""
    if peeled:
        return lax.cond(carried[stopped], lambda b: b, lambda b: body(lo, b), carried)

    def more(state: tuple[Any, Buffers]) -> Any:
        k, b = state
        return (k < hi) & ~b[stopped]

    def step(state: tuple[Any, Buffers]) -> tuple[Any, Buffers]:
        k, b = state
        return k + 1, body(k, b)

    return lax.while_loop(more, step, (jnp.asarray(lo, jnp.int32), carried))[1]
