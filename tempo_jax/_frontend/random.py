"""Randomness from an explicit key, folded with the domain point (no global RNG state).

``tj.random.normal(key, (4,), domain=(b, t))`` draws, at each point ``(b, t)``, from
``fold_in(fold_in(key, b), t)``: deterministic, and different at every point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._ir.expr import Symbol
from .._ir.source import SourceInfo, capture_source
from .tensor import RecurrentTensor, as_tensor, record


def key_at(key: Any, domain: Sequence[Symbol] = ()) -> RecurrentTensor:
    """The key folded with every dim of ``domain`` and of the key's own domain.

    Pass it to lifted functions that take a key, e.g. ``tj.lift(env.reset)(key_at(k, (b,)))``.
    """
    return _fold(key, domain, capture_source())


def _fold(key: Any, domain: Sequence[Symbol], source: SourceInfo) -> RecurrentTensor:
    key_rt = as_tensor(key, source=source)
    program = key_rt.program

    def fold(env: Any, k: Any) -> Any:
        for dim in program.sort_domain({d for d in env if not d.is_bound}):
            k = jax.random.fold_in(k, env[dim])
        return k

    return record(
        fold,
        (key_rt,),
        {},
        name="fold_in",
        source=source,
        extra_domain=frozenset(domain),
        uses_point=True,
        program=program,
    )


def normal(
    key: Any, shape: Sequence[int] = (), dtype: Any = jnp.float32, domain: Sequence[Symbol] = ()
) -> RecurrentTensor:
    """Standard normal samples of ``shape`` at each point of ``domain``."""
    source = capture_source()
    k = _fold(key, domain, source)
    return record(jax.random.normal, (k, tuple(shape), dtype), {}, name="normal", source=source)


def uniform(
    key: Any,
    shape: Sequence[int] = (),
    dtype: Any = jnp.float32,
    minval: Any = 0.0,
    maxval: Any = 1.0,
    domain: Sequence[Symbol] = (),
) -> RecurrentTensor:
    """Uniform samples in ``[minval, maxval)`` at each point of ``domain``."""
    source = capture_source()
    k = _fold(key, domain, source)
    return record(
        jax.random.uniform,
        (k, tuple(shape), dtype, minval, maxval),
        {},
        name="uniform",
        source=source,
    )


def bernoulli(
    key: Any, p: Any = 0.5, shape: Sequence[int] | None = None, domain: Sequence[Symbol] = ()
) -> RecurrentTensor:
    """Bernoulli samples with probability ``p`` at each point of ``domain``."""
    source = capture_source()
    k = _fold(key, domain, source)
    return record(jax.random.bernoulli, (k, p, shape), {}, name="bernoulli", source=source)


def categorical(
    key: Any, logits: Any, axis: int = -1, domain: Sequence[Symbol] = ()
) -> RecurrentTensor:
    """Samples from the categorical distribution of ``logits`` at each point."""
    source = capture_source()
    k = _fold(key, domain, source)
    return record(
        jax.random.categorical, (k, logits), {"axis": axis}, name="categorical", source=source
    )


def randint(
    key: Any,
    shape: Sequence[int],
    minval: Any,
    maxval: Any,
    dtype: Any = jnp.int32,
    domain: Sequence[Symbol] = (),
) -> RecurrentTensor:
    """Integers in ``[minval, maxval)`` at each point of ``domain``."""
    source = capture_source()
    k = _fold(key, domain, source)
    return record(
        jax.random.randint,
        (k, tuple(shape), minval, maxval, dtype),
        {},
        name="randint",
        source=source,
    )
