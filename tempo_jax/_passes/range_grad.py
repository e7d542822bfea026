"""Gradients through growing ranges, in tiles: the backward of a map-then-reduce is two more.

An op ``o[t] = f(x[lo(t):hi(t)], p[t])`` whose payload maps the rows of its range and reduces
them (attention ``softmax(k[0:t+1] @ q[t]) @ v[0:t+1]``, windowed sums, means) has a
vector-Jacobian product whose range cotangent is again a map: row ``j`` of ``dx`` is a function
of row ``j`` alone and of a few values that do not have the range's axis (for attention: the
row max and sum of the scores, the cotangent of the output, ``q[t]``). :func:`split` finds
them in the flat jaxpr of the vjp, classified by the tiler (:mod:`tempo_jax._lower.tiling`):

- the **stats op** computes, per consumer point ``t``, the cotangents of the point reads (``dq``)
  and those *stats*: a map-then-reduce over the range like the forward, taken in tiles with the
  same online softmax (:func:`stats_payload`);
- the **rows op** computes, per producer point ``j``, ``dx[j] = sum over the consumers t whose
  range holds j of row_fn(x[j], stats[t])``: a map-then-reduce over the inverted range
  (``j:T`` for ``0:t+1``, a window for a window), taken in tiles too (:func:`rows_payload`).

No ``(T, T)`` value is stored: the stats are ``O(T)``, each op holds a tile at a time. This is
the flash-attention backward (recompute the scores from the saved statistics) derived from the
payload's jaxpr, so any map-then-reduce the tiler takes gets it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp

from .._ir.errors import TempoError, UnsupportedError
from .._ir.jaxprs import bind
from .._ir.program import TensorSpec
from .._lower.masking import masked_call
from .._lower.tiling import classify, flatten, plan_tiles
from .contract import contracting

Position = tuple[Any, ...]  # ("in", p): the jaxpr's input p; (i, k): output k of equation i
_ROWS = "rows"
# the sizes the split is derived at and checked the same at: JAX traces one row differently
# (a broadcast of one row is no broadcast), so the rows op runs the cone traced at
# _CHECK_ROWS[0] rows with its shapes rewritten to one row (:func:`_one_row`)
_CHECK_ROWS = (2, 17)
# the cone's parameters that hold sizes, and those the one-row rewrite changes
_SIZED = frozenset(
    ["shape", "new_sizes", "slice_sizes", "start_indices", "limit_indices", "padding_config"]
)
_RESIZED = {"broadcast_in_dim": "shape", "reshape": "new_sizes"}


class _UsesPoint(Exception):
    """The payload read its point's coordinates: its rows depend on more than the rows."""


class _NoPoint(dict):
    def __missing__(self, key: Any) -> Any:
        raise _UsesPoint(key)


NO_POINT: dict = _NoPoint()  # an ``env`` for payloads called on values alone


def vjp_function(
    call: Callable[[list[Any]], Sequence[Any]], n_in: int, diff: Sequence[int], outs: Sequence[int]
) -> Callable[..., tuple[Any, ...]]:
    """``(*primals, *cotangents) -> cotangents of primals[diff]``, for ``call(primals)``'s
    outputs ``outs``."""

    def vjp(*values: Any) -> tuple[Any, ...]:
        primals, cts = list(values[:n_in]), values[n_in:]

        def forward(*xs: Any) -> tuple[Any, ...]:
            full = list(primals)
            for pos, x in zip(diff, xs, strict=True):
                full[pos] = x
            result = call(full)
            return tuple(jnp.asarray(result[j]) for j in outs)

        results, pull = jax.vjp(forward, *(jnp.asarray(primals[p]) for p in diff))
        return tuple(
            pull(tuple(jnp.asarray(c, r.dtype) for c, r in zip(cts, results, strict=True)))
        )

    return vjp


