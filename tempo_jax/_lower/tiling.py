"""Calling a payload over the tiles of a growing range: only the tiles that hold data.

A read like ``k[0:t+1]`` is stored padded to its largest size; :mod:`.masking` computes over
the whole padded range. When the payload only maps rows and reduces them (sums, max, min,
contractions: attention, means, windows), :func:`tiled_call` instead visits the tiles of
the stored buffer (``block`` rows each, aligned to the buffer) that hold rows of the range:
``ceil(L / block)`` of them for a prefix of ``L`` rows, at most ``ceil(w / block) + 1`` for a
window of ``w`` (a ``fori_loop`` over a traced tile range). It masks the rows of the boundary
tiles outside the range and combines the partial reductions across tiles. A reduction whose
rows depend on an earlier reduction (softmax: ``exp(x - max x)``) runs in a later sweep over
the tiles, except when it can be rescaled online: the rows of a
sum that depend on a running max ``m`` only through a factor ``exp(x - m)`` are summed in the
same sweep as ``m``, the running sums rescaled by ``exp(m_old - m_new)`` whenever the max
grows (single-pass softmax attention).

The payload's jaxpr is flattened (calls inlined) and classified per equation:

- *row*: its output has the tiled axis; it must treat rows independently (element-wise,
  layout, reductions over other axes, contractions that keep the axis);
- *reduce*: its input has the tiled axis and its output does not (``reduce_sum``,
  ``reduce_max``, ``reduce_min``, ``dot_general`` contracting the axis);
- *after*: neither has it (runs once, after the reductions it needs).

Anything else (a cumulative sum along the range, an index built from the range's size, an
output that keeps the range) returns None: the caller falls back to the padded evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jex
import numpy as np

from .._ir.jaxprs import CALLS, bind
from .masking import _LAYOUT, ELEMENTWISE, Pads, _analyse
from .sweeps import Plan, Sweeps, TileReader, Tiles

_ROW_SAFE = ELEMENTWISE | (_LAYOUT - {"iota", "concatenate", "split"})


def auto_block(rows: int) -> int:
    """A tile size for a range of at most ``rows`` rows: about a sixteenth of it, a power of
    two between 32 and 1024 (a range of at most 32 rows is not taken in tiles). Smaller tiles
    cost more in per-tile work than their skipped rows save: a 64-position transformer trains
    1.4x slower with tiles of 16 than of 32 on a 2-core CPU (``scripts/train_lm.py``)."""
    target = max(1, -(-rows // 16))
    return int(min(1024, max(32, 1 << (target - 1).bit_length())))


def tiled_call(
    fn: Callable[..., Sequence[Any]],
    args: Sequence[Any],
    readers: Sequence[TileReader | None],
    axis: Sequence[int | None],
    tiles: Tiles,
    klass: str,
    what: str,
) -> list[Any] | None:
    """``fn`` over every row of its range inputs, computed tile by tile; or None.

    ``args[k]`` is a plain value when ``readers[k]`` is None; otherwise ``readers[k](i)``
    returns tile ``i`` (its rows along ``axis[k]``) and ``args[k]`` is an example tile (a
    ``jax.ShapeDtypeStruct``). ``klass`` names the size class in :mod:`.masking`.
    """
    plan = _plan(fn, args, axis, klass, what)
    if plan is None:
        return None
    return Sweeps(plan, readers, tiles).run(list(args))


def plan_tiles(
    fn: Callable[..., Sequence[Any]],
    args: Sequence[Any],
    axis: Sequence[int | None],
    klass: str,
    what: str,
) -> bool:
    """Whether :func:`tiled_call` takes ``fn`` in tiles (``args`` may all be abstract)."""
    return _plan(fn, args, axis, klass, what) is not None


# -- planning ------------------------------------------------------------------------------------


def flatten(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with every call (jit, custom_jvp, ...) inlined: one flat jaxpr."""

    def run(*args: Any) -> list[Any]:
        closed = jax.make_jaxpr(fn)(*args)
        return _inline(closed.jaxpr, closed.consts, list(args))

    return run


def _inline(jaxpr: jex.Jaxpr, consts: Sequence[Any], args: list[Any]) -> list[Any]:
    env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))

    def read(var: Any) -> Any:
        return var.val if isinstance(var, jex.Literal) else env[var]

    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        key = CALLS.get(eqn.primitive.name)
        if key is not None and key in eqn.params:
            sub = eqn.params[key]
            inner, sub_consts = (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, ())
            outs = _inline(inner, sub_consts, values)
        else:
            outs = bind(eqn, values)
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _plan(
    fn: Callable[..., Any],
    args: Sequence[Any],
    axis: Sequence[int | None],
    klass: str,
    what: str,
) -> Plan | None:
    plan = classify(fn, args, axis, klass, what)
    if plan is None:
        return None
    jaxpr = plan.closed.jaxpr
    if any(v in plan.axis for v in jaxpr.outvars if not isinstance(v, jex.Literal)):
        return None  # an output keeps the range
    _rescale_online(plan)
    return plan


