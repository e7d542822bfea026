"""Cleanup passes: duplicate ops merged, invariant dims hoisted, constants folded.

- :func:`eliminate_common_ops` (CSE): two ops that read the same points of the same ops and
  compute the same function (their payloads' jaxprs and captured constants are equal) hold
  the same value; readers of the later one read the first, and the later one is dropped.
- :func:`hoist_invariants`: an op whose computation ignores a dim of its domain (no read
  index, condition or size mentions it, and every reader reads one point of it) computes the
  same value at every point of that dim; the dim is dropped, so it runs once, not per step.
- :func:`fold_constants`: an op of empty domain computed from constants only is evaluated
  at compile time and becomes a constant (small outputs only: large ones bloat the HLO).

Each returns the program unchanged (the same object) when it finds nothing to do, and keeps
the outputs and the ids of surviving ops. Values are unchanged, with one licence: a read that
was out of range before hoisting (an error the verifier and read checks already exclude) reads
the hoisted value after.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._ir.expr import Slice, Symbol
from .._ir.program import Edge, Op, Payload, Program

MAX_FOLDED_ELEMENTS = 65_536  # a larger folded constant would be baked into the compiled HLO

Fingerprint = tuple[str, tuple[Any, ...]] | None  # jaxpr text and constants; None: no trace


def _rewrite_reads(program: Program, ops: list[Op], fix: Callable[[Edge], Edge]) -> Program:
    """``program`` with ``ops`` whose input edges and the outputs' edges go through ``fix``."""
    new_ops = tuple(op.replace(inputs=tuple(fix(edge) for edge in op.inputs)) for op in ops)
    outputs = tuple(dataclasses.replace(out, edge=fix(out.edge)) for out in program.outputs)
    return program.replace(ops=new_ops, outputs=outputs)


# ---------------------------------------------------------------------------------------------
# Common op elimination
# ---------------------------------------------------------------------------------------------


def eliminate_common_ops(program: Program) -> Program:
    """``program`` with duplicate apply and merge ops merged into the one of smaller id.

    Repeats until no duplicates are left: merging two ops can make their readers duplicates.
    Example: in ``tj.exp(x) + tj.exp(x)`` the second ``exp`` is dropped and ``add`` reads the
    first twice.
    """
    prints: dict[int, Fingerprint] = {}  # an op's fingerprint survives merges of its inputs
    current = program
    while True:
        kept = _duplicates(current, prints)
        if not kept:
            return current
        current = _merged(current, kept)


def _merged(program: Program, kept: Mapping[int, int]) -> Program:
    """``program`` without the ``kept`` keys, their reads redirected to the kept ops."""

    def fix(edge: Edge) -> Edge:
        return dataclasses.replace(edge, src=kept[edge.src]) if edge.src in kept else edge

    return _rewrite_reads(program, [op for op in program.ops if op.id not in kept], fix)


def _duplicates(program: Program, prints: dict[int, Fingerprint]) -> dict[int, int]:
    """Duplicate op id -> the id of the equal op kept (the smallest of its class)."""
    groups: dict[Hashable, list[Op]] = {}
    for op in program.ops:
        key = _cheap_key(op)
        if key is not None:
            groups.setdefault(key, []).append(op)
    kept: dict[int, int] = {}
    for ops in groups.values():
        if len(ops) > 1:
            kept.update(_classes(program, ops, prints))
    return kept


def _classes(program: Program, ops: list[Op], prints: dict[int, Fingerprint]) -> dict[int, int]:
    """Within ops of one cheap key: each op equal to an op of smaller id -> that op's id."""
    kept: dict[int, int] = {}
    representatives: list[Op] = []
    for op in sorted(ops, key=lambda o: o.id):
        same = next((r for r in representatives if _same(program, r, op, prints)), None)
        if same is None:
            representatives.append(op)
        else:
            kept[op.id] = same.id
    return kept


def _cheap_key(op: Op) -> Hashable | None:
    """What two duplicates share besides their computation; ``None`` for ops never merged."""
    if op.kind not in ("apply", "merge"):
        return None
    reads = tuple((e.src, e.out, e.index, e.cond) for e in op.inputs)  # not the source line
    p = op.payload
    flags = None if p is None else (p.uses_point, p.pads_ok, p.differentiable, p.accumulates)
    return op.kind, op.domain, reads, op.outputs, flags