@dataclasses.dataclass(frozen=True)
class Split:
    """Where the stats and the range cotangents are in the vjp's flat jaxpr."""

    vjp: Callable[..., tuple[Any, ...]]
    n_eqns: int
    ranged: tuple[int, ...]  # the vjp's inputs read as ranges (rows along axis 0)
    row_outs: tuple[int, ...]  # the vjp's outputs that are range cotangents
    point_outs: tuple[int, ...]  # the others
    stats: tuple[Position, ...]
    stat_specs: tuple[TensorSpec, ...]
    cone: tuple[int, ...]  # the equations computing the range cotangents from rows and stats
    structs: tuple[Any, ...]  # every vjp input, its range inputs of _CHECK_ROWS[0] rows
    # the cone at one row: (equation, parameter, its sizes at one row) per rewritten size;
    # None: the cone runs at _CHECK_ROWS[0] copies of the row
    one_row: tuple[tuple[int, str, tuple[int, ...]], ...] | None = None


def split(
    vjp: Callable[..., tuple[Any, ...]],
    specs: Sequence[TensorSpec],
    ranged: Sequence[int],
    what: str,
) -> Split | None:
    """The split of ``vjp`` (inputs of ``specs``; ``ranged`` ones have a growing axis 0, the
    others static shapes), or None when it is not a map-then-reduce over the range whose
    range cotangents are rows."""
    try:
        return _split(vjp, specs, tuple(ranged), what)
    except (UnsupportedError, _UsesPoint):
        return None


def _structs(specs: Sequence[TensorSpec], ranged: Sequence[int], rows: int) -> tuple[Any, ...]:
    out = []
    for k, spec in enumerate(specs):
        shape = (rows, *spec.shape[1:]) if k in ranged else spec.shape
        out.append(jax.ShapeDtypeStruct(tuple(int(n) for n in shape), spec.dtype))
    return tuple(out)


def _split(vjp: Callable, specs: Sequence[TensorSpec], ranged: tuple[int, ...], what: str) -> Any:
    if any(not isinstance(n, int) for k, s in enumerate(specs) for n in s.shape[k in ranged :]):
        return None  # a point read of a growing value
    axis = [0 if k in ranged else None for k in range(len(specs))]
    structs = _structs(specs, ranged, _CHECK_ROWS[0])
    plan = classify(vjp, structs, axis, _ROWS, what)
    if plan is None:
        return None
    jaxpr = plan.closed.jaxpr
    other = jax.make_jaxpr(flatten(vjp))(*_structs(specs, ranged, _CHECK_ROWS[1])).jaxpr
    if [e.primitive for e in other.eqns] != [e.primitive for e in jaxpr.eqns]:
        return None  # the structure depends on the number of rows
    producer = {v: (i, k) for i, e in enumerate(jaxpr.eqns) for k, v in enumerate(e.outvars)}
    inputs = {v: p for p, v in enumerate(jaxpr.invars)}
    consts = {v: k for k, v in enumerate(jaxpr.constvars)}
    outs = jaxpr.outvars
    row_outs = tuple(n for n, v in enumerate(outs) if not _literal(v) and v in plan.axis)
    if not row_outs:
        return None
    cone: set[int] = set()
    stats: dict[Position, Any] = {}
    stack = [outs[n] for n in row_outs]
    while stack:
        var = stack.pop()
        if _literal(var):
            continue
        if var in consts:
            if ("const", consts[var]) in plan.affine:
                return None  # a constant built from the row count
            continue
        if var not in plan.axis:  # a value without the range's axis: a stat
            stats[("in", inputs[var]) if var in inputs else producer[var]] = var
            continue
        if var in inputs:
            if plan.axis[var] != 0 or inputs[var] not in ranged:
                return None
            continue
        i, _ = producer[var]
        if i in cone:
            continue
        if plan.kinds[i] != "row":
            return None
        cone.add(i)
        for p, v in enumerate(jaxpr.eqns[i].invars):
            if _literal(v) and (i, "lit", p) in plan.affine:
                return None  # a size (a mean's divisor) inside a row: it differs per consumer
            stack.append(v)
    if not stats:
        return None
    order = sorted(stats, key=lambda pos: (-1, pos[1]) if pos[0] == "in" else pos)
    stat_specs = tuple(
        TensorSpec(tuple(stats[pos].aval.shape), stats[pos].aval.dtype) for pos in order
    )
    result = Split(
        vjp,
        len(jaxpr.eqns),
        ranged,
        row_outs,
        tuple(n for n in range(len(outs)) if n not in row_outs),
        tuple(order),
        stat_specs,
        tuple(sorted(cone)),
        structs,
    )
    result = dataclasses.replace(result, one_row=_one_row(result, plan.closed, plan.axis))
    example = _structs(specs, ranged, _CHECK_ROWS[1])
    if not plan_tiles(stats_payload(result, what), example, axis, _ROWS, what):
        return None
    stacks = [jax.ShapeDtypeStruct((_CHECK_ROWS[1], *s.shape), s.dtype) for s in stat_specs]
    rows = [jax.ShapeDtypeStruct(structs[k].shape[1:], structs[k].dtype) for k in ranged]
    rows_axis = [None] * len(rows) + [0] * len(stacks)
    if not plan_tiles(rows_payload(result, what), [*rows, *stacks], rows_axis, _ROWS, what):
        return None
    return result