def classify(
    fn: Callable[..., Any],
    args: Sequence[Any],
    axis: Sequence[int | None],
    klass: str,
    what: str,
) -> Plan | None:
    """``fn``'s flat jaxpr with each equation classified (row, reduce, after) and each value's
    tiled axis, outputs keeping the range allowed; None when an equation is none of these."""
    flat = flatten(fn)
    closed = jax.make_jaxpr(flat)(*args)
    pads: list[Pads] = [{} if a is None else {a: klass} for a in axis]
    analysis = _analyse(flat, closed, args, pads, what)
    if analysis.mixed:
        return None
    jaxpr = closed.jaxpr
    tiled: dict[Any, int] = {}
    for k, var in enumerate(jaxpr.invars):
        found = analysis.pads.get(("in", k), {})
        if len(found) > 1:
            return None
        for a in found:
            tiled[var] = a
    level: dict[Any, int] = {}
    kinds: list[str] = []
    for i, eqn in enumerate(jaxpr.eqns):
        kind = _classify(eqn, i, tiled, analysis.pads)
        if kind is None:
            return None
        kinds.append(kind)
        deps = [level.get(v, 0) for v in eqn.invars if not isinstance(v, jex.Literal)]
        known = max(deps, default=0) + (kind == "reduce")
        for k, var in enumerate(eqn.outvars):
            level[var] = known
            found = analysis.pads.get((i, "out", k), {})
            for a in found:
                tiled[var] = a
    return Plan(closed, tiled, level, kinds, analysis.affine, {}, {}, {})


def _classify(eqn: jex.JaxprEqn, i: int, tiled: dict[Any, int], pads: dict) -> str | None:
    name = eqn.primitive.name
    ins = [v for v in eqn.invars if not isinstance(v, jex.Literal) and v in tiled]
    outs = [pads.get((i, "out", k), {}) for k in range(len(eqn.outvars))]
    if any(len(p) > 1 for p in outs):
        return None
    if any(outs):
        if not ins:  # a value broadcast along the range is the same in every tile
            return "row" if name == "broadcast_in_dim" else None  # an iota is not
        if name in _ROW_SAFE or name in ("reduce_sum", "reduce_max", "reduce_min"):
            return "row"
        if name == "slice" and len(ins) == 1:  # along other axes only: the tile kept whole
            a = tiled[ins[0]]
            whole = (
                eqn.params["start_indices"][a] == 0
                and eqn.params["limit_indices"][a] == ins[0].aval.shape[a]
                and (eqn.params["strides"] is None or eqn.params["strides"][a] == 1)
            )
            return "row" if whole else None
        if name == "dot_general":
            (lc, rc), _ = eqn.params["dimension_numbers"]
            lhs, rhs = eqn.invars[:2]
            contracted = (lhs in tiled and tiled[lhs] in lc) or (rhs in tiled and tiled[rhs] in rc)
            return None if contracted else "row"
        return None
    if not ins:
        return "after"
    if name in ("reduce_sum", "reduce_max", "reduce_min"):
        return "reduce" if tiled[ins[0]] in eqn.params["axes"] else None
    if name == "dot_general":
        return "reduce"
    return None


def _rescale_online(plan: Plan) -> None:
    """Move sums that depend on a max only through ``exp(x - max)`` into the max's sweep.

    A forward walk gives every value that waits for a max's sweep the positions of the max's
    axes in it (``exp(rows - broadcast(m))`` starts one); products with values free of that
    sweep, layout changes and contractions carry the positions; a division by a sum already
    rescaled in the sweep is deferred to the end (``softmax(s) @ v``: the sum of ``e * v``,
    divided by the sum of ``e``). Anything else loses them, and the sum keeps its own sweep.
    """
    eqns = plan.closed.jaxpr.eqns
    producer = {var: i for i, eqn in enumerate(eqns) for var in eqn.outvars}
    for i, eqn in enumerate(eqns):
        if plan.kinds[i] != "reduce" or eqn.primitive.name not in ("reduce_sum", "dot_general"):
            continue
        _relevel(plan)
        found = _Factors(plan, eqns, producer, plan.level[eqn.outvars[0]] - 1).at_reduce(i)
        if found is not None:
            plan.online[i] = found.max
            plan.scales[i] = found.positions
            plan.divisors[i] = found.divisors
    _relevel(plan)