def _same(program: Program, a: Op, b: Op, prints: dict[int, Fingerprint]) -> bool:
    """Whether two ops of one cheap key compute the same function (merges always do)."""
    if a.kind == "merge":
        return True
    for op in (a, b):
        if op.id not in prints:
            prints[op.id] = _fingerprint(program, op)
    first, second = prints[a.id], prints[b.id]
    if first is None or second is None or first[0] != second[0]:
        return False
    return len(first[1]) == len(second[1]) and all(
        _same_array(x, y) for x, y in zip(first[1], second[1], strict=True)
    )


def _fingerprint(program: Program, op: Op) -> Fingerprint:
    """The jaxpr text and constants of an apply op's payload, traced on its read specs.

    ``None`` (never merged) for symbolic shapes, payloads that do not trace abstractly, and
    payloads with effects (callbacks, prints).
    """
    payload = op.payload
    assert payload is not None
    specs = [program.read_spec(edge) for edge in op.inputs]
    if not all(spec.is_static for spec in (*specs, *op.outputs)):
        return None
    weak = [program.op(edge.src).outputs[edge.out].weak_type for edge in op.inputs]
    args: list[Any] = [
        jax.ShapeDtypeStruct(spec.shape, spec.dtype, weak_type=w)
        for spec, w in zip(specs, weak, strict=True)
    ]
    fn = payload.fn
    if payload.uses_point:  # the point's env: every bound and the op's dims, as int32 scalars
        names = (*program.bounds, *op.domain)
        args.insert(0, tuple(jax.ShapeDtypeStruct((), jnp.int32) for _ in names))

        def fn(env: tuple[Any, ...], *values: Any) -> Any:
            return payload.fn(dict(zip(names, env, strict=True)), *values)

    try:
        closed = jax.make_jaxpr(fn)(*args)
    except Exception:  # a payload that only runs on concrete values is never merged
        return None
    return None if closed.effects else (str(closed.jaxpr), tuple(closed.consts))


def _same_array(x: Any, y: Any) -> bool:
    """Same shape, dtype and bits (so NaN equals NaN and 0.0 differs from -0.0)."""
    if x is y:
        return True
    try:
        a, b = np.asarray(x), np.asarray(y)
    except (TypeError, ValueError):  # e.g. typed PRNG keys
        return False
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------------------------------
# Hoisting invariant dims
# ---------------------------------------------------------------------------------------------


def hoist_invariants(program: Program) -> Program:
    """``program`` with every dim an op's value does not depend on dropped from its domain.

    A dim is dropped when the op is an apply (without ``uses_point``) or a merge, no input
    edge (index or condition) and no output size mentions it, and every read of the op (op
    inputs, outputs) reads one point of it, not a range; those reads drop their index item.
    Repeats until nothing changes: a hoisted producer can make its readers invariant. Example:
    ``y[True] = tj.tanh(w)`` over ``(t,)`` with ``w`` over ``()`` runs once. The dim
    ``p.stop_when`` ends is never dropped: points past the stop are not computed, and read as
    zeros.
    """
    current = program
    while True:
        drops = _invariant_dims(current)
        if not drops:
            return current
        current = _drop_dims(current, drops)


def _invariant_dims(program: Program) -> dict[int, frozenset[Symbol]]:
    """Op id -> the dims of its domain it can drop (see :func:`hoist_invariants`)."""
    reads: dict[int, list[Edge]] = {}
    for edge in [e for op in program.ops for e in op.inputs] + [o.edge for o in program.outputs]:
        reads.setdefault(edge.src, []).append(edge)
    found = {}
    for op in program.ops:
        dims = frozenset(
            d for d in op.domain if d != program.stopped and _invariant(op, d, reads.get(op.id, []))
        )
        if dims:
            found[op.id] = dims
    return found


def _invariant(op: Op, dim: Symbol, reads: list[Edge]) -> bool:
    """Whether ``op`` computes the same value at every point of ``dim`` and is read at one."""
    if op.kind not in ("apply", "merge") or (op.payload is not None and op.payload.uses_point):
        return False
    if any(dim in edge.symbols() for edge in op.inputs):
        return False
    if any(dim in spec.symbols() for spec in op.outputs):
        return False
    at = op.domain.index(dim)
    return not any(isinstance(edge.index[at], Slice) for edge in reads)


def _drop_dims(program: Program, drops: Mapping[int, frozenset[Symbol]]) -> Program:
    """``program`` with the ``drops`` dims removed from domains and from reads of those ops."""

    def fix(edge: Edge) -> Edge:
        dims = drops.get(edge.src)
        if not dims:
            return edge
        domain = program.op(edge.src).domain
        index = tuple(item for d, item in zip(domain, edge.index, strict=True) if d not in dims)
        return dataclasses.replace(edge, index=index)

    ops = []
    for op in program.ops:
        dims = drops.get(op.id, frozenset())
        ops.append(op.replace(domain=tuple(d for d in op.domain if d not in dims)))
    return _rewrite_reads(program, ops, fix)


