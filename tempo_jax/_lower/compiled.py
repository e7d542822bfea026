"""``Program.compile``: schedule a program and lower it to one pure JAX function."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .._ir.bind import DynamicBound, resolve_inputs, split_dynamic
from .._ir.errors import MemoryBudgetWarning, ScheduleInfeasibleError, UnsupportedError
from .._ir.expr import Expr, Symbol, dims_of
from .._ir.program import STOP, Program
from .._ir.source import describe
from .._passes.pipeline import PassStat, Pipeline
from .._schedule.cache import cached_check, cached_schedule
from .._schedule.domains import check_reads, covering_merges, defined_domains
from .._schedule.isl_convert import isl_context, max_over_box
from .._schedule.scheduler import cycle_error, schedule
from .._schedule.tree import Node, render
from .._schedule.trips import bound_trips
from .binding import bind_dynamic
from .buffer_plan import BufferPlan, StoredValue
from .execute import RAN, TreeLowering
from .memory_plan import Steps, peak_bytes, unmet_budget
from .nest_budget import describe_refused
from .prefetch import describe as describe_prefetch
from .sharding import ShardPlan, plan_sharding
from .sinks import SinkErrors
from .stopping import pin_stop, stop_loop
from .storage import place_buffers


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """:meth:`Compiled.memory`: the stored values; their total bytes in device memory and in
    host memory; the most device bytes held at once (``peak_device_bytes``), at the top-level
    step whose first op is ``peak_at`` (each value over its live range in the schedule); and
    the reads from host memory the lowering makes one iteration ahead (``prefetches``). The
    peak counts, besides the stored values, what XLA holds only while it computes
    (``transient_bytes`` of it, :mod:`.transients`). Under a memory budget, ``loops`` names
    the loop nests run one point per iteration rather than at once (:mod:`.nest_budget`)."""

    values: tuple[StoredValue, ...]
    device_bytes: int
    peak_device_bytes: int
    peak_at: str
    host_bytes: int = 0  # the values kept in host memory (memory kind ``pinned_host``)
    prefetches: tuple[str, ...] = ()  # reads from host memory made one iteration ahead
    # of the peak, the bytes held only while computing (:mod:`.transients`): outputs no buffer
    # keeps, gathered ranges, arrays inside ops; XLA allocates every output for the whole run
    transient_bytes: int = 0
    # the loop nests run one point per iteration, not all at once, to meet the memory budget
    loops: tuple[str, ...] = ()


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the build, the trace and the lowering to
    XLA (on again after, if it was).

    Each makes objects by the hundred thousand (expressions, isl sets, traced values, MLIR
    operations), few of them garbage: they set off collections of every generation, the
    oldest of which walks every object of the process (JAX's and the environment's modules:
    PPO on CartPole paid 0.14 s for one in a 1.7 s build, and 0.17 s of its 0.75 s
    lowering). Their cycles are collected after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Compiled:
    """A compiled program: a pure function of its inputs returning a dict of arrays.

    Call it as ``compiled(**inputs)``, also inside ``jax.jit``, ``jax.vmap`` or any JAX code.
    ``schedule`` is the loop nest as text; ``stage_seconds`` the compile time per stage;
    ``stats`` what each pass of the pipeline did.
    """

    def __init__(
        self,
        program: Program,
        bounds: dict,
        tree: Node,
        stage_seconds: dict,
        dynamic: dict[Symbol, DynamicBound] | None = None,
        donate_inputs: bool = False,
        unroll: tuple[str, ...] = (),
        memory_budget: int | None = None,
    ) -> None:
        self.program = program
        self.sharding: ShardPlan | None = None  # dims split over a device mesh (:meth:`shard`)
        self.memory_budget = memory_budget
        self.bounds = bounds  # a dynamic bound at its max
        self.dynamic = dynamic or {}  # dynamic bound -> its range
        self.tree = tree
        self.stage_seconds = stage_seconds
        self.stats: list[PassStat] = []  # per pass of the pipeline: ops before/after, seconds
        self.schedule = render(tree, program)
        self.donate_inputs = donate_inputs
        self.unroll = unroll
        self.stop_axes: dict[str, int] = {}  # output -> its axis over the dim p.stop_when ends
        self._jitted = jax.jit(self._run, donate_argnums=(0,) if donate_inputs else ())
        self._sizes: dict[tuple[str, tuple[str, ...]], int] = {}
        self._ctx = isl_context()
        # merges a branch of which holds at every point: the last one is taken untested
        self.covering = covering_merges(program, self._ctx)
        self._sink_errors = SinkErrors(program)  # what a sink's function raised, for `__call__`
        self._host: bool | None = None  # whether the plan keeps a value in host memory
        self._plan: BufferPlan | None = None  # the storage decisions, once made

    def _padded_size(self, size: Expr, dims: tuple[Symbol, ...]) -> int:
        """The largest value of a symbolic size over the box of ``dims`` (bounds at max)."""
        key = (str(size), tuple(d.name for d in dims))
        if key not in self._sizes:
            values = {b.name: v for b, v in self.bounds.items()}
            found = max_over_box(self.program, size, dims, values, self._ctx)
            self._sizes[key] = max(found, 1)
        return self._sizes[key]

    def _run(self, inputs: dict[str, Any], actual: dict[str, Any]) -> dict[str, Any]:
        if not self._swaps():
            return self._execute(inputs, actual, offload=True)
        # ``jax.grad`` does not pass through a value placed in host memory: the gradient of a
        # program that swaps is the gradient of the same program kept on the device
        run = jax.custom_vjp(lambda i, a: self._execute(i, a, offload=True))

        def forward(i: dict[str, Any], a: dict[str, Any]) -> tuple[dict[str, Any], Any]:
            return self._execute(i, a, offload=True), (i, a)

        def backward(saved: Any, cotangents: dict[str, Any]) -> Any:
            _, pull = jax.vjp(lambda i, a: self._execute(i, a, offload=False), *saved)
            return pull(cotangents)

        run.defvjp(forward, backward)
        return run(inputs, actual)

    def _swaps(self) -> bool:
        """Whether the buffer plan keeps some value in host memory."""
        if self._host is None:
            asked = any(op.memory == "offload" for op in self.program.ops)
            budgeted = self.memory_budget is not None
            self._host = (asked or budgeted) and self.memory().host_bytes > 0
        return self._host

    @_collector_paused()
    def _execute(
        self, inputs: dict[str, Any], actual: dict[str, Any], offload: bool
    ) -> dict[str, Any]:
        runtime = {**self.bounds, **{b: actual[b.name] for b in self.dynamic}}
        if self.sharding is not None:
            inputs = {
                name: self.sharding.constrain(
                    value, self.program.inputs[name].domain, self.sharding.inputs.get(name, ())
                )
                for name, value in inputs.items()
            }
        lowering = TreeLowering(
            self.program,
            self.bounds,
            inputs,
            self.tree,
            runtime,
            self._padded_size,
            self.unroll,
            self._sink_errors,
            self.memory_budget,
            offload,
            exact_masks=self.sharding is not None and self.sharding.exact_masks,
            covering=self.covering,
        )
        buffers = lowering.run(self.tree, dict(runtime), lowering.allocate())
        results: dict[str, Any] = {
            out.name: lowering.output(out, buffers)
            for out in self.program.outputs
            if out.name != STOP
        }
        if self.sharding is not None:
            results = {n: self.sharding.constrain_output(n, v) for n, v in results.items()}
        lengths = dict(actual)
        if self.program.stop is not None:
            ran = buffers[RAN]
            lengths[self.program.stop.domain[0].bound.name] = ran
            for name, axis in self.stop_axes.items():  # points past the stop: zeros
                value = results[name]
                shape = (-1,) + (1,) * (value.ndim - axis - 1)
                results[name] = jnp.where(
                    (jnp.arange(value.shape[axis]) < ran).reshape(shape), value, 0
                )
        if lengths:
            results["lengths"] = lengths
        return results

    def _bind(self, inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split call arguments into inputs and dynamic bounds, checked and padded to max
        (see :mod:`.binding`)."""
        given = dict(inputs)
        actual = bind_dynamic(self.program, self.bounds, self.dynamic, given)
        return resolve_inputs(self.program, self.bounds, given), actual

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        # a sink's exception is raised as itself, not as JAX's INTERNAL error
        return self.program.assemble(self._sink_errors.run(self._jitted, *self._bind(inputs)))

    @_collector_paused()
    def ahead_of_time(self, **inputs: Any) -> Callable[..., dict[str, Any]]:
        """XLA-compile now, for the shapes of ``inputs`` (zeros of the declared shapes by
        default), and return a function called like this one that runs the executable: a
        script can time the XLA compile apart from the run.

        Example: ``run = compiled.ahead_of_time(); out = run(x=xs)``.
        """
        executable = self.lower(**inputs).compile()

        def call(**given: Any) -> dict[str, Any]:
            return self.program.assemble(self._sink_errors.run(executable, *self._bind(given)))

        return call

    def jaxpr(self, **inputs: Any) -> Any:
        """The jaxpr of the whole program (inputs default to zeros of the declared shapes)."""
        return jax.make_jaxpr(self._run)(*self._bind(inputs or self._example_inputs()))

    @_collector_paused()
    def lower(self, **inputs: Any) -> jax.stages.Lowered:
        """The jitted function's lowering: ``.lower().compile().memory_analysis()`` works."""
        return self._jitted.lower(*self._bind(inputs or self._example_inputs()))

    def memory(self) -> MemoryReport:
        """What the program keeps, as planned: one :class:`StoredValue` per stored value (its
        name, source line, kind, stored shape, bytes, memory kind and live range), their
        total, and the planned device peak: the stored values over their live ranges and what
        XLA holds only while it computes (:mod:`.transients`), outputs held throughout.

        Example: ``for v in compiled.memory().values: print(v.name, v.kind, v.bytes)``.
        """
        plan = self._buffer_plan()
        values = plan.stored_values()
        steps = Steps(plan.tree)
        peak, at, step = peak_bytes(plan, values, steps=steps)
        transient = steps.transients(plan)[step] if step >= 0 else 0
        device = sum(v.bytes for v in values if v.memory_kind == "device")
        host = sum(v.bytes for v in values if v.memory_kind != "device")
        ahead = tuple(describe_prefetch(plan, f) for fs in plan.prefetches.values() for f in fs)
        loops = describe_refused(plan)
        return MemoryReport(tuple(values), device, peak, at, host, ahead, transient, loops)

    def _buffer_plan(self) -> BufferPlan:
        """The storage decisions for the example inputs' shapes (dynamic bounds at their
        max), made once: the sharding check and the memory report read the same plan."""
        if self._plan is None:
            self._plan = self._new_buffer_plan()
        return self._plan

    def _new_buffer_plan(self) -> BufferPlan:
        inputs = self._example_inputs()
        runtime = {**self.bounds, **{b: jnp.int32(spec.max) for b, spec in self.dynamic.items()}}
        shapes = {op.id: tuple(inputs[name].shape) for name, op in self.program.inputs.items()}
        return BufferPlan(
            self.program,
            self.bounds,
            shapes,
            self.tree,
            runtime,
            self._padded_size,
            frozenset(self.unroll),
            self.memory_budget,
            covering=self.covering,
        )

    def shard(self, plan: ShardPlan | None) -> None:
        """Split the program over a device mesh as ``plan`` says (before its first call); on
        a mesh, sinks are unordered callbacks (:class:`SinkErrors`)."""
        self.sharding = plan
        self._sink_errors = SinkErrors(self.program, ordered=plan is None)

    def nest_loops(self) -> dict[int, bool]:
        """The loops the lowering runs at once (:mod:`.blocks`), by ``id``: True for a nest's
        query loop (its blocks run one after another), False for a ``jax.vmap`` axis."""
        found = {}
        for nest in self._buffer_plan().nests.values():
            for loop in nest.loops:
                found[id(loop)] = nest.query is not None and loop.var == nest.query
        return found

    def explain(self) -> str:
        """The schedule, then the stored values (:meth:`memory`) as a table."""
        report = self.memory()
        head = (
            f"{'value':<24} {'kind':<11} {'shape':<24} {'MiB':>9}  {'memory':<11} {'live':<26} "
            "source"
        )
        lines = [self.schedule, "", head, "-" * len(head)]
        for v in report.values:
            shape = "x".join(str(n) for n in v.shape) or "()"
            lines.append(
                f"{v.name[:24]:<24} {v.kind:<11} {shape[:24]:<24} {v.bytes / 2**20:9.3f}  "
                f"{v.memory_kind:<11} {v.live[:26]:<26} {v.source}"
            )
        lines.append(
            f"planned device bytes: {report.device_bytes} ({report.device_bytes / 2**20:.2f} MiB)"
        )
        peak = report.peak_device_bytes
        working = report.transient_bytes
        lines.append(
            f"planned peak device bytes: {peak} ({peak / 2**20:.2f} MiB), at {report.peak_at}; "
            f"of it, held only while computing: {working} ({working / 2**20:.2f} MiB)"
        )
        if report.host_bytes:
            host = report.host_bytes
            lines.append(f"planned host bytes: {host} ({host / 2**20:.2f} MiB)")
        lines += [f"prefetch: {line}" for line in report.prefetches]
        lines += [f"under the memory budget: {line}" for line in report.loops]
        return "\n".join(lines)

    def _example_inputs(self) -> dict[str, jax.ShapeDtypeStruct]:
        example = {}
        for name, op in self.program.inputs.items():
            lead = tuple(self.bounds[d.bound] for d in op.domain)
            spec = op.outputs[0]
            example[name] = jax.numpy.zeros(lead + spec.concrete_shape(self.bounds), spec.dtype)
        example.update({b.name: spec.max for b, spec in self.dynamic.items()})
        return example


