"""The reference interpreter: evaluates a program point by point — the oracle.

No scheduling cleverness: each output point is demanded, and every point it reads is
evaluated first, depth-first with an explicit stack (so long recurrences do not hit the
recursion limit), memoised per ``(op, point)``. Points that depend on later points
(``r[t:T]``, backward recurrences) simply get evaluated in the order demand reaches them.

With ``p.stop_when(cond)``, ``cond`` over ``t``, the condition is evaluated first, at
``t = 0, 1, ...`` until it holds: ``n`` points run. A point of a computed op at ``t >= n`` is
never computed: every read of it (by an op, a sink or an output, e.g. ``s[T-1]`` or
``s[0:T]``) sees zeros, outputs over ``t`` hold zeros at ``t >= n`` and sinks are not called
there. Inputs read as given.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._ir.bind import resolve_bounds, resolve_inputs
from .._ir.errors import (
    DependenceCycleError,
    OutOfBoundsError,
    TempoError,
    UndefinedPointError,
    VerificationError,
)
from .._ir.expr import Slice, Symbol
from .._ir.program import STOP, Edge, Op, Program, TensorSpec, sink_note
from .._ir.source import describe

Point = tuple[int, ...]
Key = tuple[int, Point]  # (op id, point in the op's domain order)


def run(
    program: Any,
    bounds: Mapping[Any, int] | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> dict[str, jnp.ndarray]:
    """Evaluate ``program`` point by point and return its outputs by name.

    ``bounds`` maps bound symbols (``t.bound``), their dims, or their names to ints;
    ``inputs`` maps input names to arrays of shape ``(*domain bounds, *shape)``. An output
    over domain ``(b,)`` with spatial shape ``(4,)`` comes back as an array ``(B, 4)``.
    """
    ir = program if isinstance(program, Program) else program.to_ir()
    env = resolve_bounds(ir, bounds or {})
    arrays = resolve_inputs(ir, env, inputs or {})
    interpreter = _Interpreter(ir, env, arrays)
    results = interpreter.outputs()
    interpreter.sinks()
    if ir.stop is not None:
        (dim,) = ir.stop.domain
        results["lengths"] = {dim.bound.name: interpreter.stopped[1]}
    return ir.assemble(results)


class _Interpreter:
    def __init__(self, program: Program, bounds: dict[Symbol, int], arrays: dict[str, Any]):
        self.program = program
        self.bounds = bounds
        self.arrays = arrays
        self.cache: dict[Key, tuple[Any, ...]] = {}
        self.stopped: tuple[Symbol, int] | None = None
        self.stopped = self._stop()  # (dim, points run) of `p.stop_when`, else None

    def _stop(self) -> tuple[Symbol, int] | None:
        """Run the stop condition in order until it holds: how many points of its dim run."""
        stop = self.program.stop
        if stop is None:
            return None
        (dim,) = stop.domain
        for i in range(self.bounds[dim.bound]):
            if bool(self._value_at(stop.edge, self._env(stop.domain, (i,)), "p.stop_when")):
                return dim, i + 1
        return dim, self.bounds[dim.bound]

    def _past_stop(self, domain: tuple[Symbol, ...], point: Point) -> bool:
        """Whether ``point`` lies past the stop of ``p.stop_when`` (it never runs)."""
        if self.stopped is None or self.stopped[0] not in domain:
            return False
        dim, run = self.stopped
        return point[domain.index(dim)] >= run

    def _never_run(self, key: Key) -> bool:
        """Whether ``key`` is a point of a computed op past the stop: never computed, it reads
        as zeros (inputs read as given)."""
        op = self.program.op(key[0])
        return op.kind != "input" and self._past_stop(op.domain, key[1])

    # -- outputs -----------------------------------------------------------------------------
    def outputs(self) -> dict[str, jnp.ndarray]:
        results = {}
        for out in self.program.outputs:
            if out.name == STOP:
                continue
            shape = tuple(self.bounds[d.bound] for d in out.domain)
            values = []
            spatial = out.spec.concrete_shape(self.bounds)
            for point in itertools.product(*(range(n) for n in shape)):
                if self._past_stop(out.domain, point):
                    values.append(jnp.zeros(spatial, out.spec.dtype))
                    continue
                env = self._env(out.domain, point)
                values.append(self._value_at(out.edge, env, f"output {out.name!r}"))
            if values:
                array = jnp.stack(values).reshape(shape + spatial)
            else:
                array = jnp.zeros(shape + spatial, out.spec.dtype)
            results[out.name] = out.arrange(array.astype(out.spec.dtype))
        return results

    def sinks(self) -> None:
        """Call every sink at every point of its domain, in lexicographic point order."""
        for op in self.program.ops:
            if op.kind != "sink":
                continue
            (edge,) = op.inputs
            for point in itertools.product(*(range(self.bounds[d.bound]) for d in op.domain)):
                if self._past_stop(op.domain, point):
                    continue
                value = np.asarray(self._value_at(edge, self._env(op.domain, point), op.name))
                assert op.payload is not None
                at = {d.name: v for d, v in zip(op.domain, point, strict=True)}
                try:
                    op.payload.fn(value, at)
                except Exception as exc:
                    exc.add_note(sink_note(op, at))
                    raise

    def _value_at(self, edge: Edge, env: dict[Symbol, int], reader: str) -> Any:
        """What ``edge`` reads at the point of ``env``, evaluating every point it needs."""
        for key in self._reads(edge, env, reader, None):
            if not self._never_run(key):
                self._demand(key, edge, env)
        return self._gather(edge, env, reader)

    # -- demand-driven evaluation --------------------------------------------------------------
    def _demand(self, root: Key, edge: Edge, reader_env: dict[Symbol, int]) -> None:
        """Evaluate ``root`` and everything it reads (an explicit-stack depth-first walk)."""
        if root in self.cache:
            return
        # Frame: [key, the edge that demanded it, its dependences (computed lazily), cursor]
        stack: list[list[Any]] = [[root, edge, None, 0]]
        on_stack = {root: 0}
        while stack:
            frame = stack[-1]
            key = frame[0]
            if frame[2] is None:
                frame[2] = self._dependences(key, frame[1])
            deps = frame[2]
            while frame[3] < len(deps) and deps[frame[3]][0] in self.cache:
                frame[3] += 1
            if frame[3] < len(deps):
                dep, dep_edge = deps[frame[3]]
                if dep in on_stack:
                    raise self._cycle_error([f[0] for f in stack[on_stack[dep] :]], dep)
                on_stack[dep] = len(stack)
                stack.append([dep, dep_edge, None, 0])
                continue
            self.cache[key] = self._compute(key)
            stack.pop()
            del on_stack[key]

    def _dependences(self, key: Key, demanded_by: Edge) -> list[tuple[Key, Edge]]:
        op_id, point = key
        op = self.program.op(op_id)
        env = self._env(op.domain, point)
        if op.kind == "input":
            return []
        edges = op.inputs
        if op.kind == "merge":
            edges = (self._branch(op, env, point, demanded_by),)
        deps = []
        for edge in edges:
            reads = self._reads(edge, env, op.name, op)
            deps.extend((k, edge) for k in reads if not self._never_run(k))
        return deps

    def _branch(self, op: Op, env: dict[Symbol, int], point: Point, demanded_by: Edge) -> Edge:
        for edge in op.inputs:
            if edge.cond.evaluate(env):
                return edge
        at = ", ".join(f"{d.name}={v}" for d, v in zip(op.domain, point, strict=True))
        read = f"read as `{demanded_by.describe(op.name)}`{describe(demanded_by.source)}"
        conds = [str(e.cond) for e in op.inputs]
        covered = f"its branches cover {' | '.join(conds)}" if conds else "it has no branches"
        raise UndefinedPointError(
            f"`{op.name}` is {read}, but no branch defines it at {at or 'its only point'} "
            f"({covered}). Add a branch for these points, e.g. `{op.name}[True] = ...` as a "
            f"default, or change the read."
        )

    def _reads(self, edge: Edge, env: dict[Symbol, int], reader: str, op: Op | None) -> list[Key]:
        """Producer points one consumer point reads through ``edge`` (bounds-checked)."""
        producer = self.program.op(edge.src)
        ranges = []
        for dim, item in zip(producer.domain, edge.index, strict=True):
            values = item.evaluate(env) if isinstance(item, Slice) else (item.evaluate(env),)
            for v in values:
                if not 0 <= v < self.bounds[dim.bound]:
                    raise self._bounds_error(edge, producer, dim, item, v, env, reader)
            ranges.append(values)
        return [(edge.src, point) for point in itertools.product(*ranges)]

    # -- computing one point ---------------------------------------------------------------------
    def _compute(self, key: Key) -> tuple[Any, ...]:
        op_id, point = key
        op = self.program.op(op_id)
        env = self._env(op.domain, point)
        if op.kind == "input":
            return (self.arrays[op.name][point],)
        if op.kind == "merge":
            edge = next(e for e in op.inputs if e.cond.evaluate(env))
            value = self._gather(edge, env, op.name)  # a branch may broadcast (vectorised merge)
            return (jnp.broadcast_to(value, op.outputs[0].concrete_shape(env)),)
        values = [self._gather(edge, env, op.name) for edge in op.inputs]
        assert op.payload is not None
        result = op.payload.fn(env, *values) if op.payload.uses_point else op.payload.fn(*values)
        return tuple(self._checked(op, k, r, env) for k, r in enumerate(result))

    def _gather(self, edge: Edge, env: dict[Symbol, int], reader: str) -> Any:
        producer = self.program.op(edge.src)
        keys = self._reads(edge, env, reader, None)
        spec = producer.outputs[edge.out]
        values = [
            jnp.zeros(spec.concrete_shape(self._env(producer.domain, k[1])), spec.dtype)
            if self._never_run(k)
            else self.cache[k][edge.out]
            for k in keys
        ]
        sizes = [len(item.evaluate(env)) for item in edge.index if isinstance(item, Slice)]
        if not sizes:
            return values[0]
        if not values:
            return jnp.zeros((*sizes, *spec.concrete_shape(env)), spec.dtype)
        stacked = jnp.stack(values)
        return stacked.reshape((*sizes, *stacked.shape[1:]))

    def _checked(self, op: Op, k: int, value: Any, env: dict[Symbol, int]) -> Any:
        value = jnp.asarray(value)
        spec: TensorSpec = op.outputs[k]
        want = spec.concrete_shape(env)
        if tuple(value.shape) != want or value.dtype != spec.dtype:
            raise VerificationError(
                f"`{op.name}`{describe(op.source)} produced {value.dtype.name}{list(value.shape)}"
                f" at a point where its spec says {spec.dtype.name}{list(want)}"
            )
        return value

    def _env(self, domain: tuple[Symbol, ...], point: Point) -> dict[Symbol, int]:
        env = dict(self.bounds)
        env.update(zip(domain, point, strict=True))
        return env

    # -- errors ------------------------------------------------------------------------------------
    def _bounds_error(
        self,
        edge: Edge,
        producer: Op,
        dim: Symbol,
        item: Any,
        value: int,
        env: dict[Symbol, int],
        reader: str,
    ) -> TempoError:
        at = ", ".join(f"{s.name}={v}" for s, v in env.items() if not s.is_bound)
        bound = self.bounds[dim.bound]
        side = "past the end" if value >= bound else "before the start"
        fix = (
            f"Add a condition so that this point is defined by another branch (e.g. a "
            f"`{dim.name}` boundary case such as `x[{dim.bound.name} - 1] = ...`), or clamp "
            f"the index with `tj.min`/`tj.max`."
            if value >= bound
            else f"Define the first points separately (e.g. `x[0] = ...` before "
            f"`x[{dim.name} + 1] = ...`), or clamp the index with `tj.max(0, ...)`."
        )
        return OutOfBoundsError(
            f"`{edge.describe(producer.name)}`{describe(edge.source)}, read by {reader}, reads "
            f"{side} of the domain 0 <= {dim.name} < {dim.bound.name}: `{item}` is {value} at "
            f"{at or 'the only point'} ({dim.bound.name}={bound}). {fix}"
        )

    def _cycle_error(self, keys: list[Key], closing: Key) -> TempoError:
        steps = []
        for op_id, point in [*keys, closing]:
            op = self.program.op(op_id)
            at = ", ".join(f"{d.name}={v}" for d, v in zip(op.domain, point, strict=True))
            steps.append(f"`{op.name}`[{at}]{describe(op.source)}")
        first = self.program.op(closing[0])
        return DependenceCycleError(
            f"`{first.name}` depends on itself: " + " -> ".join(steps) + ". A point can only "
            "read other points: read an earlier one (e.g. `x[t - 1]`) and define the first "
            "points by their own branch (`x[0] = ...`)."
        )


__all__ = ["resolve_bounds", "resolve_inputs", "run"]
