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
import numpy as np
from jax import lax

from .._ir.errors import TempoError, UnsupportedError
from .._ir.expr import (
    TRUE,
    And,
    Cmp,
    Const,
    Expr,
    IndexItem,
    Max,
    Min,
    Slice,
    Symbol,
    dims_of,
    eq,
    substitute,
)
from .._ir.program import Edge, Op, Payload, TensorSpec, read_spec
from .._ir.program import Program as IRProgram
from .._ir.simplify import _linear, simplify
from .._ir.source import SourceInfo, describe
from .._schedule.domains import defined_domains
from .._schedule.isl_convert import domain_set, isl_context, set_to_conjuncts
from . import range_grad
from .dense_grad import DenseGrad
from .fusion import fuse_growing
from .saved import Saved, recurrent_without_gradient, save_residuals

if TYPE_CHECKING:
    from .._frontend.program import Program as FrontProgram
    from .._frontend.tensor import RecurrentTensor

Key = tuple[int, int]  # (op id, output)


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


class _Backward:
    def __init__(
        self, loss: RecurrentTensor, wrt: Sequence[RecurrentTensor], source: SourceInfo
    ) -> None:
        self.program: FrontProgram = loss.program
        self.loss = loss
        self.wrt = list(wrt)
        self.source = source
        self.recorded = {op.id: op for op in self.program.recorded_ops()}
        self.ops = self.recorded  # the fused view once the targets are known (``run``)
        self.contributions: dict[Key, list[Key]] = {}
        self._defined_sets: Any = None
        self._off_cycle: set[int] | None = None  # ops whose residuals are not saved
        self._zeros: dict[TensorSpec, int] = {}

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

    # -- building ops --------------------------------------------------------------------------
    def _add_apply(
        self,
        name: str,
        domain: tuple[Symbol, ...],
        inputs: tuple[Edge, ...],
        outputs: tuple[TensorSpec, ...],
        fn: Any,
        *,
        uses_point: bool = False,
        pads_ok: bool = True,
        source: SourceInfo | None = None,
        accumulates: bool = False,
        dense: DenseGrad | None = None,
    ) -> int:
        payload = Payload(
            fn, name, uses_point, pads_ok=pads_ok, accumulates=accumulates, dense=dense
        )
        op = self.program.add_op(
            kind="apply",
            name=name,
            domain=domain,
            inputs=inputs,
            outputs=outputs,
            payload=payload,
            source=source or self.source,
        )
        return op.id

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
        layout = _range_layout(op, self.ops)
        if layout is None or not diff or not outs or self._defined(op.id):
            return None
        ranged, d, item, producer_domain = layout
        if not any(k in diff for k in ranged):
            return None  # no range cotangent: the plain vjp is a map-then-reduce already
        what = f"the gradient of `{op.name}`{describe(op.source)}"
        try:
            lo, hi, conds = _invert_range(item, d, producer_domain[_slice_pos(op, ranged)], what)
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
            producer_domain[_slice_pos(op, ranged)],
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
        cond = simplify(_conjunction(conds))
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
        determined: dict[Symbol, Expr] = {}  # consumer dim -> its value at the producer point
        ranged: dict[Symbol, tuple[Expr, Expr]] = {}  # consumer dim -> [lo, hi) reading q
        conds: list[Expr] = []
        embeds: list[tuple[int, Slice]] = []  # (producer dim position, slice) per range read
        for pos, (q, item) in enumerate(zip(producer.domain, edge.index, strict=True)):
            used = dims_of(item)
            if isinstance(item, Slice):
                embeds.append((pos, item))
                if not used:
                    conds += [item.start <= q, q < item.stop]
                    continue
                (d,) = _one_dim(used, what, item)
                if d in determined or d in ranged:
                    raise _unsupported(what, item, f"`{d.name}` indexes two dims")
                lo, hi, extra = _invert_range(item, d, q, what)
                ranged[d] = (lo, hi)
                conds += extra
                continue
            if not used:
                conds.append(eq(q, item))
                continue
            (d,) = _one_dim(used, what, item)
            rest = _offset(item, d, what)
            if d in determined or d in ranged:
                raise _unsupported(what, item, f"`{d.name}` indexes two dims")
            determined[d] = simplify(q - rest)
        # where the read happens: its branch condition, and where the consumer is defined
        parts = _conjuncts(simplify(read.cond)) if read.cond != TRUE else []
        parts += self._defined(read.consumer)
        rest: list[Expr] = []
        for part in parts:  # a condition pinning a dim the producer lacks (`h[0] = f(w)`)
            if (
                isinstance(part, Cmp)
                and part.op == "=="
                and isinstance(part.a, Symbol)
                and part.a in read.domain
                and part.a not in determined
                and part.a not in ranged
                and not dims_of(part.b)
            ):
                determined[part.a] = part.b
            else:
                rest.append(part)
        spans = {d: ranged.get(d, (Const(0), d.bound)) for d in read.domain if d not in determined}
        fresh = {d: Symbol(f"{d.name}__c", d.program, d.bound_name) for d in spans}
        back = {f: d for d, f in fresh.items()}
        mask: Expr = TRUE
        for part in rest:  # a condition on the producer point, a narrower range, or a mask
            part = simplify(substitute(part, {**determined, **fresh}))
            found = dims_of(part) & set(back)
            if not found:
                conds.append(part)
                continue
            narrowed = _narrow(part, found) if len(found) == 1 else None
            if narrowed is None:
                mask = part if mask == TRUE else mask & part
                continue
            d = back[next(iter(found))]
            lo, hi = spans[d]
            if narrowed[0] is not None:
                lo = simplify(Max(lo, narrowed[0]))
            if narrowed[1] is not None:
                hi = simplify(Min(hi, narrowed[1] + 1))
            spans[d] = (lo, hi)
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
                if d in determined or d in ranged or fresh[d] in dims_of(mask):
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
                conds += [_check_lower(value), _check_upper(value, d)]
                index.append(value)
            else:
                lo, hi = spans[d]
                index.append(Slice(lo, hi))
                stacked.append((d, lo, hi))
        cond = simplify(_conjunction(conds))

        spec = producer.outputs[edge.out]
        spec = TensorSpec(spec.shape, spec.dtype)
        points = [producer.domain[pos] for pos, _ in embeds]
        n_stacked = len(stacked)

        def gather(env: Any, value: Any) -> tuple[Any]:
            at = dict(env)
            for axis, (d, lo, hi) in enumerate(stacked):
                start = lo.evaluate(env)
                count = hi.evaluate(env) - start
                shape = [1] * value.ndim
                shape[axis] = value.shape[axis]
                rows = jnp.arange(value.shape[axis]).reshape(shape)
                value = jnp.where(rows < count, value, jnp.zeros((), value.dtype))
                at[fresh[d]] = rows + start
            if mask != TRUE:
                value = jnp.where(mask.evaluate(at), value, jnp.zeros((), value.dtype))
            value = value.sum(axis=tuple(range(n_stacked))) if n_stacked else value
            for q in points:
                value = lax.dynamic_index_in_dim(value, jnp.asarray(q.evaluate(env)), 0, False)
            return (value,)

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
            gather,
            uses_point=True,
            accumulates=accumulates,
        )
        if cond == TRUE:
            return (gathered, 0)
        return (self._guarded(producer, edge.out, spec, gathered, cond), 0)

    def _running_sum(
        self,
        src: Key,
        own: tuple[IndexItem, ...],
        domain: tuple[Symbol, ...],
        d: Symbol,
        hi: Expr,
        spec: TensorSpec,
    ) -> int:
        """``acc[d] = src[d] + acc[d + 1]`` from ``acc[hi - 1] = src[hi - 1]``, over ``domain``.

        Reverse order: a backward pass produces cotangents from the last step down.
        """
        spec = TensorSpec(spec.shape, spec.dtype)
        acc = self.program.add_op(
            kind="merge",
            name=f"sum_over_{d.name}",
            domain=domain,
            inputs=(),
            outputs=(spec,),
            source=self.source,
        )
        here = Edge(src[0], src[1], own, TRUE, self.source)
        later = Edge(acc.id, 0, tuple(x + 1 if x == d else x for x in domain), TRUE, self.source)
        add = self._add_apply(
            f"sum_over_{d.name}", domain, (here, later), (spec,), lambda a, b: (a + b,)
        )
        self.program.add_branch(acc.id, dataclasses.replace(here, cond=simplify(eq(d, hi - 1))))
        self.program.add_branch(acc.id, Edge(add, 0, domain, TRUE, self.source))
        return acc.id

    def _guarded(
        self, producer: Op, out: int, spec: TensorSpec, value: int | Key, cond: Expr
    ) -> int:
        """``value``'s (an op's output 0, or a key) where ``cond`` holds, zeros elsewhere."""
        op_id, value_out = value if isinstance(value, tuple) else (value, 0)
        merge = self.program.add_op(
            kind="merge",
            name="grad_part",
            domain=producer.domain,
            inputs=(),
            outputs=(spec,),
            source=self.source,
        )
        self.program.add_branch(
            merge.id, Edge(op_id, value_out, producer.domain, cond, self.source)
        )
        self.program.add_branch(merge.id, self._zeros_edge(producer, out, spec))
        return merge.id

    def _zeros_edge(self, producer: Op, out: int, spec: TensorSpec) -> Edge:
        """Zeros like ``producer``'s output ``out``, read at a point of its domain."""
        if spec.is_static:  # one zeros op per spec, shared by every reader
            if spec not in self._zeros:
                zero = np.zeros(spec.shape, spec.dtype)
                self._zeros[spec] = self._add_apply("zeros", (), (), (spec,), lambda z=zero: (z,))
            return Edge(self._zeros[spec], 0, (), TRUE, self.source)
        like = Edge(producer.id, out, producer.domain, TRUE, self.source)  # its shape there
        zeros = self._add_apply(
            "zeros_like", producer.domain, (like,), (spec,), lambda v: (jnp.zeros_like(v),)
        )
        return Edge(zeros, 0, producer.domain, TRUE, self.source)

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

        def embed(env: Any, value: Any) -> tuple[Any]:
            for axis, (bound, item) in enumerate(zip(bounds, slices, strict=True)):
                size = env[bound]
                if not isinstance(size, int | np.integer):
                    raise UnsupportedError(
                        f"{where}: a gradient through a range read needs a static bound "
                        f"`{bound.name}`; give it as an int rather than `tj.dynamic`."
                    )
                start = jnp.asarray(item.start.evaluate(env))
                count = jnp.asarray(item.size.evaluate(env))
                rows = jnp.arange(size) - start
                valid = (rows >= 0) & (rows < count)
                shape = [1] * value.ndim
                shape[axis] = int(size)
                if value.shape[axis] == 0:
                    new_shape = list(value.shape)
                    new_shape[axis] = int(size)
                    value = jnp.zeros(new_shape, value.dtype)
                    continue
                taken = jnp.take(value, jnp.clip(rows, 0, value.shape[axis] - 1), axis=axis)
                value = jnp.where(valid.reshape(shape), taken, jnp.zeros((), value.dtype))
            return (value,)

        return self._add_apply(
            "embed",
            read.domain,
            (Edge(read.ct[0], read.ct[1], read.domain, TRUE, self.source),),
            (TensorSpec((*bounds, *spatial), spec.dtype),),
            embed,
            uses_point=True,
        )


