"""Binding a program to concrete bounds and input arrays, with the user-facing checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from .errors import InputError, MissingBoundError
from .expr import Symbol
from .program import Program
from .source import describe


@dataclasses.dataclass(frozen=True)
class DynamicBound:
    """A bound known only at call time, at most ``max`` (see :func:`dynamic`)."""

    max: int


def dynamic(max: int) -> DynamicBound:
    """A bound given at call time: ``p.compile(bounds={T: tj.dynamic(max=4096)})`` compiles
    once, then ``compiled(T=537, ...)`` runs with ``T = 537``; outputs over ``t`` are padded
    to ``max`` and the valid lengths come back under ``"lengths"``."""
    if isinstance(max, bool) or not isinstance(max, int) or max < 1:
        raise MissingBoundError(f"tj.dynamic(max=...) needs a positive int, got {max!r}")
    return DynamicBound(max)


def split_dynamic(
    program: Program, bounds: Mapping[Any, Any]
) -> tuple[dict[Symbol, int], dict[Symbol, int]]:
    """(every bound at its value, or its max when dynamic; the dynamic bounds' maxima)."""
    plain = {k: (v.max if isinstance(v, DynamicBound) else v) for k, v in bounds.items()}
    env = resolve_bounds(program, plain)
    names = {
        k if isinstance(k, str) else k.name
        for k, v in bounds.items()
        if isinstance(v, DynamicBound)
    }
    by_name = {b.name: b for b in program.bounds} | {d.name: d.bound for d in program.dims}
    return env, {by_name[n]: env[by_name[n]] for n in names}


def resolve_bounds(program: Program, bounds: Mapping[Any, int]) -> dict[Symbol, int]:
    """Bound symbol -> value, accepting bound symbols, dims or names as keys."""
    by_name = {b.name: b for b in program.bounds}
    by_name.update({d.name: d.bound for d in program.dims})
    env: dict[Symbol, int] = {}
    for key, value in bounds.items():
        name = key if isinstance(key, str) else getattr(key, "name", None)
        if (
            not isinstance(name, str)
            or name not in by_name
            or (isinstance(key, Symbol) and key not in program.bounds and key not in program.dims)
        ):
            known = ", ".join(sorted(b.name for b in program.bounds))
            raise MissingBoundError(f"`{key}` is not a bound of this program (bounds: {known})")
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise MissingBoundError(f"bound `{name}` must be a positive int, got {value!r}")
        env[by_name[name]] = int(value)
    missing = [b.name for b in program.bounds if b not in env]
    if missing:
        names = ", ".join(missing)
        example = ", ".join(f"{m}: ..." for m in missing)
        raise MissingBoundError(
            f"no value for the bound(s) {names}; pass them, e.g. `bounds={{{example}}}`."
        )
    return env


def resolve_inputs(
    program: Program, env: Mapping[Symbol, int], given: Mapping[str, Any]
) -> dict[str, Any]:
    """Check every input is given once with the right shape, and convert it to an array."""
    declared = program.inputs
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise InputError(
            f"unknown input(s) {', '.join(map(repr, unknown))}; this program's inputs are "
            f"{', '.join(map(repr, sorted(declared))) or 'none'}."
        )
    arrays = {}
    for name, op in declared.items():
        where = describe(op.source)
        if name not in given:
            raise InputError(f"input {name!r} (declared{where}) was not given")
        want = tuple(env[d.bound] for d in op.domain) + op.outputs[0].concrete_shape(env)
        value = jnp.asarray(given[name])
        if tuple(value.shape) != want:
            raise InputError(
                f"input {name!r} (declared{where}) has shape {tuple(value.shape)}, expected "
                f"{want}: the domain bounds ({', '.join(d.bound.name for d in op.domain)}) "
                f"then the spatial shape {op.outputs[0]}."
            )
        spec_dtype = op.outputs[0].dtype
        if not np.can_cast(value.dtype, spec_dtype, casting="same_kind"):
            raise InputError(
                f"input {name!r} (declared{where}) is {value.dtype.name}, which does not convert "
                f"to the declared {spec_dtype.name}."
            )
        arrays[name] = value.astype(spec_dtype)
    return arrays