@_collector_paused()
def compile_program(
    program: Program,
    bounds: Mapping[Any, int],
    *,
    donate_inputs: bool = False,
    pipeline: Pipeline | None = None,
    unroll: tuple[str, ...] = (),
    memory_budget: int | None = None,
    mesh: Any = None,
    shard: Any = None,
    specs: Any = None,
) -> Compiled:
    """Run the pass pipeline, then check, schedule and lower ``program`` for ``bounds``
    (``mesh``, ``shard`` and ``specs``: values split over a device mesh, :mod:`.sharding`).

    Under a ``memory_budget`` the vectorised plan misses, the program is compiled again with
    its learners streaming behind backward recurrences (:mod:`tempo_jax._passes.streaming`),
    and of the two, the one XLA gives less temporary device memory is kept (:func:`_leaner`)."""
    pipeline = pipeline or Pipeline()
    compiled = _compile_once(program, bounds, pipeline, donate_inputs, unroll, memory_budget)
    if memory_budget is not None:
        unmet = unmet_budget(compiled._buffer_plan(), memory_budget)
        streaming = pipeline.streaming_behind()
        if unmet is not None and streaming is not None:
            other = _compile_once(program, bounds, streaming, donate_inputs, unroll, memory_budget)
            compiled = _leaner(compiled, other)
            unmet = unmet_budget(compiled._buffer_plan(), memory_budget)
        if unmet is not None:
            warnings.warn(unmet, MemoryBudgetWarning, stacklevel=3)
    if mesh is not None or shard or specs:  # block nests' loops are vmap axes: shardable
        at_once = compiled.nest_loops()
        plan = plan_sharding(
            compiled.program,
            compiled.tree,
            compiled.bounds,
            compiled.dynamic,
            mesh,
            shard,
            specs,
            at_once,
            program,
        )
        compiled.shard(plan)
    return compiled