@dataclasses.dataclass(frozen=True)
class _Factor:
    """A value equal to (terms free of the sweep) * exp(-max) * prod(sum ** power) over its
    divisors, with the positions of the max's axes and of each divisor sum's axes in it."""

    max: int
    positions: tuple[int, ...]
    divisors: tuple[tuple[int, tuple[int, ...], int], ...] = ()

    def moved(self, move: Callable[[tuple[int, ...]], tuple[int, ...] | None]) -> _Factor | None:
        positions = move(self.positions)
        divisors = _moved(self.divisors, move)
        if positions is None or divisors is None:
            return None
        return _Factor(self.max, positions, divisors)


@dataclasses.dataclass(frozen=True)
class _Scaled:
    """A value equal to (terms free of the sweep) * prod(sum ** power) over its divisors, sums
    of the sweep rescaled online (``dp / l**2`` in the backward of a softmax)."""

    divisors: tuple[tuple[int, tuple[int, ...], int], ...]

    def moved(self, move: Callable[[tuple[int, ...]], tuple[int, ...] | None]) -> _Scaled | None:
        divisors = _moved(self.divisors, move)
        return None if divisors is None else _Scaled(divisors)


def _moved(divisors: tuple, move: Callable) -> tuple | None:
    out = tuple((j, move(pos), power) for j, pos, power in divisors)
    return None if any(pos is None for _, pos, _ in out) else out


@dataclasses.dataclass(frozen=True)
class _Divisor:
    """A rescaled sum of the sweep (reduce eqn) to a power, broadcast: its axes' positions."""

    reduce: int
    positions: tuple[int, ...]
    power: int = 1

    def scaled(self, power: int) -> _Scaled:
        return _Scaled(((self.reduce, self.positions, self.power * power),))


_PASS = ("convert_element_type", "copy", "copy_p", "stop_gradient")


class _Factors:
    """The forward walk of :func:`_rescale_online` for one sweep (memoised per value)."""

    def __init__(self, plan: Plan, eqns: list, producer: dict, target: int) -> None:
        self.plan, self.eqns, self.producer, self.target = plan, eqns, producer, target
        self.memo: dict[Any, Any] = {}

    def at_reduce(self, i: int) -> _Factor | None:
        found = self._carry(i, at_reduce=True)
        return found if isinstance(found, _Factor) else None

    def of(self, var: Any) -> Any:  # "free": does not wait for the sweep
        if isinstance(var, jex.Literal) or var not in self.producer:
            return "free"
        if self.plan.level[var] < self.target:
            return "free"
        if var not in self.memo:
            self.memo[var] = self._carry(self.producer[var])
        return self.memo[var]

    def _carry(self, j: int, at_reduce: bool = False) -> Any:
        eqn = self.eqns[j]
        name = eqn.primitive.name
        if self.plan.kinds[j] == "reduce" and not at_reduce:
            rank = len(eqn.outvars[0].aval.shape)
            return _Divisor(j, tuple(range(rank))) if j in self.plan.online else None
        ins = [self.of(v) for v in eqn.invars]
        mapped = [(k, f) for k, f in enumerate(ins) if f != "free"]
        if not mapped:
            return "free"
        if name == "exp":
            return _exp_of_difference(self.plan, self.eqns, self.producer, eqn)
        if len(mapped) == 2 and name in ("mul", "div"):  # a factor times (over) rescaled sums
            a, b = ins
            if isinstance(b, _Divisor):
                b = b.scaled(-1 if name == "div" else 1)
            elif name == "div":
                return None
            if isinstance(a, _Divisor):
                a = a.scaled(1)
            if isinstance(a, _Scaled) and isinstance(b, _Factor):
                a, b = b, a
            if not isinstance(a, _Factor | _Scaled) or not isinstance(b, _Scaled):
                return None
            if isinstance(a, _Factor):  # its sums rescaled against the factor's max
                if any(self.plan.online[j] != a.max for j, _, _ in b.divisors):
                    return None
                return _Factor(a.max, a.positions, (*a.divisors, *b.divisors))
            return _Scaled((*a.divisors, *b.divisors))
        if len(mapped) > 1 or mapped[0][1] is None:
            return None
        k, found = mapped[0]
        if isinstance(found, _Divisor):  # laid out, raised to a power, or times free values
            if name in _PASS or (name == "broadcast_in_dim" and k == 0):
                pos = _move(eqn, k, found.positions)
                return None if pos is None else _Divisor(found.reduce, pos, found.power)
            if name == "integer_pow":
                return _Divisor(found.reduce, found.positions, found.power * eqn.params["y"])
            if name == "mul":
                return found.scaled(1)
            if name == "div" and k == 1:
                return found.scaled(-1)
            return None
        if name == "div" and k == 1:
            return None
        if isinstance(found, _Scaled):
            if name in ("mul", "div", "neg", *_PASS):
                return found
            return found.moved(lambda pos: _move(eqn, k, pos))
        if name in ("mul", "div", "neg", *_PASS):
            return found
        return found.moved(lambda pos: _move(eqn, k, pos))


