"""Which stored values live in host memory, and the planned peak of device memory.

A full buffer (every point of a value's domain) may be kept in host memory (``pinned_host``)
instead of device memory: the lowering writes each point's value there as it is produced and
brings each read (a point, a tile, a range) back to the device. :func:`plan_memory` decides
which, from the user's marks (``tj.offload`` forces a buffer to the host, ``tj.keep`` keeps it
on the device) and a device budget (``compile(..., memory_budget=bytes)``): while the planned
peak (:func:`peak_bytes`) is over the budget, the largest buffer that pays is moved to the
host. A buffer pays when a loop fills it and a later step of the same sequence reads it (a
rollout's observations, read by the learner after the acting loop), not when it is only
read within the loop that writes it.

The peak counts each device value over its live span of the schedule's top-level steps: a
buffer from its ``alloc`` to its ``free``; a captured value from the step computing it to the
last step reading it (to the end for an output); a loop's ring during the step holding the
loop, unless it holds one value whose last is an output (the output's buffer holds it: XLA
makes the loop's result the output); a running sum throughout. A merge that starts a kept
value from an input (``BufferPlan.seeded``) holds no array of its own at its one point: it is
the kept value's; nor does a one-point value held for readers that is made from literals alone
or is a merge's point whose branch reads an input as it is (:func:`_unheld`).
A buffer in host memory counts during each step that reads it with the largest region one of
its reads brings back to the device (:func:`read_bytes`: all of it for a read taking every
point at once), and in full at the end when it is an output.
A read fetched one iteration ahead (:mod:`.prefetch`) counts twice: the current
iteration's region and the next one's are on the device together (while the budget is
planned too: the reads that would be prefetched with the buffers tried in host memory).
So moving a buffer read whole by a learner that takes the whole rollout at once frees its
bytes during acting but not at the learner's step: it lowers the peak only where the peak is
elsewhere, and the budget moves a buffer only when it lowers the device bytes at a step
where the planned peak is reached.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._ir.errors import TempoError
from .._ir.expr import FALSE, TRUE, Slice, substitute
from .._ir.program import Edge, describe_op
from .._ir.simplify import simplify
from .._schedule.tree import Alloc, Exec, Free, Loop, Node, Sequence, steps, walk
from .prefetch import plan_prefetches
from .transients import Transients, transient_bytes

if TYPE_CHECKING:
    from .buffer_plan import BufferPlan, StoredValue

HOST = "pinned_host"
Key = tuple[int, int]


class Steps:
    """The schedule's top-level steps (its children other than allocs and frees): the ops
    each runs, the nodes each holds, and the span of steps each placed buffer lives over."""

    def __init__(self, tree: Node) -> None:
        children = steps(tree)
        self.steps = [c for c in children if not isinstance(c, Alloc | Free)]
        self.ops = [{n.op for n in walk(s) if isinstance(n, Exec)} for s in self.steps]
        self.nodes = [{id(n) for n in walk(s)} for s in self.steps]
        last = len(self.steps) - 1
        self.spans: dict[Key, tuple[int, int]] = {}
        self._transients: list[int] | None = None
        self._unheld: set[tuple[Key, str, Any]] | None = None
        k = 0
        for child in children:
            if isinstance(child, Alloc):
                self.spans[(child.op, child.out)] = (k, last)
            elif isinstance(child, Free):
                self.spans[(child.op, child.out)] = (self.spans[(child.op, child.out)][0], k - 1)
            else:
                k += 1

    def transients(self, plan: BufferPlan) -> list[int]:
        """Per step, the bytes of transients held at once (:mod:`.transients`), planned once."""
        if self._transients is None:
            self._transients = transient_bytes(plan, self.steps)
        return self._transients

    def unheld(self, plan: BufferPlan) -> set[tuple[Key, str, Any]]:
        """The values that hold no array of their own (:func:`_unheld`), planned once."""
        if self._unheld is None:
            self._unheld = _unheld(plan)
        return self._unheld

    def using(self, ops: Iterable[int]) -> list[int]:
        """The steps that run one of ``ops``, in order."""
        wanted = set(ops)
        return [i for i, found in enumerate(self.ops) if found & wanted]


def peak_bytes(
    plan: BufferPlan,
    values: list[StoredValue],
    host: Iterable[Key] = (),
    steps: Steps | None = None,
) -> tuple[int, str, int]:
    """The most device bytes ``values`` (``plan.stored_values()``, in its order) hold at once,
    the top-level step where (named by its first op) and its index (-1: no step): the module
    docstring's spans. Values in host memory (their memory kind, or their key in ``host``)
    are not counted."""
    steps = steps or Steps(plan.tree)
    if not steps.steps:
        return 0, "no step", -1
    live = device_bytes(plan, values, host, steps)
    at = max(range(len(steps.steps)), key=lambda i: live[i])
    return live[at], _step_name(steps, at), at


def _step_name(steps: Steps, i: int) -> str:
    """Top-level step ``i`` named by its first op."""
    found = next((n for n in walk(steps.steps[i]) if isinstance(n, Exec)), None)
    return f"S{found.op}" if found is not None else "a step"


def device_bytes(
    plan: BufferPlan, values: list[StoredValue], host: Iterable[Key], steps: Steps
) -> list[int]:
    """The device bytes ``values`` hold during each top-level step, with the step's transients
    (module docstring)."""
    live = steps.transients(plan)
    for _, held in held_bytes(plan, values, host, steps):
        live = [n + m for n, m in zip(live, held, strict=True)]
    return live


def held_bytes(
    plan: BufferPlan, values: list[StoredValue], host: Iterable[Key], steps: Steps
) -> list[tuple[StoredValue, list[int]]]:
    """Per value, the device bytes it holds during each top-level step."""
    last = len(steps.steps) - 1
    outputs = {(o.edge.src, o.edge.out) for o in plan.program.outputs}
    elsewhere = set(host)
    hosted = elsewhere | {
        key
        for (key, kind, _), value in zip(plan.value_keys(), values, strict=True)
        if kind == "buffer" and value.memory_kind != "device"
    }
    ahead = {  # (reader, buffer) read one iteration ahead: two regions on the device at once
        (f.node.op, (edge.src, edge.out))
        for fetches in plan_prefetches(plan, hosted).values()  # as they would be planned
        for f in fetches
        for edge in (plan.program.op(f.node.op).inputs[f.k],)
    }
    unheld = steps.unheld(plan)
    found = []
    for (key, kind, loop), value in zip(plan.value_keys(), values, strict=True):
        live = [0] * len(steps.steps)
        found.append((value, live))
        if value.memory_kind != "device" or (kind == "buffer" and key in elsewhere):
            if kind == "buffer":  # in host memory: on the device what each step reads
                for op, size in read_bytes(plan, key, value.bytes).items():
                    size *= 2 if (op, key) in ahead else 1
                    for i in steps.using([op]):
                        live[i] = max(live[i], size)
                if key in outputs:
                    live[last] = value.bytes
            continue
        if (key, kind, loop) in unheld:
            continue
        if kind == "buffer" and key in steps.spans:
            first, end = steps.spans[key]
        elif kind == "captured":
            first = next(iter(steps.using([key[0]])), 0)
            reading = steps.using(plan.readers[key[0]])
            if key in outputs:  # XLA holds an output's buffer throughout
                first, end = 0, last
            else:
                end = max([first, *reading])
        elif kind == "ring":
            first = end = next(i for i, ids in enumerate(steps.nodes) if id(loop) in ids)
        else:
            first, end = 0, last
        for i in range(first, end + 1):
            live[i] += value.bytes
    return found


def _unheld(plan: BufferPlan) -> set[tuple[Key, str, Any]]:
    """The rows of ``plan.value_keys()`` that hold no array of their own (module docstring):
    a loop's one-slot ring whose last value is an output (the output's buffer holds it); a
    seeded merge's one point (the kept value's array, :mod:`.merges`); a one-point value kept
    for readers, not an output, made from literals alone (an optimiser's zero moments: XLA
    folds them into their readers) or a merge's point whose branch reads an input as it is
    (``params[0]`` of ``tj.param(w0)``: the input's array)."""
    program = plan.program
    outputs = {(o.edge.src, o.edge.out) for o in program.outputs}
    found: set[tuple[Key, str, Any]] = {
        ((o.edge.src, o.edge.out), "ring", loop)
        for loop, outs in plan.from_ring.items()
        for o in outs
        if o.name in plan.plan.captured and plan.plan.rings[loop][(o.edge.src, o.edge.out)] == 1
    }
    found |= {
        ((m, 0), "buffer", None)
        for m in plan.seeded
        if plan.plan.scoped.get((m, 0)) == frozenset(range(len(program.op(m).domain)))
    }
    transients = None
    for key, outs in plan.captures.items():
        if key in outputs:
            continue
        op = program.op(key[0])
        if op.kind == "apply":
            transients = transients or Transients(plan)
            if key[1] in transients.cost(op.id).constant:
                found.add((key, "captured", None))
        elif op.kind == "merge" and all(_reads_input_at(plan, out.edge) for out in outs):
            found.add((key, "captured", None))
    return found


def _reads_input_at(plan: BufferPlan, edge: Edge) -> bool:
    """Whether merge ``edge.src`` takes, at the one point ``edge`` reads, a branch reading an
    input of no domain as it is (same spec)."""
    op = plan.program.op(edge.src)
    if any(isinstance(item, Slice) for item in edge.index):
        return False
    point = dict(zip(op.domain, edge.index, strict=True))
    for branch in op.inputs:
        holds = simplify(substitute(branch.cond, point))
        if holds == FALSE:
            continue
        source = plan.program.op(branch.src)
        spec, mine = source.outputs[branch.out], op.outputs[edge.out]
        same = (spec.shape, spec.dtype) == (mine.shape, mine.dtype) and not branch.index
        return holds == TRUE and source.kind == "input" and not source.domain and same
    return False


def unmet_budget(plan: BufferPlan, budget: int) -> str | None:
    """Why the planned device peak stays over ``budget`` after :func:`plan_memory`: the step
    where it is and the largest values held there; None when the budget is met."""
    steps = Steps(plan.tree)
    held = held_bytes(plan, plan.stored_values(), (), steps)
    transient = steps.transients(plan)
    live = [transient[i] + sum(h[i] for _, h in held) for i in range(len(steps.steps))]
    peak = max(live, default=0)
    if peak <= budget:
        return None
    step = live.index(peak)
    at = _step_name(steps, step)
    there = sorted(((v, h[step]) for v, h in held if h[step]), key=lambda x: -x[1])[:3]
    listed = "; ".join(
        f"`{v.name}` {n / 2**20:.2f} MiB "
        + (
            "(in host memory, brought back here)"
            if v.memory_kind != "device"
            else "(on the device)"
        )
        + f" at {v.source}"
        for v, n in there
    )
    working = (
        f" and {transient[step] / 2**20:.2f} MiB of values XLA holds only while it computes "
        "(unkept outputs, gathered ranges, ops' own arrays)"
        if transient[step]
        else ""
    )
    return (
        f"memory_budget={budget} bytes is not met: the planned device peak is {peak} bytes "
        f"({peak / 2**20:.2f} MiB), at the step of {at}, where the largest values held are: "
        f"{listed}{working}. A value that an op reads whole there (every point at once, as a "
        "vectorised learner reads a rollout) is on the device at that step wherever it is "
        "stored, so host memory cannot lower this peak: read it in a loop over its steps "
        "instead, or raise the budget. `compiled.explain()` lists every stored value."
    )


def read_bytes(plan: BufferPlan, key: Key, total: int) -> dict[int, int]:
    """Per op reading buffer ``key`` (of ``total`` bytes) from host memory, the most bytes one
    of its reads brings back to the device: all of them for an op of a loop nest computed at
    once (its points gather from the whole buffer) or a range of symbolic size not taken in
    tiles; else the region its index covers (a point, a tile, a static range)."""
    nested = {ex.op for nest in plan.nests.values() for ex in nest.execs}
    lead = plan.logical_shape(*key)
    found: dict[int, int] = {}
    for op in plan.program.ops:
        reads = [(k, edge) for k, edge in enumerate(op.inputs) if (edge.src, edge.out) == key]
        if not reads:
            continue
        tiled = plan.tileable(op)
        for k, edge in reads:
            index = plan.stored_index(edge)
            rows = points = 1
            for axis, item in enumerate(index):
                points *= lead[axis]
                if not isinstance(item, Slice):
                    continue
                if plan.is_static(item.size):
                    rows *= min(int(item.size.evaluate(plan.runtime)), lead[axis])
                elif tiled is not None and k in tiled[0]:
                    rows *= min(tiled[1], lead[axis])
                else:
                    rows *= lead[axis]
            got = total if op.id in nested else total * rows // max(points, 1)
            found[op.id] = max(found.get(op.id, 0), got)
    return found


def plan_memory(plan: BufferPlan, budget: int | None) -> dict[Key, str]:
    """``(op, output) -> HOST`` for the buffers kept in host memory (module docstring)."""
    kinds: dict[Key, str] = {}
    asked = [op for op in plan.program.ops if op.memory == "offload" and op.kind != "input"]
    for op in asked:
        for key in ((op.id, k) for k in range(len(op.outputs))):
            why = _not_hostable(plan, key)
            if why is not None:
                raise TempoError(
                    f"tj.offload({describe_op(op)}): its values are {why}, and only values "
                    "stored in full can live in host memory. Remove the tj.offload, or read "
                    "the value later than the step that produces it so it is stored in full."
                )
            kinds[key] = HOST
    if budget is None:
        return kinds
    values = plan.stored_values()  # every buffer on the device: memory_kinds is not set yet
    steps = Steps(plan.tree)
    sizes = {
        key: value.bytes
        for (key, kind, _), value in zip(plan.value_keys(), values, strict=True)
        if kind == "buffer"
    }
    options = [
        key
        for key in sizes
        if key not in kinds
        and plan.program.op(key[0]).memory != "keep"
        and _not_hostable(plan, key) is None
        and _pays(plan, key)
    ]
    options.sort(key=lambda key: (-sizes[key], key))  # the largest first
    live = device_bytes(plan, values, kinds, steps)
    for key in options:
        if max(live, default=0) <= budget:
            break
        moved = device_bytes(plan, values, {**kinds, key: HOST}, steps)
        if any(moved[i] < peak for i, peak in enumerate(live) if peak == max(live)):
            kinds[key] = HOST  # it frees bytes where the peak is
            live = moved
    return kinds


def _not_hostable(plan: BufferPlan, key: Key) -> str | None:
    """Why buffer ``key`` cannot live in host memory, or None when it can."""
    if key not in plan.plan.buffered:
        return "not stored in full: each is read where it is computed, or kept in a loop's ring"
    if key in plan.cycles:
        return "kept as a cycle of a window's last rows"
    if key in plan.splits:
        return "cut into one array per tile"
    if key in plan.layouts:
        return "stored in another axis order for tiled reads"
    return None


def _pays(plan: BufferPlan, key: Key) -> bool:
    """Whether buffer ``key`` is filled by a loop and read after that loop ends, in a later
    step of the same sequence (a rollout's observations, read by the learner after the acting
    loop), rather than only read within the loop that writes it."""
    readers = plan.readers[key[0]]
    for node in walk(plan.tree):
        if not isinstance(node, Sequence):
            continue
        ops = [{n.op for n in walk(child) if isinstance(n, Exec)} for child in node.children]
        filled = [i for i, found in enumerate(ops) if key[0] in found]
        if not filled or not _in_loop(node.children[filled[0]], key[0]):
            continue
        if any(found & readers for found in ops[filled[0] + 1 :]):
            return True
    return False


def _in_loop(node: Node, op: int) -> bool:
    """Whether ``op`` runs inside a loop of ``node``."""
    return any(
        isinstance(n, Loop) and any(isinstance(m, Exec) and m.op == op for m in walk(n))
        for n in walk(node)
    )