def _leaner(vectorised: Compiled, streamed: Compiled) -> Compiled:
    """Of a program compiled with its learners vectorised and with them streamed (the same
    program where nothing streams), the one whose XLA executable takes less temporary device
    memory (``memory_analysis()``; XLA-compiled here, once each, for the example inputs).

    XLA's figure, not the plan's: the plan counts stored values, not the values computed
    inside an op, and a learner vectorised over a rollout computes its activations for every
    step at once (REINFORCE with a CNN on 3x16x16 images over 64 steps: 59 MiB of temporary
    memory against 15 MiB streamed, where the plans differ by 2 MiB)."""
    if streamed.schedule == vectorised.schedule:
        return vectorised  # nothing streams behind a recurrence: the same program
    start = time.perf_counter()
    temp = [
        c.lower().compile().memory_analysis().temp_size_in_bytes for c in (vectorised, streamed)
    ]
    chosen = streamed if temp[1] < temp[0] else vectorised
    chosen.stage_seconds = {
        **{
            k: vectorised.stage_seconds[k] + streamed.stage_seconds[k] for k in chosen.stage_seconds
        },
        "choose": time.perf_counter() - start,
    }
    return chosen


def _compile_once(
    program: Program,
    bounds: Mapping[Any, int],
    pipeline: Pipeline,
    donate_inputs: bool,
    unroll: tuple[str, ...],
    memory_budget: int | None,
) -> Compiled:
    """``program`` through ``pipeline``, checked, scheduled and planned (its memory against
    ``memory_budget``), not yet sharded."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    user = program
    env, dynamic = split_dynamic(program, bounds)
    sizes = tuple((b, v) for b, v in env.items() if b not in dynamic)
    program = program.replace(dynamic=frozenset(dynamic), sizes=sizes)
    ctx = isl_context()
    ranges = {b.name: (v, v) for b, v in env.items()}
    ranges.update({b.name: (spec.min, spec.max) for b, spec in dynamic.items()})
    # every read checked on the program the interpreter runs: passes may turn a read past a
    # domain's end into one a JAX index clamps (a vectorised map's ``y[1]`` at ``T = 1``)
    written = program
    cached_check(
        written,
        ranges,
        lambda: check_reads(written, ctx, defined_domains(written, ctx, ranges=ranges)),
    )
    seconds["check"] = time.perf_counter() - start
    start = time.perf_counter()
    program, stats = pipeline.run(program)
    program = pin_stop(program)  # the stop condition read from an op over its dim
    seconds["passes"] = time.perf_counter() - start
    check_static_sizes(program)
    start = time.perf_counter()
    try:
        scheduled = cached_schedule(program, schedule)
    except ScheduleInfeasibleError as err:  # name the cycle by the user's tensors
        raise cycle_error(user, {b.name: v for b, v in env.items()}) or err from None
    tree = place_buffers(program, bound_trips(scheduled, program, ranges))
    stop_loop(program, tree)  # a stop that cannot end its loop fails here, not at the first call
    seconds["schedule"] = time.perf_counter() - start
    compiled = Compiled(program, env, tree, seconds, dynamic, donate_inputs, unroll, memory_budget)
    if user.stop is not None:  # outputs in the user's layout: domain dims first, as declared
        (dim,) = user.stop.domain
        compiled.stop_axes = {
            out.name: out.domain.index(dim)
            for out in user.outputs
            if dim in out.domain and out.name != STOP
        }
    compiled.stats = stats
    compiled._swaps()  # plans memory now: a tj.offload that cannot be kept fails at compile
    return compiled


def check_static_sizes(program: Program) -> None:
    """An output must have one shape at every point of its domain (it may grow with a dynamic
    bound: it is then padded to the bound's max)."""
    for out in program.outputs:
        shape = out.spec.shape
        if any(not isinstance(d, int) and dims_of(d) for d in shape):
            raise UnsupportedError(
                f"output `{out.name}`{describe(out.edge.source)} has shape {out.spec}, which "
                "varies over its domain; the compiler returns arrays of one shape per output "
                "(reduce the growing axis, or read a static range)."
            )
