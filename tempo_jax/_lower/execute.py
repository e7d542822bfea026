"""Lowering a schedule tree to JAX: loops, guards and op executions over carried buffers.

This first lowering stores every op output in a *full* buffer ``(*domain bounds, *shape)``
carried through the loops: a loop becomes ``lax.fori_loop`` (a ``scan`` when its trip
count is static), a guard ``lax.cond``, an op execution reads its inputs with
``lax.dynamic_slice`` at the point's indices, runs its payload and writes the result back
with ``lax.dynamic_update_slice``. A merge op selects its first branch whose condition holds.

Points scheduled but never demanded (the body of ``x[t+1] = f(x[t], y[t+1])`` at the last
step) read clamped indices and write values nobody reads; the compile-time read check
(``_schedule.domains``) guarantees every *demanded* point is defined.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._ir.expr import Slice, Symbol
from .._ir.program import Edge, Op, Output, Program
from .._schedule.tree import Exec, Guard, Loop, Node, Sequence
from .storage import plan_storage

Buffers = dict[tuple, jax.Array]  # (op id, output) -> full buffer; (op, output, RING) -> window
RING = 1  # third key element of a window ring carried by a loop
Env = Mapping[Symbol, Any]  # symbol -> Python int (bounds) or traced int32 (dims, loop vars)


class TreeLowering:
    """Runs a schedule tree inside one JAX trace, for fixed bounds and input arrays."""

    def __init__(
        self,
        program: Program,
        bounds: dict[Symbol, int],
        inputs: dict[str, Any],
        tree: Node,
        runtime: Env | None = None,
    ):
        self.program = program
        self.bounds = bounds  # static: sizes (a dynamic bound at its max)
        self.runtime = runtime or bounds  # values: a dynamic bound as a traced scalar
        self.inputs = {op.id: inputs[op.name] for op in program.ops if op.kind == "input"}
        self.plan = plan_storage(program, tree)

    # -- buffers ---------------------------------------------------------------------------------
    def allocate(self) -> Buffers:
        """A zero-filled full buffer per output of every computed op."""
        buffers: Buffers = {}
        for op in self.program.ops:
            if op.kind == "input":
                continue
            lead = tuple(self.bounds[d.bound] for d in op.domain)
            for k, spec in enumerate(op.outputs):
                if (op.id, k) not in self.plan.buffered:
                    continue  # point or window storage: never stored in full
                shape = lead + spec.concrete_shape(self.bounds)
                buffers[(op.id, k)] = jnp.zeros(shape, spec.dtype)
        return buffers

    def _buffer(self, edge: Edge, buffers: Buffers) -> jax.Array:
        if edge.src in self.inputs:
            return self.inputs[edge.src]
        return buffers[(edge.src, edge.out)]

    # -- the tree ------------------------------------------------------------------------------
    def run(self, node: Node, env: Env, buffers: Buffers) -> Buffers:
        """Execute ``node`` with the loop variables of ``env``; return the updated buffers."""
        if isinstance(node, Sequence):
            local: dict[int, tuple[Any, ...]] = {}  # values computed at this level's points
            for child in node.children:
                if isinstance(child, Exec):
                    buffers = self._exec(child, env, buffers, local)
                else:
                    buffers = self.run(child, env, buffers)
            return buffers
        if isinstance(node, Loop):
            return self._loop(node, env, buffers)
        if isinstance(node, Guard):
            cond = node.cond.evaluate(env)
            if isinstance(cond, int | bool):
                return self.run(node.body, env, buffers) if cond else buffers
            return lax.cond(cond, lambda b: self.run(node.body, env, b), lambda b: b, buffers)
        if isinstance(node, Exec):
            return self._exec(node, env, buffers, {})
        raise TypeError(f"unknown schedule node {type(node).__name__}")

    def _loop(self, node: Loop, env: Env, buffers: Buffers) -> Buffers:
        start, stop = node.start.evaluate(env), node.stop.evaluate(env)
        var = node.var

        def body(k: Any, b: Buffers) -> Buffers:
            value = start + stop - 1 - k if node.reverse else k
            return self.run(node.body, {**env, var: value}, b)

        rings = self.plan.rings.get(node, {})
        carried = dict(buffers)
        for (op_id, out), depth in rings.items():  # the last `depth` values, newest first
            spec = self.program.op(op_id).outputs[out]
            shape = (depth, *spec.concrete_shape(self.bounds))
            carried[(op_id, out, RING)] = jnp.zeros(shape, spec.dtype)
        carried = lax.fori_loop(start, stop, body, carried)
        return {key: value for key, value in carried.items() if len(key) == 2}

    def _exec(
        self, node: Exec, env: Env, buffers: Buffers, local: dict[int, tuple[Any, ...]]
    ) -> Buffers:
        op = self.program.op(node.op)
        if op.kind == "input":
            return buffers
        point = [jnp.asarray(e.evaluate(env), jnp.int32) for e in node.point]
        op_env = {**self.runtime, **dict(zip(op.domain, point, strict=True))}
        values = self.compute(op, op_env, self._inputs(node, op, op_env, buffers, local))
        local[op.id] = tuple(values)
        buffers = dict(buffers)
        for k, value in enumerate(values):
            ring = (op.id, k, RING)
            if ring in buffers:  # newest first: shift the window by one
                value_ = jnp.asarray(value, buffers[ring].dtype)[None]
                buffers[ring] = jnp.concatenate([value_, buffers[ring][:-1]])
            if (op.id, k) not in self.plan.buffered:
                continue
            buf = buffers[(op.id, k)]
            update = jnp.asarray(value, buf.dtype).reshape(
                (1,) * len(point) + buf.shape[len(point) :]
            )
            zeros = [jnp.int32(0)] * (buf.ndim - len(point))
            buffers[(op.id, k)] = lax.dynamic_update_slice(buf, update, [*point, *zeros])
        return buffers

    # -- one point -----------------------------------------------------------------------------
    def _inputs(
        self, node: Exec, op: Op, env: Env, buffers: Buffers, local: dict[int, tuple[Any, ...]]
    ) -> list[Any]:
        values = []
        for k, edge in enumerate(op.inputs):
            if (node, k) in self.plan.local:
                values.append(local[edge.src][edge.out])
            elif (node, k) in self.plan.window:
                values.append(buffers[(edge.src, edge.out, RING)][self.plan.window[(node, k)]])
            else:
                values.append(self.read(edge, env, buffers))
        return values

    def compute(self, op: Op, env: Env, values: list[Any]) -> tuple[Any, ...]:
        """The outputs of ``op`` at the point of ``env``, from its inputs' ``values``."""
        if op.kind == "sink":
            self._sink(op, env, values[0])
            return ()
        if op.kind == "merge":
            spec = op.outputs[0]
            result = jnp.zeros(spec.concrete_shape(self.bounds), spec.dtype)
            for edge, value in reversed(list(zip(op.inputs, values, strict=True))):
                result = jnp.where(edge.cond.evaluate(env), value, result)  # first match wins
            return (result,)
        assert op.payload is not None
        if op.payload.uses_point:
            return op.payload.fn(env, *values)
        return op.payload.fn(*values)

    def _sink(self, op: Op, env: Env, value: Any) -> None:
        assert op.payload is not None
        fn, names = op.payload.fn, [d.name for d in op.domain]

        def host(v: Any, *point: Any) -> None:
            fn(np.asarray(v), {n: int(p) for n, p in zip(names, point, strict=True)})

        jax.debug.callback(host, value, *(env[d] for d in op.domain), ordered=True)

    def read(self, edge: Edge, env: Env, buffers: Buffers) -> jax.Array:
        """The value ``edge`` reads at the point of ``env`` (slices stacked in index order)."""
        buf = self._buffer(edge, buffers)
        starts, sizes, keep = [], [], []
        for item in edge.index:
            if isinstance(item, Slice):
                starts.append(item.start.evaluate(env))
                sizes.append(item.size.evaluate(self.bounds))
                keep.append(True)
            else:
                starts.append(item.evaluate(env))
                sizes.append(1)
                keep.append(False)
        spatial = buf.shape[len(edge.index) :]
        starts += [0] * len(spatial)
        starts = [jnp.asarray(s, jnp.int32) for s in starts]
        window = lax.dynamic_slice(buf, starts, [*sizes, *spatial])
        shape = [s for s, k in zip(sizes, keep, strict=True) if k] + list(spatial)
        return window.reshape(shape)

    # -- outputs ---------------------------------------------------------------------------------
    def output(self, out: Output, buffers: Buffers) -> jax.Array:
        """An output: its read at every point of its domain, domain dims first."""
        shape = tuple(self.bounds[d.bound] for d in out.domain)
        if not shape:
            return self.read(out.edge, self.runtime, buffers)
        grid = np.indices(shape).reshape(len(shape), -1)

        def at(*coords: Any) -> jax.Array:
            env = {**self.runtime, **dict(zip(out.domain, coords, strict=True))}
            return self.read(out.edge, env, buffers)

        values = jax.vmap(at)(*(jnp.asarray(row, jnp.int32) for row in grid))
        return values.reshape(shape + values.shape[1:]).astype(out.spec.dtype)
