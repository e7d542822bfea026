"""Creating recurrent tensors: inputs, placeholders and constants."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._ir.errors import ShapeError, TempoError
from .._ir.expr import Expr, Symbol, as_expr, dims_of, symbols_of
from .._ir.program import Dim, Payload, TensorSpec, static_dim
from .._ir.source import SourceInfo, capture_source, describe
from .program import Program, active_program
from .tensor import RecurrentTensor, TensorMeta, as_tensor, record

_ASSIGNED = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?::[^=]*)?=[^=]")


def input(
    name: str, shape: Sequence[Dim] = (), dtype: Any = jnp.float32, domain: Sequence[Symbol] = ()
) -> RecurrentTensor:
    """A program input; the array passed at run has shape ``(*domain bounds, *shape)``.

    Example: ``x0 = tj.input("x0", (4,), jnp.float32, domain=(b,))``.
    """
    source = capture_source()
    program = active_program("tj.input")
    program.register_input(name, source)
    domain_t, spec = _declare(program, f"input {name!r}", shape, dtype, domain, source)
    op = program.add_op(
        kind="input", name=name, domain=domain_t, inputs=(), outputs=(spec,), source=source
    )
    return RecurrentTensor(
        TensorMeta(program, op.id, 0, None, domain_t, spec.shape, spec.dtype, source)
    )


def placeholder(
    shape: Sequence[Dim] = (),
    dtype: Any = jnp.float32,
    domain: Sequence[Symbol] = (),
    name: str | None = None,
) -> RecurrentTensor:
    """A tensor defined afterwards by ordered branches (``x[0] = ...``, ``x[t+1] = ...``).

    Its name defaults to the variable it is assigned to.
    """
    source = capture_source()
    program = active_program("tj.placeholder")
    name = name or _assigned_name(source) or "placeholder"
    domain_t, spec = _declare(program, f"placeholder {name!r}", shape, dtype, domain, source)
    op = program.add_op(
        kind="merge", name=name, domain=domain_t, inputs=(), outputs=(spec,), source=source
    )
    return RecurrentTensor(
        TensorMeta(program, op.id, 0, None, domain_t, spec.shape, spec.dtype, source)
    )


def const(value: Any, dtype: Any = None) -> RecurrentTensor:
    """A constant tensor with an empty domain (broadcast over any domain it meets)."""
    array = jnp.asarray(value, dtype=dtype)
    return as_tensor(array, active_program("tj.const"), capture_source())


def full(shape: int | Sequence[int], fill_value: Any, dtype: Any = None) -> RecurrentTensor:
    """A constant tensor of ``shape`` filled with ``fill_value``."""
    return const(jnp.full(shape, fill_value, dtype=dtype))


def zeros(shape: int | Sequence[int], dtype: Any = jnp.float32) -> RecurrentTensor:
    """A constant tensor of zeros."""
    return const(jnp.zeros(shape, dtype=dtype))


def ones(shape: int | Sequence[int], dtype: Any = jnp.float32) -> RecurrentTensor:
    """A constant tensor of ones."""
    return const(jnp.ones(shape, dtype=dtype))


def zeros_like(x: RecurrentTensor, dtype: Any = None) -> RecurrentTensor:
    """Zeros with the shape (and domain) of ``x``, and its dtype unless ``dtype`` is given."""
    return record(
        jnp.zeros_like, (x,), {"dtype": dtype}, name="zeros_like", source=capture_source()
    )


def ones_like(x: RecurrentTensor, dtype: Any = None) -> RecurrentTensor:
    """Ones with the shape (and domain) of ``x``, and its dtype unless ``dtype`` is given."""
    return record(jnp.ones_like, (x,), {"dtype": dtype}, name="ones_like", source=capture_source())


def _declare(
    program: Program,
    what: str,
    shape: Sequence[Dim],
    dtype: Any,
    domain: Sequence[Symbol],
    source: SourceInfo,
) -> tuple[tuple[Symbol, ...], TensorSpec]:
    if isinstance(domain, Symbol):
        domain = (domain,)
    for dim in domain:
        if not isinstance(dim, Symbol) or dim.is_bound:
            raise TempoError(
                f"the domain of {what}{describe(source)} must list dims from `p.dims(...)`, "
                f"got `{dim}`"
            )
        program.check_symbol(dim, what, source)
    if len(set(domain)) != len(domain):
        raise TempoError(f"the domain of {what}{describe(source)} repeats a dim")
    ordered = program.sort_domain(set(domain))
    if tuple(domain) != ordered:
        names = ", ".join(d.name for d in ordered)
        raise TempoError(
            f"the domain of {what}{describe(source)} lists its dims out of order; list them as "
            f"declared by `p.dims`: ({names})."
        )
    dims: list[Dim] = []
    sizes = (shape,) if isinstance(shape, int | Expr) else tuple(shape)
    for size in sizes:
        expr = as_expr(size)
        for sym in symbols_of(expr):
            program.check_symbol(sym, what, source)
        if dims_of(expr):
            raise TempoError(
                f"the shape of {what}{describe(source)} uses dims ({expr}); declared shapes may "
                "use constants and bounds only."
            )
        dim = static_dim(expr)
        if isinstance(dim, int) and dim < 0:
            raise ShapeError(
                f"the shape of {what}{describe(source)} is {sizes}: axis {len(dims)} has "
                f"the negative size {dim}. Every size must be >= 0 (there is no `-1` to infer a "
                "size from): give the size itself."
            )
        dims.append(dim)
    return ordered, TensorSpec(tuple(dims), np.dtype(dtype))


def _assigned_name(source: SourceInfo) -> str | None:
    match = _ASSIGNED.match(source.code)
    return match.group(1) if match else None


def sink(value: RecurrentTensor, fn: Callable[[Any, dict[str, int]], None]) -> None:
    """Call ``fn(value, point)`` on the host once per point of ``value``'s domain.

    ``point`` maps dim names to ints. For logging metrics per iteration: the compiled program
    calls ``fn`` in schedule order through an ordered ``jax.debug.callback``, and its call
    returns once every sink call has run; the reference interpreter calls ``fn`` in
    lexicographic point order. An exception ``fn`` raises stops the run and is raised by the
    call as itself, with a note naming the sink's line and the point. On a device mesh
    (``compile(mesh=...)``) the callback is unordered, as JAX runs ordered ones on one device
    only: calls follow their loop's steps, two sinks of one step may run in either order, and
    after an exception the run finishes (its later sink calls skipped) before it is raised.
    Example::

        tj.sink(loss, lambda v, pt: print(pt["i"], float(v)))
    """
    source = capture_source()
    if not isinstance(value, RecurrentTensor):
        raise TempoError(f"`tj.sink`{describe(source)} takes a recurrent tensor, got {value!r}")
    value.program.add_op(
        kind="sink",
        name=f"sink {getattr(fn, '__name__', 'fn')}",
        domain=value.domain,
        inputs=(value.edge(),),
        outputs=(),
        payload=Payload(fn, "sink", uses_point=True),
        source=source,
    )
