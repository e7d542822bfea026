"""Running a tile plan: each sweep's reductions in one loop over the tiles that hold data.

:mod:`.tiling` decides (a :class:`Plan`: which axis of each value is tiled, each equation's
kind and sweep, which sums are rescaled online); :class:`Sweeps` executes it over the tiles a
:class:`Tiles` names, masking the rows of boundary tiles outside the range and combining the
partial reductions across tiles.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._ir.jaxprs import bind
from .masking import _neutral, when_finite

TileReader = Callable[[Any], Any]  # tile index -> the tile's rows of one range input
_COMBINE = {"reduce_sum": "add", "dot_general": "add", "reduce_max": "max", "reduce_min": "min"}
_FILL = {
    "reduce_sum": "zero",
    "dot_general": "zero",
    "reduce_max": "lowest",
    "reduce_min": "highest",
}


@dataclasses.dataclass
class Plan:
    """The flat jaxpr, which axis of each value is tiled, and each equation's sweep."""

    closed: jex.ClosedJaxpr
    axis: dict[Any, int]  # var -> its tiled axis
    level: dict[Any, int]  # var -> the sweep after which it is known (0: before any)
    kinds: list[str]  # per eqn: "row", "reduce" or "after"
    affine: dict[Any, Any]  # literal path -> size-affine substitution
    online: dict[int, int]  # reduce eqn -> the max reduce eqn it is rescaled against
    scales: dict[int, tuple[int, ...]]  # reduce eqn -> where the max's axes are in its output
    # reduce eqn -> (sum eqn, its axes' positions, power): multiplied at the end by sum**power
    divisors: dict[int, tuple[tuple[int, tuple[int, ...], int], ...]]


@dataclasses.dataclass(frozen=True)
class Tiles:
    """Which tiles hold data: tile ``i`` for ``lo <= i < hi``; ``valid(i)`` marks its rows that
    belong to the range (a boolean vector of the tile's length); ``length`` is the number of
    rows of the range (what a mean divides by)."""

    lo: Any
    hi: Any
    valid: Callable[[Any], Any]
    length: Any
    count: int | None = None  # every tile's index, when tiles are visited by an unrolled loop
    # the caller checks the results, and recomputes point by point where they are not finite
    # (query blocks): a product of two tiled operands masks the smaller one only
    unchecked: bool = False
    # both operands of a product masked, and no check (a finiteness check over a value split
    # over devices is an all-reduce)
    exact: bool = False