# -- index algebra -----------------------------------------------------------------------------


def _range_layout(
    op: Op, ops: dict[int, Op]
) -> tuple[tuple[int, ...], Symbol, Slice, tuple[Symbol, ...]] | None:
    """``op``'s range reads when they all read one growing range alike, each other index of
    theirs a distinct dim of ``op`` and every one of its dims read (``k[b, 0:t+1]`` and
    ``v[b, 0:t+1]`` of producers over ``(b, t)``): ``(their input positions, the dim the range
    grows along, the range, the producers' domain)``; None otherwise."""
    ranged, found = [], None
    for k, edge in enumerate(op.inputs):
        slices = [i for i in edge.index if isinstance(i, Slice)]
        if not slices:
            continue
        if len(slices) != 1 or edge.cond != TRUE or not dims_of(slices[0].size):
            return None
        item = slices[0]
        pos = edge.index.index(item)
        others = [i for i in edge.index if not isinstance(i, Slice)]
        used = dims_of(item)
        domain = ops[edge.src].domain
        if len(used) != 1 or any(not isinstance(i, Symbol) or i not in op.domain for i in others):
            return None
        (d,) = used
        key = (item, pos, tuple(others), domain)
        if found is None:
            found = key
        elif key != found:
            return None
        if d in others or len(set(others)) != len(others) or {*others, d} != set(op.domain):
            return None
        ranged.append(k)
    if found is None:
        return None
    item, _, _, domain = found
    (d,) = dims_of(item)
    return tuple(ranged), d, item, domain


