"""The pass pipeline: ``Program -> Program`` passes run before scheduling, in order.

``Pipeline()`` is the default list; turning a pass off is a different tuple, e.g.
``Pipeline(passes=(dead_ops,))``. Each pass returns a new program (the input is never
changed) with the same outputs. With the environment variable ``TEMPO_JAX_DEBUG=1`` the
program is printed after each pass; ``Compiled.stats`` reports per pass how many ops it
removed and how long it took.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable

from .._ir.program import Program
from .cleanup import eliminate_common_ops, fold_constants, hoist_invariants
from .contract import contract_sums
from .copies import remove_copies
from .dense_grad import dense_range_grads
from .fusion import fuse_growing
from .rewrite import rewrite
from .tiling import tile_dynamic_ranges
from .vectorize import vectorize

Pass = Callable[[Program], Program]


def dead_ops(program: Program) -> Program:
    """Drop ops no output or sink reads, directly or through other ops (inputs are kept: they
    are the program's signature)."""
    live: set[int] = set()
    stack = [out.edge.src for out in program.outputs]
    stack += [op.id for op in program.ops if op.kind in ("sink", "input")]
    while stack:
        op_id = stack.pop()
        if op_id in live:
            continue
        live.add(op_id)
        stack.extend(edge.src for edge in program.op(op_id).inputs)
    if len(live) == len(program.ops):
        return program
    return program.replace(ops=tuple(op for op in program.ops if op.id in live))


@dataclasses.dataclass(frozen=True)
class PassStat:
    """What one pass did: ops before and after, and its time."""

    name: str
    ops_before: int
    ops_after: int
    seconds: float


DEFAULT_PASSES: tuple[Pass, ...] = (
    dead_ops,
    dense_range_grads,  # before the others: it reads range gradients as autodiff built them
    remove_copies,
    eliminate_common_ops,
    hoist_invariants,  # before vectorize: an invariant value is computed once, not per row
    fold_constants,
    eliminate_common_ops,  # hoisting and folding make more ops equal
    rewrite,  # before vectorize: its rules match ops over their own points
    dead_ops,  # what folding and rewriting left unread
    hoist_invariants,  # what rewriting made invariant (a mean's gradient, reading no losses)
    vectorize,
    contract_sums,  # after vectorize: the sums of vectorised products become contractions
    fuse_growing,  # a value growing with a dim computed by its one reader: a tileable payload
    tile_dynamic_ranges,  # after vectorize: ops over growing ranges keep their loop dim
)


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """An ordered tuple of passes (see the module docstring)."""

    passes: tuple[Pass, ...] = DEFAULT_PASSES

    def without(self, *names: str) -> Pipeline:
        """This pipeline with the passes of these names left out, e.g.
        ``tj.Pipeline().without("vectorize")``."""
        unknown = set(names) - {_name(step) for step in self.passes}
        if unknown:
            known = ", ".join(dict.fromkeys(_name(step) for step in self.passes))
            raise ValueError(f"no pass named {sorted(unknown)} in this pipeline ({known})")
        return Pipeline(tuple(step for step in self.passes if _name(step) not in names))

    def replacing(self, name: str, step: Pass) -> Pipeline:
        """This pipeline with the pass of this name replaced, e.g. tiles of 128 rows:
        ``tj.Pipeline().replacing("tile_dynamic_ranges", partial(tj.tile_dynamic_ranges,
        block=128))``."""
        self.without(name)  # checks the name
        return Pipeline(tuple(step if _name(old) == name else old for old in self.passes))

    def streaming_behind(self) -> Pipeline | None:
        """This pipeline with learners behind backward recurrences streamed, not vectorised
        (``vectorize(behind=True)``, :mod:`.streaming`); None without a ``vectorize`` pass or
        where it already streams them."""
        steps = [step for step in self.passes if _name(step) == "vectorize"]
        if not steps or any(getattr(step, "keywords", {}).get("behind") for step in steps):
            return None
        return self.replacing("vectorize", functools.partial(vectorize, behind=True))

    def run(self, program: Program) -> tuple[Program, list[PassStat]]:
        """``program`` after every pass, and what each pass did."""
        stats = []
        debug = os.environ.get("TEMPO_JAX_DEBUG", "") not in ("", "0")
        for step in self.passes:
            start = time.perf_counter()
            before = len(program.ops)
            program = step(program)
            name = _name(step)
            stats.append(PassStat(name, before, len(program.ops), time.perf_counter() - start))
            if debug:
                print(f"-- tempo_jax: program after {name} ({len(program.ops)} ops)\n{program}")
        return program, stats


def _name(step: Pass) -> str:
    """A pass's name (a ``functools.partial`` is named after its function)."""
    return getattr(getattr(step, "func", step), "__name__", type(step).__name__)