class Sweeps:
    """Runs a :class:`Plan` over the tiles: the reductions of each sweep in one loop over the
    live tiles, the 'after' equations once their inputs are known."""

    def __init__(self, plan: Plan, readers: Sequence[TileReader | None], tiles: Tiles) -> None:
        self.plan = plan
        self.readers = readers
        self.tiles = tiles
        self.length = tiles.length
        self.eqns = plan.closed.jaxpr.eqns

    def run(self, args: list[Any]) -> list[Any]:
        jaxpr = self.plan.closed.jaxpr
        env: dict[Any, Any] = {}
        for k, (var, const) in enumerate(
            zip(jaxpr.constvars, self.plan.closed.consts, strict=True)
        ):
            env[var] = self._literal(("const", k), const, jnp.result_type(const))
        for var, arg, reader in zip(jaxpr.invars, args, self.readers, strict=True):
            if reader is None:
                env[var] = arg
        sweeps = sorted(
            {
                self.plan.level[e.outvars[0]]
                for i, e in enumerate(self.eqns)
                if self.plan.kinds[i] == "reduce"
            }
        )
        self._after(env)
        for sweep in sweeps:
            reduces = [
                i
                for i, e in enumerate(self.eqns)
                if self.plan.kinds[i] == "reduce" and self.plan.level[e.outvars[0]] == sweep
            ]
            env.update(self._sweep(reduces, env, sweep))
            self._after(env)
        return [self._read(v, env, ("out",)) for v in jaxpr.outvars]

    def _read(self, var: Any, env: dict, where: Any) -> Any:
        if isinstance(var, jex.Literal):
            return self._literal(where, var.val, var.aval.dtype)
        return env[var]

    def _literal(self, where: Any, value: Any, dtype: Any) -> Any:
        found = self.plan.affine.get(where)
        if found is None:
            return value
        scale = int(found.scale) if np.issubdtype(dtype, np.integer) else found.scale
        offset = int(found.offset) if np.issubdtype(dtype, np.integer) else found.offset
        return jnp.asarray(scale * self.length + offset, dtype)

    def _after(self, env: dict) -> None:
        """Evaluate every 'after' equation whose inputs are known."""
        for i, eqn in enumerate(self.eqns):
            if self.plan.kinds[i] != "after" or eqn.outvars[0] in env:
                continue
            if all(isinstance(v, jex.Literal) or v in env for v in eqn.invars):
                values = [self._read(v, env, (i, "lit", p)) for p, v in enumerate(eqn.invars)]
                env.update(zip(eqn.outvars, bind(eqn, values), strict=True))

    def _needed(self, reduces: list[int], sweep: int) -> list[int]:
        """The equations run per tile for ``reduces``, in order: their rows, and what those
        read of this sweep's running maxes."""
        producer = {var: i for i, eqn in enumerate(self.eqns) for var in eqn.outvars}
        need: set[int] = set()
        stack = [v for i in reduces for v in self.eqns[i].invars]
        while stack:
            var = stack.pop()
            j = producer.get(var) if not isinstance(var, jex.Literal) else None
            if j is None or j in need:
                continue
            kind = self.plan.kinds[j]
            if kind == "row" or (kind == "after" and self.plan.level[var] >= sweep):
                need.add(j)
                stack.extend(self.eqns[j].invars)
        return sorted(need)

    def _sweep(self, reduces: list[int], env: dict, sweep: int) -> dict:
        """One fori_loop over the live tiles computing ``reduces`` (and their online maxes)."""
        jaxpr = self.plan.closed.jaxpr
        init = {}
        for i in reduces:
            aval = self.eqns[i].outvars[0].aval
            fill = _neutral(jnp.zeros((), aval.dtype), _FILL[self.eqns[i].primitive.name])
            init[i] = jnp.full(aval.shape, fill, aval.dtype)

        online = [i for i in reduces if i in self.plan.online]
        maxes = sorted({self.plan.online[i] for i in online})
        plain = [i for i in reduces if i not in online and i not in maxes]
        first = self._needed(maxes + plain, sweep)  # rows that do not read a running max
        then = [j for j in self._needed(online, sweep) if j not in first]

        def body(tile: Any, carry: dict, masked: bool = True) -> dict:
            local = dict(env)
            for var, reader in zip(jaxpr.invars, self.readers, strict=True):
                if reader is not None:
                    local[var] = reader(tile)
            self._rows(first, local)
            out = {i: self._plain(i, carry[i], local, tile, masked) for i in plain}
            for i in maxes:  # the rows of online sums are computed against the running max
                out[i] = jnp.maximum(carry[i], self._partial(i, local, tile, masked))
                local[self.eqns[i].outvars[0]] = out[i]
            for i in online:  # divisions by rescaled sums wait for the end of the sweep
                for j, _, _ in self.plan.divisors[i]:
                    aval = self.eqns[j].outvars[0].aval
                    local[self.eqns[j].outvars[0]] = jnp.ones(aval.shape, aval.dtype)
            self._rows(then, local)
            for i in online:
                m = self.plan.online[i]
                scale = self._scale(i, carry[m], out[m])
                out[i] = carry[i] * scale + self._partial(i, local, tile, masked)
            return out

        if self.tiles.count is None:
            final = lax.fori_loop(self.tiles.lo, self.tiles.hi, body, init)
        else:  # unrolled: per tile, skip it, read it whole, or mask the rows outside the range
            final = init
            for tile in range(self.tiles.count):
                live = (tile >= self.tiles.lo) & (tile < self.tiles.hi)
                rows = self.tiles.valid(tile)
                kind = jnp.where(live & jnp.any(rows), jnp.where(jnp.all(rows), 1, 2), 0)
                branches = [
                    lambda carry: carry,
                    functools.partial(body, tile, masked=False),
                    functools.partial(body, tile),
                ]
                final = lax.switch(kind, branches, final)
        for i in online:
            shape = self.eqns[i].outvars[0].aval.shape
            for j, positions, power in self.plan.divisors[i]:
                by = lax.broadcast_in_dim(final[j], shape, positions)
                if power < 0:
                    final[i] = final[i] / (by if power == -1 else lax.integer_pow(by, -power))
                else:
                    final[i] = final[i] * lax.integer_pow(by, power)
        return {self.eqns[i].outvars[0]: final[i] for i in reduces}

    def _plain(self, i: int, acc: Any, local: dict, tile: Any, masked: bool = True) -> Any:
        return _combine(self.eqns[i], acc, self._partial(i, local, tile, masked))

    def _rows(self, eqns: list[int], local: dict) -> None:
        for j in eqns:
            eqn = self.eqns[j]
            values = [self._read(v, local, (j, "lit", p)) for p, v in enumerate(eqn.invars)]
            local.update(zip(eqn.outvars, bind(eqn, values), strict=True))

    def _partial(self, i: int, local: dict, tile: Any, masked: bool = True) -> Any:
        """Reduce ``i`` over one tile, its rows outside the range filled neutral (unless the
        range covers the whole tile: not ``masked``)."""
        eqn = self.eqns[i]
        values = [self._read(v, local, (i, "lit", p)) for p, v in enumerate(eqn.invars)]
        if not masked:
            return bind(eqn, values)[0]
        fill = _FILL[eqn.primitive.name]
        valid = self.tiles.valid(tile)
        tiled = [
            k
            for k, var in enumerate(eqn.invars[:2])
            if not isinstance(var, jex.Literal) and var in self.plan.axis
        ]
        if eqn.primitive.name != "dot_general":
            tiled = tiled[:1]

        def mask(vals: list[Any], operands: list[int]) -> list[Any]:
            vals = list(vals)
            for k in operands:
                shape = np.shape(vals[k])
                where = lax.broadcast_in_dim(valid, shape, (self.plan.axis[eqn.invars[k]],))
                vals[k] = jnp.where(where, vals[k], _neutral(vals[k], fill))
            return vals

        if len(tiled) < 2 or self.tiles.exact:
            return bind(eqn, mask(values, tiled))[0]
        # a product of two tiled operands (weights @ rows of values): zeroing the rows of the
        # smaller one is enough where the larger one's masked rows are finite (0 * x = 0), and
        # saves a masked copy of the larger one; otherwise both are masked, as the result shows
        small = min(tiled, key=lambda k: np.size(values[k]))
        fast = bind(eqn, mask(values, [small]))[0]
        if self.tiles.unchecked:
            return fast
        return when_finite([fast], lambda: fast, lambda: bind(eqn, mask(values, tiled))[0])

    def _scale(self, i: int, old: Any, new: Any) -> Any:
        """``exp(old - new)`` of max ``m`` laid out like reduce ``i``'s output."""
        factor = jnp.exp(jnp.where(jnp.isneginf(old), -jnp.inf, old - new))
        factor = jnp.where(jnp.isneginf(new), 1.0, factor)
        shape = self.eqns[i].outvars[0].aval.shape
        return lax.broadcast_in_dim(factor, shape, self.plan.scales[i])


def _combine(eqn: Any, acc: Any, part: Any) -> Any:
    kind = _COMBINE[eqn.primitive.name]
    return (
        acc + part if kind == "add" else (jnp.maximum if kind == "max" else jnp.minimum)(acc, part)
    )