def _slice_pos(op: Op, ranged: tuple[int, ...]) -> int:
    index = op.inputs[ranged[0]].index
    return next(pos for pos, i in enumerate(index) if isinstance(i, Slice))


def _differentiable(op: Op) -> bool:
    return op.payload is None or op.payload.differentiable


def _unsupported(what: str, item: Any, why: str) -> UnsupportedError:
    return UnsupportedError(
        f"{what}: cannot invert the index `{item}` ({why}). Gradients flow through reads "
        "indexed by a dim plus a constant (`x[t-1]`), a constant point (`x[0]`), or ranges "
        "whose ends are such (`x[0:t+1]`, `x[max(0,t-w+1):t+1]`, `x[t:T]`); compute other "
        "reads from such ones, or `.detach()` the value."
    )


def _one_dim(used: frozenset[Symbol], what: str, item: Any) -> tuple[Symbol]:
    if len(used) != 1:
        raise _unsupported(what, item, "it mixes several dims")
    return (next(iter(used)),)


def _offset(expr: Expr, d: Symbol, what: str) -> Expr:
    """``expr - d`` when ``expr`` is ``d`` plus something free of dims."""
    terms, _ = _linear(expr)
    if terms.get(d) != 1 or any(dims_of(a) for a in terms if a != d):
        raise _unsupported(what, expr, f"it is not `{d.name}` plus a constant")
    return simplify(expr - d)


