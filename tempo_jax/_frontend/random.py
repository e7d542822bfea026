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


def key_at(key: Any, domain: Symbol | Sequence[Symbol] = ()) -> RecurrentTensor:
    """The key folded with every dim of ``domain`` and of the key's own domain.

    Pass it to lifted functions that take a key, e.g. ``tj.lift(env.reset)(key_at(k, (b,)))``.
    """
    return _fold(key, _dims(domain), capture_source())


def _dims(domain: Symbol | Sequence[Symbol]) -> frozenset[Symbol]:
    return frozenset((domain,) if isinstance(domain, Symbol) else domain)


def _fold(key: Any, dims: frozenset[Symbol], source: SourceInfo) -> RecurrentTensor:
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
        extra_domain=dims,
        uses_point=True,
        program=program,
    )


def _sample(
    sampler: Any,
    key: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    domain: Symbol | Sequence[Symbol],
    source: SourceInfo,
) -> RecurrentTensor:
    """``sampler(k, *args, **kwargs)`` with ``k`` the key folded over the whole result domain:
    the given ``domain`` and the domains of tensor arguments (e.g. per-env logits)."""
    dims = set(_dims(domain))
    for leaf in jax.tree_util.tree_leaves(
        (args, kwargs), is_leaf=lambda v: isinstance(v, RecurrentTensor)
    ):
        if isinstance(leaf, RecurrentTensor):
            dims |= set(leaf.domain)
    k = _fold(key, frozenset(dims), source)
    return record(sampler, (k, *args), kwargs, name=sampler.__name__, source=source)


def normal(
    key: Any,
    shape: Sequence[int] = (),
    dtype: Any = jnp.float32,
    domain: Symbol | Sequence[Symbol] = (),
) -> RecurrentTensor:
    """Standard normal samples of ``shape`` at each point of ``domain``."""
    return _sample(jax.random.normal, key, (tuple(shape), dtype), {}, domain, capture_source())


def uniform(
    key: Any,
    shape: Sequence[int] = (),
    dtype: Any = jnp.float32,
    minval: Any = 0.0,
    maxval: Any = 1.0,
    domain: Symbol | Sequence[Symbol] = (),
) -> RecurrentTensor:
    """Uniform samples in ``[minval, maxval)`` at each point of ``domain``."""
    args = (tuple(shape), dtype, minval, maxval)
    return _sample(jax.random.uniform, key, args, {}, domain, capture_source())


def bernoulli(
    key: Any,
    p: Any = 0.5,
    shape: Sequence[int] | None = None,
    domain: Symbol | Sequence[Symbol] = (),
) -> RecurrentTensor:
    """Bernoulli samples with probability ``p`` at each point of ``domain``."""
    return _sample(jax.random.bernoulli, key, (p, shape), {}, domain, capture_source())


def categorical(
    key: Any, logits: Any, axis: int = -1, domain: Symbol | Sequence[Symbol] = ()
) -> RecurrentTensor:
    """Samples from the categorical distribution of ``logits`` at each point."""
    return _sample(jax.random.categorical, key, (logits,), {"axis": axis}, domain, capture_source())


def randint(
    key: Any,
    shape: Sequence[int],
    minval: Any,
    maxval: Any,
    dtype: Any = jnp.int32,
    domain: Symbol | Sequence[Symbol] = (),
) -> RecurrentTensor:
    """Integers in ``[minval, maxval)`` at each point of ``domain``."""
    args = (tuple(shape), minval, maxval, dtype)
    return _sample(jax.random.randint, key, args, {}, domain, capture_source())
