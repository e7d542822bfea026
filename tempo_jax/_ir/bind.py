"""Binding a program to concrete bounds and input arrays, with the user-facing checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError, MissingBoundError
from .expr import Symbol
from .program import Program
from .source import describe


@dataclasses.dataclass(frozen=True)
class DynamicBound:
    """A bound known only at call time, in ``min..max`` (see :func:`dynamic`)."""

    max: int
    min: int = 1


def dynamic(max: int, min: int = 1) -> DynamicBound:
    """A bound given at call time: ``p.compile(bounds={T: tj.dynamic(max=4096)})`` compiles
    once, then ``compiled(T=537, ...)`` runs with ``T = 537``; outputs over ``t`` are padded
    to ``max`` and the valid lengths come back under ``"lengths"``.

    Every read is checked at compile time for every value in ``min..max``: a program that
    reads ``x[3]`` needs ``T >= 4``, i.e. ``tj.dynamic(max=4096, min=4)``.
    """
    for name, value in (("max", max), ("min", min)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise MissingBoundError(f"tj.dynamic({name}=...) needs a positive int, got {value!r}")
    if min > max:
        raise MissingBoundError(f"tj.dynamic(max={max}, min={min}): min is above max")
    return DynamicBound(int(max), int(min))


def split_dynamic(
    program: Program, bounds: Mapping[Any, Any]
) -> tuple[dict[Symbol, int], dict[Symbol, DynamicBound]]:
    """(every bound at its value, or its max when dynamic; the dynamic bounds)."""
    plain = {k: (v.max if isinstance(v, DynamicBound) else v) for k, v in bounds.items()}
    env = resolve_bounds(program, plain)
    by_name = {b.name: b for b in program.bounds} | {d.name: d.bound for d in program.dims}
    return env, {
        by_name[k if isinstance(k, str) else k.name]: v
        for k, v in bounds.items()
        if isinstance(v, DynamicBound)
    }


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
    """Check every input is given once with the right shape, and convert it to an array (a
    ``jax.ShapeDtypeStruct`` stays one, of the declared dtype: a lowering for those shapes)."""
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
        abstract = isinstance(given[name], jax.ShapeDtypeStruct)
        if not abstract:
            check_fits(name, where, given[name], op.outputs[0].dtype)
        value = given[name] if abstract else jnp.asarray(given[name])
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
        arrays[name] = (
            jax.ShapeDtypeStruct(value.shape, spec_dtype, sharding=value.sharding)
            if abstract
            else value.astype(spec_dtype)
        )
    return arrays


def check_fits(name: str, where: str, value: Any, dtype: np.dtype) -> None:
    """An integer input's values must fit its declared integer ``dtype`` (no silent wrap).

    Checked on concrete values only (not under ``jax.jit``), and only when the dtypes differ:
    a value already of ``dtype`` fits, and needs no device round trip.
    """
    if dtype.kind not in "iu" or isinstance(value, jax.core.Tracer):
        return
    given = getattr(value, "dtype", None)
    if given is not None and (given == dtype or np.dtype(given).kind not in "iu"):
        return
    array = np.asarray(value)
    if array.dtype.kind not in "iu" or array.size == 0:
        return  # floats and bools: the dtype check of `resolve_inputs` decides
    info = np.iinfo(dtype)
    low, high = array.min(), array.max()
    if low < info.min or high > info.max:
        bad = high if high > info.max else low
        raise InputError(
            f"input {name!r} (declared{where}) holds {bad}, outside the range of its declared "
            f"{dtype.name} ({info.min}..{info.max}); it would wrap around. Pass values in that "
            f"range, or declare the input with a wider dtype (64-bit ones need "
            "`jax.config.update('jax_enable_x64', True)`)."
        )