def _move(eqn: Any, k: int, pos: tuple[int, ...]) -> tuple[int, ...] | None:
    """Where axes at ``pos`` of input ``k`` land in ``eqn``'s output (None: they do not)."""
    name = eqn.primitive.name
    if name in _PASS:
        return pos
    if name == "transpose":
        perm = eqn.params["permutation"]
        return tuple(perm.index(p) for p in pos)
    if name == "broadcast_in_dim":
        dims = eqn.params["broadcast_dimensions"]
        return tuple(dims[p] for p in pos)
    if name == "reduce_sum":
        axes = eqn.params["axes"]
        if set(pos) & set(axes):
            return None
        return tuple(p - sum(a < p for a in axes) for p in pos)
    if name == "dot_general":
        return _through_dot(eqn, k, pos)
    return None


def _through_dot(eqn: Any, k: int, pos: tuple[int, ...]) -> tuple[int, ...] | None:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    contract, batch = (lc, lb) if k == 0 else (rc, rb)
    ndims = [len(v.aval.shape) for v in eqn.invars[:2]]
    free = [a for a in range(ndims[k]) if a not in contract and a not in batch]
    offset = len(lb) + (0 if k == 0 else ndims[0] - len(lc) - len(lb))
    out = []
    for p in pos:
        if p in contract:
            return None
        out.append(batch.index(p) if p in batch else offset + free.index(p))
    return tuple(out)


def _exp_of_difference(plan: Plan, eqns: list, producer: dict, exp: Any) -> _Factor | None:
    """The factor when ``exp``'s input is ``rows - broadcast(max of those rows)``."""
    (arg,) = exp.invars
    if arg not in producer or eqns[producer[arg]].primitive.name != "sub":
        return None
    rows, sub = eqns[producer[arg]].invars
    if isinstance(sub, jex.Literal) or rows not in plan.axis:
        return None
    positions: tuple[int, ...] | None = None  # where the max's axes sit in ``sub``
    while sub in producer and plan.kinds[producer[sub]] == "after":
        eqn = eqns[producer[sub]]
        name = eqn.primitive.name
        kept: Sequence[int] | None = None
        if name == "broadcast_in_dim":
            kept = eqn.params["broadcast_dimensions"]
        elif name == "reshape":
            kept = _unit_axes_added(eqn)
            if kept is None:
                return None
        elif name == "max" and _is_lowest(eqn.invars[0]):  # max(-inf, m): softmax's guard
            sub = eqn.invars[1]
            continue
        elif name not in _PASS:
            return None
        if kept is not None:
            positions = tuple(kept) if positions is None else tuple(positions[d] for d in kept)
        sub = eqn.invars[0]
    j = producer.get(sub)
    if j is None or eqns[j].primitive.name != "reduce_max" or plan.kinds[j] != "reduce":
        return None
    if eqns[j].invars[0] != rows:
        return None  # the max of other rows than those it is subtracted from
    rank = len(eqns[j].outvars[0].aval.shape)
    return _Factor(j, tuple(range(rank)) if positions is None else positions)


def _is_lowest(var: Any) -> bool:
    return isinstance(var, jex.Literal) and np.ndim(var.val) == 0 and np.isneginf(var.val)


def _unit_axes_added(eqn: Any) -> list[int] | None:
    """For a reshape that only inserts size-1 axes: where each input axis lands."""
    old, new = eqn.invars[0].aval.shape, eqn.params["new_sizes"]
    out, k = [], 0
    for a, n in enumerate(new):
        if k < len(old) and n == old[k]:
            out.append(a)
            k += 1
        elif n != 1:
            return None
    return out if k == len(old) else None


def _relevel(plan: Plan) -> None:
    """The sweep each value waits for, with rescaled sums in their max's sweep."""
    for i, eqn in enumerate(plan.closed.jaxpr.eqns):
        if i in plan.online:
            known = plan.level[plan.closed.jaxpr.eqns[plan.online[i]].outvars[0]]
        else:
            deps = [plan.level.get(v, 0) for v in eqn.invars if not isinstance(v, jex.Literal)]
            known = max(deps, default=0) + (plan.kinds[i] == "reduce")
        for var in eqn.outvars:
            plan.level[var] = known
