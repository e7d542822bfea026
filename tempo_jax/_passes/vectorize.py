"""Vectorisation: a domain dim with no dependence along it becomes an array axis.

For each dim ``d`` of the program (in declaration order) the pass picks the group of ops that
can compute all of ``d`` at once, and rewrites them: ``d`` leaves their domain, their values
gain a leading axis of size ``d.bound``, and their payloads run under ``jax.vmap``. The loop
over ``d`` disappears for the group (``x[b, t] = f(x[b, t-1])`` becomes a recurrence over
``t`` of ``(B, ...)`` values).

An op belongs to the group when

- it is an ``apply`` or ``merge`` op over ``d`` whose values have a fixed shape over ``d``
  (no range that grows with a dim), and not an accumulating transpose;
- every read it makes of an op over ``d`` is at ``d`` itself (``x[b, t-1]``: yes;
  ``x[b-1, t]``, ``x[0:b, t]``: a dependence along ``d``, no), and no other index item or
  condition mentions ``d``; a merge reads no range of an op over ``d``;
- nothing reads a part of its ``d`` axis other than a point or the whole (``x[0:b]``);
- no op of its dependence cycle (strongly connected component of the op graph) fails these
  conditions: a recurrence along ``d`` keeps its whole cycle a loop;
- it is not in a *reducing tail*: a connected part of the group read from outside only by
  outputs and sinks, that reads more, per point of ``d``, from ops that stay loops over
  ``d`` than it hands on (per-iteration metrics of a training loop: means over a rollout's
  rows). Vectorised, it would need those ops' values at every point of ``d`` at once, a
  buffer growing with ``d``'s bound; in the loop it reads each point's values as they are
  made (PPO on the paper's workload: 30 MiB stored at 50 iterations, not 229 MiB).

An op that reads a bounded window ahead along ``d`` of a loop over ``d`` (n-step returns from
a rollout), and what follows it up to a sum over all of ``d``, *streams* instead
(:mod:`.streaming`): it stays a loop over ``d``, recorded in ``Program.streams`` for the
scheduler to run it inside that loop a few steps late, and the sum becomes a running sum.
Windows of bounded size along another dim (``r[b, t : min(t + n, T)]``) do not keep an op from
being vectorised over ``d`` (``b``); ranges that grow with a dim do.

Reads are rewritten to match: a group op reading a group op at ``d`` drops the index item; a
group op reading another op over ``d`` reads the whole range ``0:d.bound`` instead; an op
outside the group (or a sink) reading a point of a group op reads the whole axis through a
*pick* op; a program output puts the axis back in place with ``Output.perm``.

Dims with a dynamic bound stay loops (an axis size must be known when tracing), and so does the
dim ``p.stop_when`` ends: every op over it runs inside the one loop the stop ends, so that no
point past the stop is computed (:mod:`tempo_jax._schedule.stopped`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._ir.expr import TRUE, Const, IndexItem, Slice, Symbol, dims_of, symbols_of
from .._ir.graph import cyclic_components
from .._ir.program import Edge, Op, Output, Payload, Program, TensorSpec, read_spec
from .._ir.simplify import simplify
from .._schedule.retime import bounded
from .picks import next_id, pick_payload
from .streaming import running_sums, streamed


def vectorize(program: Program, behind: bool = False) -> Program:
    """``program`` with every dim it can vectorise turned into array axes (module docstring);
    with ``behind``, learners behind a backward recurrence stream rather than being vectorised
    (:mod:`.streaming`; ``tj.Pipeline().replacing("vectorize", functools.partial(tj.vectorize,
    behind=True))``)."""
    for dim in program.dims:
        if dim.bound not in program.dynamic and dim != program.stopped:
            program = _vectorize_dim(program, dim, behind)
    return program


def _vectorize_dim(program: Program, d: Symbol, behind: bool) -> Program:
    group, ahead, late = _group(program, d, behind)
    if late:  # streamed without a delay: no record
        program, _ = running_sums(program, d, late)
    if ahead:
        program, added = running_sums(program, d, ahead)
        ahead |= added  # recorded for the scheduler (:mod:`tempo_jax._schedule.retime`)
        program = program.replace(
            streams=(*program.streams, *((op_id, d.name) for op_id in sorted(ahead)))
        )
    if not group:
        return program
    return _Rewrite(program, d, group).run()


# -- which ops ------------------------------------------------------------------------------------


def _group(program: Program, d: Symbol, behind: bool) -> tuple[set[int], set[int], set[int]]:
    """The ops that compute all of ``d`` at once (see the module docstring), and those that
    stream instead (:mod:`.streaming`): a bounded way behind a loop over ``d``, and (with
    ``behind``) behind a backward recurrence."""
    over = {op.id for op in program.ops if d in op.domain}
    partial = _partially_read(program, d)
    bad = {op.id for op in program.ops if op.id in over and not _eligible(program, op, d)}
    bad |= partial & over
    components = _components(program, d)
    looped = set(bad)
    for component in components:
        if component & bad:
            looped |= component
    ahead, late = streamed(program, d, over, looped, components, behind)
    bad |= ahead | late
    group = over - bad
    for component in components:
        if component & bad:
            group -= component
    group = _useful(program, d, group, components)
    reducing = _reducing_tails(program, d, group)
    if not reducing:
        return group, ahead, late
    return _useful(program, d, group - reducing, components), ahead, late


def _reducing_tails(program: Program, d: Symbol, group: set[int]) -> set[int]:
    """The ops of ``group`` in *tails* that reduce what they read from loops over ``d``.

    A tail is a connected part of the group that only outputs and sinks read from outside
    (per-iteration metrics of a training loop: the mean of a rollout's rows). It reads, from
    ops that stay loops over ``d``, their values at each point of ``d``; vectorised, it needs
    those values at every point at once, stored whole, and memory grows with ``d``'s bound.
    Where it reads more per point than it hands to outputs, it stays in the loop instead,
    reading each point's values as they are made."""
    readers = _readers(program)
    outside = {op.id for op in program.ops if op.kind != "sink"}  # readers that keep a tail
    tail = set(group)
    changed = True
    while changed:  # read from outside only by outputs and sinks
        changed = False
        for op_id in sorted(tail):
            if any(r in outside and r not in tail for r, _ in readers[op_id]):
                tail.discard(op_id)
                changed = True
    found: set[int] = set()
    leaving = [(o.domain, o.edge) for o in program.outputs]
    leaving += [(op.domain, e) for op in program.ops if op.kind == "sink" for e in op.inputs]
    for part in _connected(program, tail):
        taken = sum(
            _per_point(program, program.op(op_id).domain, edge, d)
            for op_id in part
            for edge in program.op(op_id).inputs
            if edge.src not in group
            and d in program.op(edge.src).domain
            and program.op(edge.src).kind != "input"  # stored whole anyway
        )
        given = sum(_per_point(program, dom, edge, d) for dom, edge in leaving if edge.src in part)
        if taken > given:
            found |= part
    return found


def _per_point(program: Program, domain: tuple[Symbol, ...], edge: Edge, d: Symbol) -> int:
    """Elements ``edge`` reads, over every point of ``domain`` at one point of ``d``."""
    total = 1
    for n in program.read_spec(edge).shape:
        total *= _size(program, n)
    for dim in domain:
        if dim != d:
            total *= _size(program, dim.bound)
    producer = program.op(edge.src)
    if d in producer.domain and isinstance(edge.index[producer.domain.index(d)], Slice):
        total //= max(1, _size(program, d.bound))
    return total


def _size(program: Program, n: Any) -> int:
    """A size at its static value (one where it has none: a dynamic bound, a dim)."""
    if isinstance(n, int):
        return n
    try:
        return int(n.evaluate(dict(program.sizes)))
    except Exception:
        return 1


def _connected(program: Program, members: set[int]) -> list[set[int]]:
    """``members`` in parts joined by reads between them."""
    link: dict[int, set[int]] = {m: set() for m in members}
    for m in members:
        for edge in program.op(m).inputs:
            if edge.src in members:
                link[m].add(edge.src)
                link[edge.src].add(m)
    parts, seen = [], set()
    for m in sorted(members):
        if m in seen:
            continue
        part, stack = set(), [m]
        while stack:
            x = stack.pop()
            if x not in part:
                part.add(x)
                stack.extend(link[x] - part)
        seen |= part
        parts.append(part)
    return parts


def _readers(program: Program) -> dict[int, list[tuple[int | None, Edge]]]:
    """Per op, who reads it (an op id; None for a program output) and through which edge."""
    readers: dict[int, list[tuple[int | None, Edge]]] = dict(program.readers())
    for out in program.outputs:
        readers[out.edge.src].append((None, out.edge))
    return readers


def _useful(program: Program, d: Symbol, group: set[int], components: list[set[int]]) -> set[int]:
    """``group`` without the ops whose every read is a point of ``d`` taken outside the group:
    those readers loop over ``d`` anyway, and would only pick from the vector."""
    readers = _readers(program)
    of = {member: component for component in components for member in component}
    changed = True
    while changed:
        changed = False
        for op_id in sorted(group):
            if op_id not in group:
                continue
            at = program.op(op_id).domain.index(d)
            needed = any(
                reader in group or reader is None or isinstance(edge.index[at], Slice)
                for reader, edge in readers[op_id]
            )
            if not needed:
                group -= of.get(op_id, {op_id})
                changed = True
    return group


def _eligible(program: Program, op: Op, d: Symbol) -> bool:
    if op.kind not in ("apply", "merge") or not _fixed(op.outputs, d):
        return False
    if op.payload is not None and op.payload.accumulates:
        return False
    for edge in op.inputs:
        producer = program.op(edge.src)
        if d in symbols_of(edge.cond) or not _fixed((program.read_spec(edge),), d):
            return False
        for dim, item in zip(producer.domain, edge.index, strict=True):
            if dim == d and d in symbols_of(item) and item != d:
                return False  # a dependence along d (or a range over it)
            if dim != d and d in symbols_of(item):
                return False
        if op.kind == "merge" and d in producer.domain and edge.slices:
            return False  # the branch's d axis would not lead
    return True


def _fixed(specs: tuple[TensorSpec, ...], d: Symbol) -> bool:
    """Whether every size is the same at every point of ``d``: bounds allowed, and sizes of
    windows of constant bound along other dims (``r[b, t : min(t + n, T)]`` vectorised over
    ``b``), not ``d`` nor growing ranges."""
    return all(
        isinstance(n, int) or not dims_of(n) or (d not in dims_of(n) and bounded(n))
        for s in specs
        for n in s.shape
    )


def _partially_read(program: Program, d: Symbol) -> set[int]:
    """Ops over ``d`` some reader reads a part of ``d`` of other than a point or the whole."""
    found = set()
    reads = [e for op in program.ops for e in op.inputs] + [o.edge for o in program.outputs]
    for edge in reads:
        producer = program.op(edge.src)
        if d in producer.domain:
            item = edge.index[producer.domain.index(d)]
            if isinstance(item, Slice) and not _whole(item, d):
                found.add(edge.src)
    return found


def _whole(item: IndexItem, d: Symbol) -> bool:
    return (
        isinstance(item, Slice)
        and simplify(item.start) == Const(0)
        and simplify(item.stop - d.bound) == Const(0)
    )


def _components(program: Program, d: Symbol) -> list[set[int]]:
    """The strongly connected components of the op graph with more than one op or a self-read.

    A read shifted along another dim (``w[i-1]``: the previous iteration) leaves the points of
    that dim it starts from, so it closes no cycle that matters for ``d``: a learner over ``t``
    inside a training loop over ``i`` is not one cycle with the rollout over ``t``.
    """
    succ: dict[int, list[int]] = {op.id: [] for op in program.ops}
    for op in program.ops:
        for edge in op.inputs:
            if not _shifted_elsewhere(program, op, edge, d):
                succ[edge.src].append(op.id)
    return cyclic_components(succ)


def _shifted_elsewhere(program: Program, reader: Op, edge: Edge, d: Symbol) -> bool:
    """Whether ``edge`` reads another dim than ``d`` (one both ops have) at a constant shift."""
    producer = program.op(edge.src)
    for dim, item in zip(producer.domain, edge.index, strict=True):
        if dim == d or dim not in reader.domain or isinstance(item, Slice):
            continue
        shift = simplify(item - dim)
        if isinstance(shift, Const) and shift.value != 0:
            return True
    return False


# -- rewriting ------------------------------------------------------------------------------------


class _Rewrite:
    """Rewrites the group's ops and every read of them (one dim)."""

    def __init__(self, program: Program, d: Symbol, group: set[int]) -> None:
        self.program = program
        self.d = d
        self.group = group
        self.fresh = next_id(program)
        self.added: list[Op] = []

    def run(self) -> Program:
        ops = [self._op(op) for op in self.program.ops]
        outputs = tuple(self._output(out) for out in self.program.outputs)
        return self.program.replace(ops=tuple(ops + self.added), outputs=outputs)

    def _op(self, op: Op) -> Op:
        if op.id not in self.group and op.payload is not None and op.payload.accumulates:
            return self._summing(op)
        if op.id not in self.group:
            inputs = tuple(self._outside_read(edge, op.domain, op.source) for edge in op.inputs)
            return op.replace(inputs=inputs)
        axes: list[int | None] = []
        inputs = []
        for edge in op.inputs:
            new, axis = self._inside_read(edge, op)
            inputs.append(new)
            axes.append(axis)
        domain = tuple(s for s in op.domain if s != self.d)
        size = self.d.bound
        outputs = tuple(dataclasses.replace(s, shape=(size, *s.shape)) for s in op.outputs)
        payload = op.payload
        if payload is not None:
            payload = _vmapped(payload, axes, self.d)
        return op.replace(domain=domain, inputs=tuple(inputs), outputs=outputs, payload=payload)

    def _inside_read(self, edge: Edge, op: Op) -> tuple[Edge, int | None]:
        """A group op's read, and where the ``d`` axis of the value it reads is (or None)."""
        producer = self.program.op(edge.src)
        if self.d not in producer.domain:
            return edge, None
        at = producer.domain.index(self.d)
        item = edge.index[at]
        before = sum(isinstance(i, Slice) for i in edge.index[:at])
        if edge.src in self.group and item == self.d:
            index = edge.index[:at] + edge.index[at + 1 :]
            return dataclasses.replace(edge, index=index), len(edge.slices)
        if edge.src in self.group:  # a point not along d: picked once, outside the group
            domain = tuple(s for s in op.domain if s != self.d)
            return self._picked(edge, domain, op.source), None
        if item != self.d:  # the same point of the producer for every point of d
            return edge, None
        whole = Slice(Const(0), self.d.bound)
        index = (*edge.index[:at], whole, *edge.index[at + 1 :])
        return dataclasses.replace(edge, index=index), before

    def _summing(self, op: Op) -> Op:
        """An accumulating op (it only sums its read over the stacked axes) reading the whole
        ``d`` axis of a group op: it sums the vector axis first, keeping one row in place."""
        (edge,) = op.inputs
        if edge.src not in self.group:
            return op
        at = self.program.op(edge.src).domain.index(self.d)
        index = edge.index[:at] + edge.index[at + 1 :]
        axis = sum(isinstance(i, Slice) for i in index)
        row = sum(isinstance(i, Slice) for i in edge.index[:at])
        assert op.payload is not None
        inner = op.payload.fn

        def fn(*args: Any) -> Any:
            *env, value = args
            return inner(*env, jnp.expand_dims(jnp.sum(value, axis=axis), row))

        payload = dataclasses.replace(op.payload, fn=fn)
        return op.replace(inputs=(dataclasses.replace(edge, index=index),), payload=payload)

    def _outside_read(self, edge: Edge, domain: tuple[Symbol, ...], source: Any) -> Edge:
        """A read by an op outside the group: a point of a group op goes through a pick op."""
        if edge.src not in self.group:
            return edge
        return self._picked(edge, domain, source)

    def _picked(self, edge: Edge, domain: tuple[Symbol, ...], source: Any) -> Edge:
        """A read of the pick (over ``domain``) of a group op's point or whole ``d`` axis."""
        producer = self.program.op(edge.src)
        at = producer.domain.index(self.d)
        item = edge.index[at]
        spec = read_spec(producer, edge)
        index = edge.index[:at] + edge.index[at + 1 :]
        inner = dataclasses.replace(edge, index=index, cond=TRUE)
        m = sum(isinstance(i, Slice) for i in index)
        if isinstance(item, Slice):  # the whole axis: moved to where the range had it
            before = sum(isinstance(i, Slice) for i in edge.index[:at])
            if before == m:  # already in place
                return dataclasses.replace(edge, index=index)
            payload = _moveaxis_payload(m, before)
        else:
            payload = pick_payload(item, m)
        pick = Op(
            id=self.fresh,
            kind="apply",
            name=f"pick {producer.name}",
            domain=domain,
            inputs=(inner,),
            outputs=(spec,),
            payload=dataclasses.replace(payload, differentiable=True),
            source=source,
        )
        self.fresh += 1
        self.added.append(pick)
        return Edge(pick.id, 0, domain, edge.cond, edge.source)

    def _output(self, out: Output) -> Output:
        edge = out.edge
        if edge.src not in self.group:
            return out
        producer = self.program.op(edge.src)
        at = producer.domain.index(self.d)
        item = edge.index[at]
        index = edge.index[:at] + edge.index[at + 1 :]
        if item == self.d and self.d in out.domain:
            domain = tuple(s for s in out.domain if s != self.d)
            src = len(domain) + sum(isinstance(i, Slice) for i in index)
            dst = out.domain.index(self.d)
        elif _whole(item, self.d):
            domain = out.domain
            src = len(domain) + sum(isinstance(i, Slice) for i in index)
            dst = len(domain) + sum(isinstance(i, Slice) for i in edge.index[:at])
        else:
            picked = self._picked(edge, out.domain, edge.source)
            spec = self.program.read_spec(edge)
            return dataclasses.replace(out, edge=picked, spec=spec)
        new = dataclasses.replace(edge, index=index)
        spec = read_spec(_vectorised(producer, self.d), new)
        moved = list(range(len(domain) + len(spec.shape)))
        moved.insert(dst, moved.pop(src))
        perm = moved if out.perm is None else [moved[k] for k in out.perm]
        return dataclasses.replace(out, domain=domain, edge=new, spec=spec, perm=tuple(perm))


def _vectorised(producer: Op, d: Symbol) -> Op:
    """``producer`` with ``d`` turned into a leading array axis (for read specs)."""
    domain = tuple(s for s in producer.domain if s != d)
    outputs = tuple(dataclasses.replace(s, shape=(d.bound, *s.shape)) for s in producer.outputs)
    return producer.replace(domain=domain, outputs=outputs)


def _moveaxis_payload(source: int, destination: int) -> Payload:
    def fn(value: Any) -> tuple[Any, ...]:
        return (jnp.moveaxis(value, source, destination),)

    return Payload(fn, "moveaxis")


def _vmapped(payload: Payload, axes: list[int | None], d: Symbol) -> Payload:
    """``payload`` computing every point of ``d`` at once: inputs mapped along ``axes``."""
    inner: Callable[..., Any] = payload.fn

    def fn(env: Any, *values: Any) -> tuple[Any, ...]:
        sizes = [np.shape(v)[a] for v, a in zip(values, axes, strict=True) if a is not None]
        size = sizes[0] if sizes else env[d.bound]  # static: dynamic bounds are not vectorised

        if not payload.uses_point:  # no coordinates to make
            mapped = jax.vmap(
                lambda *row: tuple(inner(*row)), in_axes=tuple(axes), axis_size=int(size)
            )
            return mapped(*values)

        def one(point: Any, *row: Any) -> tuple[Any, ...]:
            return tuple(inner({**env, d: point}, *row))

        points = jnp.arange(int(size), dtype=jnp.int32)
        return jax.vmap(one, in_axes=(0, *axes))(points, *values)

    return dataclasses.replace(payload, fn=fn, uses_point=True)
