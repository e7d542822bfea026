"""Shared by the lowering tests: recording what the lowering builds, layer inputs, a
recurrence to store, and every equation of a jaxpr."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

import tempo_jax as tj


@contextlib.contextmanager
def recording(owner: type, name: str, keep: str = "result") -> Iterator[list[Any]]:
    """Every call of the method ``name`` of ``owner`` while the block runs, in call order:
    what it returned (``keep="result"``) or the object it was called on (``keep="self"``)."""
    calls: list[Any] = []
    original = getattr(owner, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        calls.append(self if keep == "self" else result)
        return result

    setattr(owner, name, wrapper)
    try:
        yield calls
    finally:
        setattr(owner, name, original)


def layer_inputs(steps: int, layers: int, width: int) -> dict[str, np.ndarray]:
    """Inputs ``x`` ``[steps, width]`` and per-layer ``wk``, ``wv`` ``[layers, width, width]``
    of the attention-over-layers test programs (fixed seed)."""
    rng = np.random.default_rng(0)
    return {
        "x": rng.normal(size=(steps, width)).astype(np.float32),
        "wk": rng.normal(size=(layers, width, width)).astype(np.float32),
        "wv": rng.normal(size=(layers, width, width)).astype(np.float32),
    }


def decaying(a: tj.RT, width: int, scale: float, start: tj.RT | None = None) -> tj.RT:
    """``x[0] = start`` (zeros by default), ``x[t + 1] = x[t] * scale + a[t]``."""
    (t,) = a.domain
    x = tj.placeholder((width,), jnp.float32, domain=(t,))
    x[0] = tj.zeros((width,), jnp.float32) if start is None else start
    x[t + 1] = x[t] * scale + a[t]
    return x


def equations(jaxpr: jex.Jaxpr) -> Iterator[Any]:
    """The equations of ``jaxpr`` and of every jaxpr nested in them (loop bodies, branches),
    pre-order."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if isinstance(sub, jex.ClosedJaxpr):
                    sub = sub.jaxpr
                if isinstance(sub, jex.Jaxpr):
                    yield from equations(sub)
