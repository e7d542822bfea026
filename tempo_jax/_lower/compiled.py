"""``Program.compile``: schedule a program and lower it to one pure JAX function."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jax

from .._ir.bind import resolve_bounds, resolve_inputs
from .._ir.errors import UnsupportedError
from .._ir.expr import Slice, dims_of
from .._ir.program import Program
from .._ir.source import describe
from .._schedule.domains import check_reads, defined_domains
from .._schedule.isl_convert import isl_context
from .._schedule.scheduler import schedule
from .._schedule.tree import Node, render
from .execute import TreeLowering


class Compiled:
    """A compiled program: a pure function of its inputs returning a dict of arrays.

    Call it as ``compiled(**inputs)``, also inside ``jax.jit``, ``jax.vmap`` or any JAX code.
    ``schedule`` is the loop nest as text; ``stage_seconds`` the compile time per stage.
    """

    def __init__(self, program: Program, bounds: dict, tree: Node, stage_seconds: dict) -> None:
        self.program = program
        self.bounds = bounds
        self.tree = tree
        self.stage_seconds = stage_seconds
        self.schedule = render(tree, program)
        self._jitted = jax.jit(self._run)

    def _run(self, inputs: dict[str, Any]) -> dict[str, jax.Array]:
        lowering = TreeLowering(self.program, self.bounds, inputs, self.tree)
        buffers = lowering.run(self.tree, dict(self.bounds), lowering.allocate())
        return {out.name: lowering.output(out, buffers) for out in self.program.outputs}

    def _bind(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return resolve_inputs(self.program, self.bounds, inputs)

    def __call__(self, **inputs: Any) -> dict[str, jax.Array]:
        return self._jitted(self._bind(inputs))

    def jaxpr(self, **inputs: Any) -> Any:
        """The jaxpr of the whole program (inputs default to zeros of the declared shapes)."""
        return jax.make_jaxpr(self._run)(self._bind(inputs or self._example_inputs()))

    def lower(self, **inputs: Any) -> jax.stages.Lowered:
        """The jitted function's lowering: ``.lower().compile().memory_analysis()`` works."""
        return self._jitted.lower(self._bind(inputs or self._example_inputs()))

    def _example_inputs(self) -> dict[str, jax.ShapeDtypeStruct]:
        example = {}
        for name, op in self.program.inputs.items():
            lead = tuple(self.bounds[d.bound] for d in op.domain)
            spec = op.outputs[0]
            example[name] = jax.numpy.zeros(lead + spec.concrete_shape(self.bounds), spec.dtype)
        return example


def compile_program(program: Program, bounds: Mapping[Any, int]) -> Compiled:
    """Check, schedule and lower ``program`` for the given static ``bounds``."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    env = resolve_bounds(program, bounds)
    check_static_sizes(program)
    ctx = isl_context()
    check_reads(program, ctx, defined_domains(program, ctx))
    seconds["check"] = time.perf_counter() - start
    start = time.perf_counter()
    tree = schedule(program)
    seconds["schedule"] = time.perf_counter() - start
    return Compiled(program, env, tree, seconds)


def check_static_sizes(program: Program) -> None:
    """This lowering stores full buffers: every size must be fixed once bounds are known."""
    for op in program.ops:
        for spec in op.outputs:
            if spec.symbols() - set(program.bounds):
                raise UnsupportedError(
                    f"`{op.name}`{describe(op.source)} has shape {spec}, which varies over the "
                    "domain; compiling sizes such as `t + 1` (growing ranges like `x[0:t+1]`) "
                    "is not supported yet. `tj.reference.run` runs this program."
                )
        for edge in op.inputs:
            for item in edge.index:
                if isinstance(item, Slice) and dims_of(item.size):
                    raise UnsupportedError(
                        f"`{edge.describe(program.op(edge.src).name)}`{describe(edge.source)} "
                        f"reads a range of size {item.size}, which varies over the domain; not "
                        "supported by the compiler yet. `tj.reference.run` runs this program."
                    )