# ---------------------------------------------------------------------------------------------
# Constant folding
# ---------------------------------------------------------------------------------------------


def fold_constants(program: Program) -> Program:
    """``program`` with small ops of empty domain computed from constants made constants.

    A constant is an apply op of empty domain without inputs (nor ``uses_point``). An apply
    op of empty domain whose inputs are all constants and whose outputs are static and hold
    at most ``MAX_FOLDED_ELEMENTS`` elements each is evaluated now; it keeps its id, name,
    outputs and source, and reads nothing. Example: ``tj.exp(tj.ones(3)) * 2`` becomes one
    constant (the ``ones`` and ``exp`` ops are left for dead-op elimination).
    """
    ops = {op.id: op for op in program.ops}
    values: dict[int, tuple[Any, ...] | None] = {}  # op id -> its constant values; None: failed
    changed = True
    while changed:
        changed = False
        for op_id, op in list(ops.items()):
            folded = _folded(op, ops, values)
            if folded is not None:
                ops[op_id] = folded
                changed = True
    if all(ops[op.id] is op for op in program.ops):
        return program
    return program.replace(ops=tuple(ops[op.id] for op in program.ops))


def _is_constant(op: Op) -> bool:
    """Whether ``op`` is a constant: an apply of empty domain reading nothing, not the point."""
    return (
        op.kind == "apply"
        and not op.domain
        and not op.inputs
        and op.payload is not None
        and not op.payload.uses_point
    )


def _foldable(op: Op) -> bool:
    """Whether ``op`` is worth folding once its inputs are constants."""
    if op.kind != "apply" or op.domain or not op.inputs or op.payload is None:
        return False
    if op.payload.uses_point:
        return False
    return all(
        spec.is_static and int(np.prod(spec.shape, dtype=np.int64)) <= MAX_FOLDED_ELEMENTS
        for spec in op.outputs
    )


def _folded(op: Op, ops: Mapping[int, Op], values: dict[int, tuple[Any, ...] | None]) -> Op | None:
    """``op`` as a constant, or ``None`` when it cannot be folded (yet)."""
    if not _foldable(op) or not all(_is_constant(ops[edge.src]) for edge in op.inputs):
        return None
    if op.id in values:
        return None  # tried in an earlier round, and failed
    values[op.id] = None
    args = []
    for edge in op.inputs:
        if edge.src not in values:
            values[edge.src] = _evaluate(ops[edge.src].payload, [])
        found = values[edge.src]
        if found is None:
            return None
        args.append(found[edge.out])
    assert op.payload is not None
    results = _evaluate(op.payload, args)
    arrays = None if results is None else _stored(results, op)
    if arrays is None:
        return None
    fn = _returning(arrays)
    values[op.id] = _evaluate(Payload(fn, op.name), [])  # as readers will see it: JAX arrays
    payload = Payload(fn, f"const {op.name}", differentiable=op.payload.differentiable)
    return op.replace(inputs=(), payload=payload)


def _stored(results: tuple[Any, ...], op: Op) -> tuple[Any, ...] | None:
    """The values to keep for ``op``'s outputs: NumPy arrays (a weakly typed value stays a
    JAX array, the only kind that keeps a weak type); ``None`` if one does not match its spec."""
    if len(results) != len(op.outputs):
        return None
    arrays = []
    for value, spec in zip(results, op.outputs, strict=True):
        weak = bool(getattr(value, "weak_type", False))
        try:
            array = np.asarray(value)
        except (TypeError, ValueError):  # e.g. typed PRNG keys
            return None
        if array.shape != spec.shape or array.dtype != spec.dtype or weak != spec.weak_type:
            return None
        arrays.append(value if weak else array)
    return tuple(arrays)


def _evaluate(payload: Payload | None, args: list[Any]) -> tuple[Any, ...] | None:
    """``payload.fn(*args)`` computed now; ``None`` if it fails or has effects (prints)."""
    if payload is None:
        return None
    try:
        if jax.make_jaxpr(payload.fn)(*args).effects:
            return None
        with jax.ensure_compile_time_eval():
            return tuple(payload.fn(*args))
    except Exception:  # a payload that cannot run at compile time stays in the program
        return None


def _returning(values: tuple[Any, ...]) -> Callable[[], tuple[Any, ...]]:
    """A payload function returning ``values`` as JAX arrays (as recorded constants do)."""

    def fn() -> tuple[Any, ...]:
        return tuple(jnp.asarray(v) for v in values)

    return fn