def _one_row(split: Split, closed: jex.ClosedJaxpr, axis: dict[Any, int]) -> Any:
    """The rewrites of the cone's sizes that run it at one row (``Split.one_row``), or None
    when some equation holds a size this cannot rewrite or the rewritten cone's shapes are
    not those at ``_CHECK_ROWS[0]`` rows with one row. ``closed`` is the vjp's flat jaxpr at
    ``split.structs``, ``axis`` the row axis of each of its values."""
    jaxpr = closed.jaxpr
    rewrites = []
    for i in split.cone:
        eqn = jaxpr.eqns[i]
        key = _RESIZED.get(eqn.primitive.name)
        if key is None:
            if _SIZED & set(eqn.params):
                return None
            continue
        if eqn.params.get("dimensions") is not None:
            return None  # a reshape that also transposes
        sizes = list(eqn.params[key])
        row = axis[eqn.outvars[0]]
        if sizes[row] != _CHECK_ROWS[0]:
            return None
        sizes[row] = 1
        rewrites.append((i, key, tuple(sizes)))
    expected = {
        v: _at_one(v.aval.shape, axis[v]) for i in split.cone for v in jaxpr.eqns[i].outvars
    }
    rows = [
        jax.ShapeDtypeStruct((1, *split.structs[k].shape[1:]), split.structs[k].dtype)
        for k in split.ranged
    ]
    stats = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in split.stat_specs]
    shapes: dict[Any, tuple[int, ...]] = {}

    def run(*values: Any) -> None:
        env = _cone(split, closed, tuple(rewrites), values[: len(rows)], values[len(rows) :])
        shapes.update((v, tuple(jnp.shape(env[v]))) for v in expected)

    try:
        jax.eval_shape(run, *rows, *stats)
    except (TypeError, ValueError):  # a primitive that refuses the rewritten sizes
        return None
    return tuple(rewrites) if shapes == expected else None


def _at_one(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return (*shape[:axis], 1, *shape[axis + 1 :])


def _cone(
    split: Split,
    closed: jex.ClosedJaxpr,
    rewrites: tuple[tuple[int, str, tuple[int, ...]], ...] | None,
    rows: Sequence[Any],
    stats: Sequence[Any],
) -> dict[Any, Any]:
    """The cone of ``closed`` (the vjp traced at ``split.structs``) on ``rows`` (each with the
    row axis, of one row when ``rewrites`` are given) and one consumer's ``stats``: the env."""
    jaxpr = closed.jaxpr
    sizes = {i: (key, value) for i, key, value in rewrites or ()}
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, closed.consts, strict=True))
    for k, row in zip(split.ranged, rows, strict=True):
        env[jaxpr.invars[k]] = row
    for pos, value in zip(split.stats, stats, strict=True):
        env[_at(jaxpr, pos)] = value
    for i in split.cone:
        eqn = jaxpr.eqns[i]
        if i in sizes:
            key, value = sizes[i]
            eqn = eqn.replace(params={**eqn.params, key: value})
        args = [v.val if _literal(v) else env[v] for v in eqn.invars]
        env.update(zip(eqn.outvars, bind(eqn, args), strict=True))
    return env


