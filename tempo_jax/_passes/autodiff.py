"""Reverse-mode autodiff on the dependence graph: gradients are more recurrences.

``tj.grad(loss, wrt=[w])`` adds ops computing, for each point ``q`` of ``w``'s domain,

    grad_w[q] = d (sum over every point x of loss's domain of loss[x]) / d w[q]

treating ``w`` as a leaf (its own definition, e.g. an optimiser update recorded later, is not
differentiated). Three kinds of ops are added:

- per op ``C`` on a path from ``w`` to the loss, a **vjp op** over ``C``'s domain: at each
  point it recomputes ``C``'s payload under :func:`jax.vjp` and pulls the cotangent of
  ``C``'s outputs back to one cotangent per input read (so any JAX function is
  differentiable). A merge needs none: a branch passes the merge's cotangent through where it
  is the branch taken;
- per read (edge) ``C`` makes of a producer ``P``, a **transpose op** over ``P``'s domain: the
  edge's dependence inverted. A point ``q`` of ``P`` gathers the cotangents of every consumer
  point that read it: ``x[t-1]`` read at ``t`` gives ``ct[t+1]`` (where ``t+1 < T``); a dim of
  the consumer that ``P`` lacks is summed over (``w[i]`` read at every ``(b, i, t)``); a
  constant point (``x[0]``) is summed over all consumers, at ``q == 0`` only; a range
  (``0:t+1``, ``max(0,t-w+1):t+1``, ``t:T``, ``0:T``) sums over the consumers whose range holds
  ``q`` (``q:T``, ``q:min(q+w,T)``, ``0:q+1``, ``0:T``), each row taken at ``q``'s position in
  that consumer's range (an **embed op** first places each consumer's cotangent rows at their
  producer positions);
- per differentiated tensor, a **gradient op** (a placeholder) summing its transposes.

A recurrence ``h[t+1] = f(h[t])`` thus gets the reverse recurrence
``grad_h[t] = vjp_f(grad_h[t+1])``: backpropagation through time, scheduled by isl like any
other recurrence. ``x.detach()`` stops gradients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp

from .._ir.errors import TempoError, UnsupportedError
from .._ir.expr import (
    TRUE,
    Const,
    Expr,
    IndexItem,
    Slice,
    Symbol,
    dims_of,
)
from .._ir.program import Edge, Op, TensorSpec, read_spec
from .._ir.program import Program as IRProgram
from .._ir.simplify import simplify
from .._ir.source import SourceInfo, describe
from .._schedule.domains import defined_domains
from .._schedule.isl_convert import domain_set, isl_context, set_to_conjuncts
from . import range_grad
from .dense_grad import DenseGrad
from .fusion import fuse_growing
from .grad_ops import GradOps, Key
from .inversion import (
    conjunction,
    embed_payload,
    gather_payload,
    invert_range,
    invert_read,
    range_layout,
    slice_pos,
)
from .saved import Saved, recurrent_without_gradient, save_residuals

if TYPE_CHECKING:
    from .._frontend.tensor import RecurrentTensor


def is_float(dtype: Any) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.inexact))


def gradients(
    loss: RecurrentTensor, wrt: Sequence[RecurrentTensor], source: SourceInfo
) -> list[RecurrentTensor]:
    """The gradients of ``loss`` (summed over its domain) with respect to each of ``wrt``."""
    return _Backward(loss, wrt, source).run()


@dataclasses.dataclass
class _Read:
    """An edge from a consumer domain, and where the cotangent of what it reads lives."""

    edge: Edge
    domain: tuple[Symbol, ...]
    ct: Key  # op over ``domain`` holding the cotangent of the read value
    cond: Expr  # where the read happens (a merge branch taken), over ``domain``
    reader: str
    consumer: int | None = None  # the reading op (None: the loss)


class _Backward(GradOps):
    def __init__(
        self, loss: RecurrentTensor, wrt: Sequence[RecurrentTensor], source: SourceInfo
    ) -> None:
        super().__init__(loss.program, source)
        self.loss = loss
        self.wrt = list(wrt)
        self.recorded = {op.id: op for op in self.program.recorded_ops()}
        self.ops = self.recorded  # the fused view once the targets are known (``run``)
        self.contributions: dict[Key, list[Key]] = {}
        self._defined_sets: Any = None
        self._off_cycle: set[int] | None = None  # ops whose residuals are not saved

    # -- which ops to differentiate ----------------------------------------------------------------
    def run(self) -> list[RecurrentTensor]:
        from .._frontend.tensor import RecurrentTensor, TensorMeta

        where = f"`tj.grad`{describe(self.source)}"
        if self.loss.shape != () or not is_float(self.loss.dtype):
            raise TempoError(
                f"{where}: the loss `{self.loss.name}` must be a float scalar at each point, got "
                f"{TensorSpec(self.loss.shape, self.loss.dtype)}; reduce it with `.sum()` or "
                "`.mean()`."
            )
        targets: dict[Key, int] = {}
        for k, w in enumerate(self.wrt):
            if not isinstance(w, RecurrentTensor) or w.program is not self.program:
                raise TempoError(
                    f"{where}: `wrt` holds {getattr(w, 'name', repr(w))}, which is not a tensor "
                    "of the loss's program"
                )
            if w.is_view:
                raise TempoError(
                    f"{where}: `{w.name}` is an indexed view; differentiate with respect to the "
                    "tensor itself (its gradient has the tensor's domain)."
                )
            if not is_float(w.dtype):
                raise TempoError(f"{where}: `{w.name}` is {w.dtype.name}, not a float tensor")
            targets[(w._m.op, w._m.out)] = k
        self.targets = targets
        self.ops = self._fused_view()
        self.relevant = self._relevant(self.loss.edge().src)
        self.needed = self._needed()

        # placeholders for the gradient of every differentiated tensor
        self.grad_ops: dict[Key, int] = {}
        for key in sorted(self.needed | set(targets)):  # a target off every path: zero
            op = self.ops[key[0]]
            spec = op.outputs[key[1]]
            name = op.name if len(op.outputs) == 1 else f"{op.name}.{key[1]}"
            new = self.program.add_op(
                kind="merge",
                name=f"grad[{name}]",
                domain=op.domain,
                inputs=(),
                outputs=(TensorSpec(spec.shape, spec.dtype),),
                source=self.source,
            )
            self.grad_ops[key] = new.id

        reads: list[_Read] = []
        seed_edge = self.loss.edge()
        if (seed_edge.src, seed_edge.out) in self.needed:
            ones = self._add_apply(
                "ones",
                self.loss.domain,
                (),
                (TensorSpec((), self.loss.dtype),),
                lambda dt=self.loss.dtype: (jnp.ones((), dt),),
            )
            reads.append(_Read(seed_edge, self.loss.domain, (ones, 0), TRUE, "the loss"))
        for op_id in sorted(self.relevant):
            op = self.ops[op_id]
            if (op_id, 0) in self.targets or op.kind == "input":
                continue
            if op.kind == "merge":
                reads.extend(self._merge_reads(op))
            elif op.kind == "apply":
                tiled = self._range_vjp(op)
                reads.extend(self._vjp(op) if tiled is None else tiled)
        for read in reads:
            key = (read.edge.src, read.edge.out)
            self.contributions.setdefault(key, []).append(self._transpose(read))
        for key, grad_op in self.grad_ops.items():
            self.program.add_branch(grad_op, self._total(key, self.contributions.get(key, [])))

        results = []
        for w in self.wrt:
            op_id = self.grad_ops[(w._m.op, w._m.out)]
            meta = TensorMeta(self.program, op_id, 0, None, w.domain, w.shape, w.dtype, self.source)
            results.append(RecurrentTensor(meta))
        return results

    def _fused_view(self) -> dict[int, Op]:
        """The recorded ops with every growing value folded into its one reader
        (:func:`fuse_growing`): a chain ``s = k[0:t+1] @ q``, ``p = softmax(s)``, ``p @ v[0:t+1]``
        is differentiated as one map-then-reduce, its growing values never stored."""
        target_ops = {op for op, _ in self.targets}
        kept = {
            op.id for op in self.recorded.values() if op.id in target_ops or not _differentiable(op)
        }
        ops = tuple(
            op.replace(kind="input", inputs=(), payload=None) if op.id in kept else op
            for op in self.recorded.values()
        )
        fused = fuse_growing(IRProgram(self.program.declared_dims, ops, ()))
        return {op.id: self.recorded[op.id] if op.id in kept else op for op in fused.ops}

    def _relevant(self, loss_op: int) -> set[int]:
        """Ops on a path from a target to the loss (targets included, their inputs not)."""
        target_ops = {op for op, _ in self.targets}
        ancestors: set[int] = set()
        stack = [loss_op]
        while stack:
            op_id = stack.pop()
            if op_id in ancestors:
                continue
            ancestors.add(op_id)
            op = self.ops[op_id]
            if op_id in target_ops or not _differentiable(op):
                continue
            stack.extend(e.src for e in op.inputs)
        readers: dict[int, set[int]] = {}
        for op in self.ops.values():
            for e in op.inputs:
                readers.setdefault(e.src, set()).add(op.id)
        descendants: set[int] = set()
        stack = list(target_ops)
        while stack:
            op_id = stack.pop()
            if op_id in descendants:
                continue
            descendants.add(op_id)
            stack.extend(r for r in readers.get(op_id, ()) if _differentiable(self.ops[r]))
        return ancestors & descendants

    def _needed(self) -> set[Key]:
        """Tensors (op, output) whose gradient is needed: float outputs read on a path."""
        needed: set[Key] = set()
        seed = self.loss.edge()
        if seed.src in self.relevant:
            needed.add((seed.src, seed.out))
        for op_id in self.relevant:
            op = self.ops[op_id]
            if (op_id, 0) in self.targets or op.kind == "input":
                continue
            for e in op.inputs:
                producer = self.ops[e.src]
                if e.src in self.relevant and is_float(producer.outputs[e.out].dtype):
                    needed.add((e.src, e.out))
        return needed

    def _defined(self, op_id: int | None) -> list[Expr]:
        """Conditions, beyond its box, on the points where op ``op_id`` is defined."""
        if op_id is None:
            return []
        if self._defined_sets is None:
            ops = tuple(
                op.replace(kind="input", inputs=(), payload=None)
                if any((op.id, k) in self.targets for k in range(len(op.outputs)))
                else op
                for op in self.recorded.values()
            )
            snapshot = IRProgram(self.program.declared_dims, ops, ())
            ctx = isl_context()
            sets = defined_domains(snapshot, ctx).sets
            self._defined_sets = (snapshot, ctx, sets)
        snapshot, ctx, sets = self._defined_sets
        box = domain_set(snapshot, snapshot.op(op_id), ctx)
        conds = set_to_conjuncts(snapshot, sets[op_id], box)
        return [simplify(c) for c in conds or []]

    # -- reading cotangents ----------------------------------------------------------------------
    def _grad_edge(self, key: Key) -> Edge:
        op = self.ops[key[0]]
        return Edge(self.grad_ops[key], 0, op.domain, TRUE, self.source)

    def _merge_reads(self, op: Op) -> list[_Read]:
        """A merge's branches pass its gradient through where each is the one taken."""
        reads = []
        earlier: Expr | None = None
        for edge in op.inputs:
            cond = edge.cond if earlier is None else simplify(edge.cond & ~earlier)
            earlier = edge.cond if earlier is None else simplify(earlier | edge.cond)
            if (edge.src, edge.out) in self.needed:
                ct = (self.grad_ops[(op.id, 0)], 0)
                reads.append(_Read(edge, op.domain, ct, cond, f"`{op.name}`", op.id))
        return reads

    def _vjp(self, op: Op) -> list[_Read]:
        """A vjp op for apply ``op``: one cotangent per differentiable input read."""
        assert op.payload is not None
        diff = [k for k, e in enumerate(op.inputs) if (e.src, e.out) in self.needed]
        outs = [j for j in range(len(op.outputs)) if (op.id, j) in self.needed]
        if not diff or not outs:
            return []
        payload = op.payload
        n_in = len(op.inputs)

        def vjp_fn(*args: Any) -> tuple[Any, ...]:
            env, values = (args[0], args[1:]) if payload.uses_point else (None, args)

            def call(full: list[Any]) -> Any:
                return payload.fn(env, *full) if payload.uses_point else payload.fn(*full)

            return range_grad.vjp_function(call, n_in, diff, outs)(*values)

        specs = []
        for k in diff:
            spec = read_spec(self.ops[op.inputs[k].src], op.inputs[k])
            specs.append(TensorSpec(spec.shape, spec.dtype))
        inputs, fn = op.inputs, vjp_fn
        saved = self._saved(op, diff, outs)
        if saved is not None:  # the forward keeps its residuals: no second forward pass
            inputs, fn = saved.inputs, saved.backward
        vjp_op = self._add_apply(
            f"vjp[{op.name}]",
            op.domain,
            (*inputs, *(self._grad_edge((op.id, j)) for j in outs)),
            tuple(specs),
            fn,
            uses_point=payload.uses_point and saved is None,
            pads_ok=False,
            source=op.source,
        )
        return [
            _Read(op.inputs[k], op.domain, (vjp_op, n), TRUE, f"`{op.name}`", op.id)
            for n, k in enumerate(diff)
        ]

    def _saved(self, op: Op, diff: list[int], outs: list[int]) -> Saved | None:
        """``op``'s residuals saved as outputs of ``op`` itself (:mod:`.saved`), the program's
        op replaced; None where the vjp recomputes the forward. An op is given residuals once
        (for the first gradient through it: a later one with other inputs recomputes)."""
        if self.recorded.get(op.id) is not op or op.id in self.program.saved_residuals:
            return None
        if self._off_cycle is None:
            self._off_cycle = recurrent_without_gradient(self.ops, self.relevant)
        if op.id in self._off_cycle:
            return None  # stored a step at a time, read whole: recomputed in one pass instead
        specs = [read_spec(self.ops[e.src], e) for e in op.inputs]
        saved = save_residuals(op, specs, diff, outs)
        if saved is None:
            return None
        self.program.replace_op(saved.forward)
        self.program.saved_residuals.add(op.id)
        self.recorded[op.id] = saved.forward
        self.ops[op.id] = saved.forward
        return saved

    def _range_vjp(self, op: Op) -> list[_Read] | None:
        """The vjp of a map-then-reduce over one growing range as a stats op over ``op``'s
        domain and a rows op over the range's producers (:mod:`.range_grad`); None where
        ``op`` is not such an op or reads its range otherwise than the rows op can invert."""
        assert op.payload is not None
        payload = op.payload
        diff = [k for k, e in enumerate(op.inputs) if (e.src, e.out) in self.needed]
        outs = [j for j in range(len(op.outputs)) if (op.id, j) in self.needed]
        layout = range_layout(op, self.ops)
        if layout is None or not diff or not outs or self._defined(op.id):
            return None
        ranged, d, item, producer_domain = layout
        if not any(k in diff for k in ranged):
            return None  # no range cotangent: the plain vjp is a map-then-reduce already
        what = f"the gradient of `{op.name}`{describe(op.source)}"
        try:
            lo, hi, conds = invert_range(item, d, producer_domain[slice_pos(op, ranged)], what)
        except UnsupportedError:
            return None
        if not (dims_of(lo) or dims_of(hi)):
            return None  # every consumer reads the same rows: a plain sum over them
        n_in = len(op.inputs)

        def call(full: list[Any]) -> Sequence[Any]:
            if payload.uses_point:
                return payload.fn(range_grad.NO_POINT, *full)
            return payload.fn(*full)

        vjp = range_grad.vjp_function(call, n_in, diff, outs)
        specs = [read_spec(self.ops[e.src], e) for e in op.inputs]
        specs += [op.outputs[j] for j in outs]
        split = range_grad.split(vjp, specs, ranged, what)
        if split is None:
            return None
        point_diff = [k for n, k in enumerate(diff) if n in split.point_outs]
        row_diff = [k for n, k in enumerate(diff) if n in split.row_outs]
        if sorted(point_diff + row_diff) != diff:
            return None
        point_specs = [TensorSpec(specs[k].shape, specs[k].dtype) for k in point_diff]
        stats_op = self._add_apply(
            f"vjp_stats[{op.name}]",
            op.domain,
            (*op.inputs, *(self._grad_edge((op.id, j)) for j in outs)),
            (*point_specs, *split.stat_specs),
            range_grad.stats_payload(split, what),
            pads_ok=False,
            source=op.source,
        )
        # the consumers reading a producer point: the range's dim inverted, the others equal
        at = {}
        for k in ranged:
            for pos, index in enumerate(op.inputs[k].index):
                if not isinstance(index, Slice):
                    at[index] = producer_domain[pos]
        stat_index = tuple(Slice(lo, hi) if c == d else at[c] for c in op.domain)
        first = len(point_diff)
        stat_edges = tuple(
            Edge(stats_op, first + m, stat_index, TRUE, op.source)
            for m in range(len(split.stat_specs))
        )
        own = tuple(
            Edge(op.inputs[k].src, op.inputs[k].out, producer_domain, TRUE, op.source)
            for k in ranged
        )
        row_specs = []
        for k in row_diff:
            spec = self.ops[op.inputs[k].src].outputs[op.inputs[k].out]
            row_specs.append(TensorSpec(spec.shape, spec.dtype))
        dense = DenseGrad(
            stats_op,
            d,
            item,
            producer_domain[slice_pos(op, ranged)],
            tuple(ranged),
            call,
            tuple(diff),
            tuple(outs),
            (*point_diff, *row_diff),
            len(point_diff),
            what,
            op.id,
        )
        rows_op = self._add_apply(
            f"vjp_rows[{op.name}]",
            producer_domain,
            (*own, *stat_edges),
            tuple(row_specs),
            range_grad.rows_payload(split, what),
            pads_ok=False,
            source=op.source,
            dense=dense,
        )
        cond = simplify(conjunction(conds))
        for n, k in enumerate(row_diff):
            edge = op.inputs[k]
            part = (rows_op, n)
            if cond != TRUE:
                spec = row_specs[n]
                part = (self._guarded(self.ops[edge.src], edge.out, spec, part, cond), 0)
            self.contributions.setdefault((edge.src, edge.out), []).append(part)
        return [
            _Read(op.inputs[k], op.domain, (stats_op, n), TRUE, f"`{op.name}`", op.id)
            for n, k in enumerate(point_diff)
        ]

    def _total(self, key: Key, parts: list[Key]) -> Edge:
        """The sum of a tensor's gradient contributions, read at its own point (zeros: none)."""
        op = self.ops[key[0]]
        spec = op.outputs[key[1]]
        spec = TensorSpec(spec.shape, spec.dtype)
        if not parts:  # e.g. read on the path only by non-float outputs, or a target off it
            return self._zeros_edge(op, key[1], spec)
        if len(parts) == 1:
            return Edge(parts[0][0], parts[0][1], op.domain, TRUE, self.source)
        edges = tuple(Edge(p, o, op.domain, TRUE, self.source) for p, o in parts)

        def add_all(*values: Any) -> tuple[Any]:
            total = values[0]
            for v in values[1:]:
                total = total + v
            return (total,)

        total = self._add_apply(f"sum_grads[{op.name}]", op.domain, edges, (spec,), add_all)
        return Edge(total, 0, op.domain, TRUE, self.source)

    # -- inverting a read ----------------------------------------------------------------------
    def _transpose(self, read: _Read) -> Key:
        """An op over the producer's domain gathering what every consumer point read of it."""
        edge = read.edge
        producer = self.ops[edge.src]
        what = (
            f"the gradient of `{edge.describe(producer.name)}` (read by {read.reader})"
            f"{describe(edge.source)}"
        )
        inv = invert_read(
            edge, producer.domain, read.domain, read.cond, self._defined(read.consumer), what
        )
        determined, spans, fresh, mask = inv.determined, inv.spans, inv.fresh, inv.mask
        conds, embeds = list(inv.conds), inv.embeds
        ct = read.ct
        spatial = read_spec(producer, edge).shape[len(embeds) :]
        if embeds:
            ct = (self._embed(read, producer, embeds, spatial), 0)
        # Dims summed over a range free of the producer point (a weight read at every (b, t))
        # are accumulated by a running sum rather than stored and gathered in full.
        ct_spec = self.program.op(ct[0]).outputs[ct[1]]
        src_domain, fixed = read.domain, {}
        # A read of one constant box of consumer points, only summed (the usual weight
        # gradient): the compiled program keeps one accumulator, added to wherever the
        # producer runs, instead of a scheduled recurrence (see ``Payload.accumulates``).
        accumulates = (
            ct_spec.is_static
            and mask == TRUE
            and all(not dims_of(v) for v in determined.values())
            and all(not dims_of(lo) and not dims_of(hi) for lo, hi in spans.values())
            and any(d not in determined for d in read.domain)
        )
        if ct_spec.is_static and not accumulates:
            for d in reversed(read.domain):
                if d in determined or d in inv.ranged or fresh[d] in dims_of(mask):
                    continue
                lo, hi = spans[d]
                if dims_of(lo) or dims_of(hi):
                    continue
                acc_domain = tuple(x for x in src_domain if x not in fixed)
                own = tuple(fixed.get(x, x) for x in src_domain)
                ct = (self._running_sum(ct, own, acc_domain, d, hi, ct_spec), 0)
                if not (lo == Const(0) and hi == d.bound):  # may be empty for small bounds
                    conds.append(simplify(lo < hi))
                src_domain, fixed = acc_domain, {d: lo}
        index: list[IndexItem] = []
        stacked: list[tuple[Symbol, Expr, Expr]] = []  # (consumer dim, lo, hi) per stacked axis
        for d in src_domain:
            if d in fixed:
                index.append(fixed[d])
            elif d in determined:
                value = determined[d]
                conds += [simplify(value >= 0), simplify(value < d.bound)]
                index.append(value)
            else:
                lo, hi = spans[d]
                index.append(Slice(lo, hi))
                stacked.append((d, lo, hi))
        cond = simplify(conjunction(conds))

        spec = producer.outputs[edge.out]
        spec = TensorSpec(spec.shape, spec.dtype)
        points = [producer.domain[pos] for pos, _ in embeds]

        src = Edge(ct[0], ct[1], tuple(simplify(i) for i in index), TRUE, edge.source)
        source_domain = self.program.op(ct[0]).domain
        if (
            not stacked
            and not points
            and cond == TRUE
            and source_domain == producer.domain
            and src.index == producer.domain
            and self.program.op(ct[0]).outputs[ct[1]].shape == spec.shape
        ):
            return ct  # the consumer read the producer at its own point: its cotangent as is
        gathered = self._add_apply(
            f"transpose[{edge.describe(producer.name)}]",
            producer.domain,
            (src,),
            (spec,),
            gather_payload(stacked, fresh, mask, points),
            uses_point=True,
            accumulates=accumulates,
        )
        if cond == TRUE:
            return (gathered, 0)
        return (self._guarded(producer, edge.out, spec, gathered, cond), 0)

    def _embed(
        self,
        read: _Read,
        producer: Op,
        embeds: list[tuple[int, Slice]],
        spatial: tuple[Any, ...],
    ) -> int:
        """Per consumer point, its range cotangent placed at the producer positions it read."""
        bounds = [producer.domain[pos].bound for pos, _ in embeds]
        slices = [item for _, item in embeds]
        spec = self.program.op(read.ct[0]).outputs[read.ct[1]]
        where = f"the gradient of `{read.edge.describe(producer.name)}`{describe(read.edge.source)}"

        return self._add_apply(
            "embed",
            read.domain,
            (Edge(read.ct[0], read.ct[1], read.domain, TRUE, self.source),),
            (TensorSpec((*bounds, *spatial), spec.dtype),),
            embed_payload(bounds, slices, where),
            uses_point=True,
        )


def _differentiable(op: Op) -> bool:
    return op.payload is None or op.payload.differentiable
