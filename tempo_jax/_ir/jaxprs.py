"""Walking JAX programs: which equations call a nested jaxpr, and binding one equation.

Passes and the lowering re-evaluate payload jaxprs equation by equation (masking padded rows,
tiling ranges, contracting summed products); these are the pieces they share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.extend.core as jex

# call-like primitives -> the parameter holding the jaxpr they call
CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
}


def bind(eqn: jex.JaxprEqn, values: Sequence[Any]) -> list[Any]:
    """``eqn`` applied to ``values`` (traced or concrete): its outputs as a list."""
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*values, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def used_inputs(closed: jex.ClosedJaxpr) -> list[bool]:
    """Per input of ``closed``, whether its outputs depend on it: a backward walk from the
    outputs over its equations (an equation with effects keeps all its inputs; a call is one
    equation, using every input it is passed)."""
    jaxpr = closed.jaxpr
    live = {id(v) for v in jaxpr.outvars if isinstance(v, jex.Var)}
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(id(v) in live for v in eqn.outvars):
            live.update(id(v) for v in eqn.invars if isinstance(v, jex.Var))
    return [id(v) in live for v in jaxpr.invars]