def _invert_range(item: Slice, d: Symbol, q: Symbol, what: str) -> tuple[Expr, Expr, list[Expr]]:
    """The consumer points ``[lo, hi)`` along ``d`` whose range ``item`` holds ``q``."""
    conds: list[Expr] = []
    # lo: the first consumer whose stop passes q
    stop = simplify(item.stop)
    if not dims_of(stop):
        lo: Expr = Const(0)
        conds.append(q < stop)
    else:
        k = _offset(stop, d, what)  # stop = d + k > q  <=>  d >= q - k + 1
        lo = _max0(simplify(q - k + 1))
    # hi: one past the last consumer whose start is at most q
    start = simplify(item.start)
    lower = None
    if isinstance(start, Max) and not (dims_of(start.a) and dims_of(start.b)):
        lower, start = (start.a, start.b) if not dims_of(start.a) else (start.b, start.a)
    if isinstance(start, Min):
        raise _unsupported(what, item, "its start is a minimum")
    if not dims_of(start):
        hi: Expr = d.bound
        conds.append(start <= q)
    else:
        k = _offset(start, d, what)  # start = d + k <= q  <=>  d <= q - k
        hi = Min(simplify(q - k + 1), d.bound)
    if lower is not None:
        conds.append(lower <= q)
    return lo, simplify(hi), conds


def _narrow(part: Expr, found: set[Symbol]) -> tuple[Expr | None, Expr | None] | None:
    """Bounds ``(lower, upper)`` on the one symbol of ``found`` that ``part`` says, if affine."""
    if not isinstance(part, Cmp) or part.op not in ("<=", ">=", "=="):
        return None
    (f,) = found
    terms, _ = _linear(simplify(part.a - part.b))
    coeff = terms.get(f)
    if coeff not in (1, -1) or any(f in dims_of(a) for a in terms if a != f):
        return None
    rest = simplify(part.a - part.b - f * coeff)  # part: coeff * f + rest (op) 0
    value = simplify(-rest) if coeff == 1 else rest
    if part.op == "==":
        return value, value
    upper = (part.op == "<=") == (coeff == 1)
    return (None, value) if upper else (value, None)


def _conjuncts(cond: Expr) -> list[Expr]:
    if isinstance(cond, And):
        return _conjuncts(cond.a) + _conjuncts(cond.b)
    return [cond]


def _max0(expr: Expr) -> Expr:
    return simplify(Max(Const(0), expr))


def _check_lower(value: Expr) -> Expr:
    return simplify(value >= 0)


def _check_upper(value: Expr, d: Symbol) -> Expr:
    return simplify(value < d.bound)


def _conjunction(conds: list[Expr]) -> Expr:
    result: Expr = TRUE
    for c in conds:
        c = simplify(c)
        if c == TRUE or _trivially_true(c):
            continue
        result = c if result == TRUE else result & c
    return result


def _trivially_true(cond: Expr) -> bool:
    """Whether every point of a box satisfies ``cond``: ``d >= c`` (c <= 0), ``d <= D + c``
    (c >= -1)."""
    if not isinstance(cond, Cmp) or not isinstance(cond.a, Symbol) or cond.a.is_bound:
        return False
    d = cond.a
    terms, const = _linear(cond.b)
    if cond.op == ">=":
        return not terms and const <= 0
    if cond.op == "<=":
        return terms == {d.bound: 1} and const >= -1
    return False