def _literal(var: Any) -> bool:
    return isinstance(var, jex.Literal)


def _jaxpr(split: Split, values: Sequence[Any], what: str) -> jex.ClosedJaxpr:
    closed = jax.make_jaxpr(flatten(split.vjp))(*values)
    if len(closed.jaxpr.eqns) != split.n_eqns:
        raise TempoError(
            f"{what}: its gradient's computation changed with the size of its range; give the "
            "op's range reads a static size, or compute it with `tj.reference.run`."
        )
    return closed


def _at(jaxpr: jex.Jaxpr, pos: Position) -> Any:
    return jaxpr.invars[pos[1]] if pos[0] == "in" else jaxpr.eqns[pos[0]].outvars[pos[1]]


def stats_payload(split: Split, what: str) -> Callable[..., tuple[Any, ...]]:
    """Per consumer point: the point reads' cotangents, then the stats."""

    def stats(*values: Any) -> tuple[Any, ...]:
        rows = values[split.ranged[0]].shape[0]
        if rows < _CHECK_ROWS[0]:  # one row traces otherwise: padded, the padding masked
            least = _CHECK_ROWS[0]
            padded = [
                jnp.concatenate([v, jnp.zeros((least - rows, *v.shape[1:]), v.dtype)])
                if k in split.ranged
                else v
                for k, v in enumerate(values)
            ]
            pads = [{0: _ROWS} if k in split.ranged else {} for k in range(len(values))]
            return tuple(masked_call(stats, padded, pads, {_ROWS: rows}, what))
        closed = _jaxpr(split, values, what)
        jaxpr = closed.jaxpr
        wanted = [jaxpr.outvars[n] for n in split.point_outs]
        wanted += [_at(jaxpr, pos) for pos in split.stats]
        env: dict[Any, Any] = dict(zip(jaxpr.constvars, closed.consts, strict=True))
        env.update(zip(jaxpr.invars, values, strict=True))
        for i in _needed(jaxpr, wanted):
            eqn = jaxpr.eqns[i]
            args = [v.val if _literal(v) else env[v] for v in eqn.invars]
            env.update(zip(eqn.outvars, bind(eqn, args), strict=True))
        return tuple(v.val if _literal(v) else env[v] for v in wanted)

    return stats


def rows_payload(split: Split, what: str) -> Callable[..., tuple[Any, ...]]:
    """Per producer point: ``(*its row of every range input, *stats stacked over the consumers
    reading it)`` -> the sum over those consumers of its row's cotangents."""
    n_rows = len(split.ranged)

    def rows(*values: Any) -> tuple[Any, ...]:
        own, stacks = values[:n_rows], values[n_rows:]
        closed = _jaxpr(split, split.structs, what)
        copies = 1 if split.one_row is not None else _CHECK_ROWS[0]
        block = [jnp.broadcast_to(row, (copies, *row.shape)) for row in own]

        def one(*stats: Any) -> list[Any]:
            env = _cone(split, closed, split.one_row, block, stats)
            return [env[closed.jaxpr.outvars[n]] for n in split.row_outs]

        # summed over the consumers before the row axis is dropped: a sum over the vmapped
        # axis of a product is then one contraction (``contracting``), a matmul
        per_consumer = jax.vmap(one)(*stacks)
        return tuple(x.sum(axis=0)[0] for x in per_consumer)

    return contracting(rows)


def _needed(jaxpr: jex.Jaxpr, wanted: Sequence[Any]) -> list[int]:
    """The equations ``wanted`` depends on, in order."""
    producer = {v: i for i, e in enumerate(jaxpr.eqns) for v in e.outvars}
    need: set[int] = set()
    stack = [v for v in wanted if not _literal(v)]
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in need:
            continue
        need.add(i)
        stack.extend(v for v in jaxpr.eqns[i].invars if not _literal(v))
    return sorted(need)
