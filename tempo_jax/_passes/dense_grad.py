"""A short range's gradient in one op: every point's vjp at once, as dense masked matrices.

The backward of a map-then-reduce over a growing range (:mod:`.range_grad`) is a stats op per
consumer point and a rows op per producer point. Each evaluates the scores again, so
attention's backward computes its exponentials twice and its products seven times, where the
dense backward a user writes by hand (``jax.grad`` of a masked ``(T, T)`` formulation) takes
one pass of four. That trade pays for long ranges (memory ``O(T)``, not ``O(T^2)``). For short
ones the dense form is one op instead of two nests: XLA compiles it faster (the LM of
``scripts/train_lm.py``, 64 positions: 6.2 s against 8.9 s) and it runs about
as fast (its scores, vmapped over the queries, are laid out for neither product: copies).

:func:`dense_range_grads` decides, per range gradient, from the static size of the range's
dim: when the dim has at most ``max_rows`` points (and so does the producers' dim), the stats
and rows ops are replaced by

- a **dense op** over the consumer's domain without the range's dim, reading every point of
  it at once (the range inputs whole, the point reads at the dim as ``0:T``) and returning
  the vjp of the forward evaluated at all points (:func:`jax.vmap` of the masked payload,
  each point's range a window of the whole rows: :func:`~tempo_jax._lower.masking.masked_call`)
  under :func:`jax.vjp`: ``dq`` for every consumer and ``dk``, ``dv`` for every producer;
- the stats op, now a *pick* of its point's row of ``dq``; the rows op, a pick of its
  producer's row of ``dk``, ``dv``. Their ids and outputs (the point cotangents) are kept, so
  every reader of them is unchanged.

It is left as it is where the dim's bound is dynamic, the payload depends on where its rows
sit, a point read at the dim is other than the dim itself, or the dense op would read a
cotangent that depends on the gradient itself (a recurrence through the range). Padded rows
are masked in every reduction; element-wise work on them is harmless unless it overflows (the
cotangent ``0`` times an infinite derivative): the dense op checks its results are finite and
recomputes them with every padded row a copy of a valid row where not.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._ir.errors import TempoError, UnsupportedError
from .._ir.expr import TRUE, Const, Expr, Slice, Symbol, dims_of
from .._ir.program import Edge, Op, Payload, Program, TensorSpec
from .._ir.simplify import simplify
from .._lower.masking import NotAligned, PerPoint, masked_call, when_finite
from .._lower.sinking import sink_transposes
from .picks import next_id, pick_payload

_ROWS = "rows"
_POINTS = "points"  # the consumers' axis of the batched form's values
MAX_ROWS = 128  # the longest range dim taken dense by default
# what a trial trace of a dense payload raises where that form cannot be taken
_REFUSED = (UnsupportedError, NotAligned, TempoError, TypeError, ValueError)


@dataclasses.dataclass(frozen=True)
class DenseGrad:
    """A range op's gradient, as :func:`dense_range_grads` needs it (on its rows op's
    payload)."""

    stats: int  # the stats op's id; its inputs are the forward's, then the cotangents
    dim: Symbol  # the dim the range grows along
    item: Slice  # the range, over ``dim``
    row_dim: Symbol  # the producers' dim the range reads
    ranged: tuple[int, ...]  # the forward's inputs read as the range
    call: Callable[[list[Any]], Sequence[Any]]  # the forward's payload on its input values
    diff: tuple[int, ...]  # the forward's inputs differentiated
    outs: tuple[int, ...]  # the forward's outputs whose cotangents are read
    order: tuple[int, ...]  # ``diff`` as the stats op's point outputs, then the rows op's
    n_points: int  # how many of ``order`` are the stats op's
    what: str
    forward: int = -1  # the forward op's id


def dense_range_grads(program: Program, max_rows: int = MAX_ROWS) -> Program:
    """``program`` with every range gradient over a dim of at most ``max_rows`` points taken
    dense (see the module docstring); ``max_rows=0`` keeps them all in tiles."""
    sizes = dict(program.sizes)
    if max_rows <= 0 or not sizes:
        return program
    ops = list(program.ops)
    fresh = next_id(program)
    for rows in program.ops:
        record = rows.payload.dense if rows.payload is not None else None
        if record is None:
            continue
        current = Program(program.dims, tuple(ops), program.outputs)
        replaced = _replace(current, rows, record, sizes, max_rows, fresh)
        if replaced is None:
            continue
        dense, stats, picked, forward = replaced
        ops = [stats if op.id == stats.id else picked if op.id == rows.id else op for op in ops]
        ops.append(dense)
        fresh += 1
        if forward is not None:  # the forward too, where it is the range op it was
            whole, point = forward
            ops = [point if op.id == point.id else op for op in ops]
            ops.append(whole)
            fresh += 1
    if len(ops) == len(program.ops):
        return program
    return program.replace(ops=tuple(ops))


def _replace(
    program: Program,
    rows: Op,
    record: DenseGrad,
    sizes: dict[Symbol, int],
    max_rows: int,
    fresh: int,
) -> tuple[Op, Op, Op, tuple[Op, Op] | None] | None:
    """The dense op, the stats op and the rows op as picks of it, and the forward op's
    (:func:`_dense_forward`); None to keep the split."""
    stats = program.op(record.stats)  # live: the rows op reads it
    d = record.dim
    steps, producers = sizes.get(d.bound), sizes.get(record.row_dim.bound)
    if steps is None or producers is None:
        return None
    if max(steps, producers) > max_rows or any(e.cond != TRUE for e in stats.inputs):
        return None
    kinds, edges = [], []
    for k, edge in enumerate(stats.inputs):
        kind, index = _dense_read(program, edge, k in record.ranged, d)
        if kind is None:
            return None
        kinds.append(kind)
        edges.append(Edge(edge.src, edge.out, index, TRUE, edge.source))
    if any(kinds[k] != "point" for k in record.order[: record.n_points]):
        return None  # a cotangent summed over the range's dim: the stats op gives it per point
    dense_domain = tuple(c for c in stats.domain if c != d)
    if _depends_on(program, edges, dense_domain, {stats.id, rows.id}):
        return None  # the cotangents read depend on this gradient: a recurrence through it
    outputs = [
        TensorSpec((steps, *spec.shape), spec.dtype) for spec in stats.outputs[: record.n_points]
    ]
    outputs += [TensorSpec((producers, *spec.shape), spec.dtype) for spec in rows.outputs]
    values = [_struct(program.read_spec(e), sizes) for e in edges]  # for a trial trace
    for batched in (True, False):
        fn = dense_payload(record, tuple(kinds), steps, sizes, batched)
        try:
            jax.eval_shape(fn, *values)
            break
        except _REFUSED:
            continue
    else:
        return None
    # the form taken is in the name: one batched computation, or a batch of per-point ones
    name = stats.name.replace("vjp_stats", "vjp_dense" if batched else "vjp_dense_points", 1)
    dense = Op(
        fresh,
        "apply",
        name,
        dense_domain,
        tuple(edges),
        tuple(outputs),
        Payload(fn, name, pads_ok=True),
        stats.source,
    )
    stat_edge = rows.inputs[len(record.ranged)]  # the stats read: the range at the dim's place
    at_rows = tuple(i for c, i in zip(stats.domain, stat_edge.index, strict=True) if c != d)
    picked_stats = stats.replace(
        name=_picked_name(stats),
        inputs=tuple(
            Edge(fresh, n, dense_domain, TRUE, stats.source) for n in range(record.n_points)
        ),
        outputs=stats.outputs[: record.n_points],
        payload=pick_payload(d, 0, _picked_name(stats)),
    )
    picked_rows = rows.replace(
        name=_picked_name(rows),
        inputs=tuple(
            Edge(fresh, record.n_points + n, at_rows, TRUE, rows.source)
            for n in range(len(rows.outputs))
        ),
        payload=pick_payload(record.row_dim, 0, _picked_name(rows)),
    )
    forward = None
    if batched:
        n_in = len(kinds) - len(record.outs)
        forward = _dense_forward(
            program,
            record,
            tuple(kinds[:n_in]),
            edges[:n_in],
            values[:n_in],
            dense_domain,
            steps,
            sizes,
            fresh + 1,
        )
    return dense, picked_stats, picked_rows, forward


def _dense_forward(
    program: Program,
    record: DenseGrad,
    kinds: tuple[str, ...],
    edges: Sequence[Edge],
    values: Sequence[jax.ShapeDtypeStruct],
    domain: tuple[Symbol, ...],
    steps: int,
    sizes: dict[Symbol, int],
    fresh: int,
) -> tuple[Op, Op] | None:
    """The forward op, where its gradient is taken batched, as one op computing every point
    at once (:func:`forward_payload`) and the op a pick of its point's row; None where the op
    is no longer the one the gradient was built from, or a range it reads depends on it (a
    recurrence through the range: the dense op would read its own output)."""
    op = next((o for o in program.ops if o.id == record.forward), None)
    stats = program.op(record.stats)
    if op is None or op.payload is None or op.payload.uses_point:
        return None
    if tuple(op.inputs) != tuple(stats.inputs[: len(kinds)]):
        return None
    if _depends_on(program, edges, domain, {op.id}):
        return None
    fn = forward_payload(record, kinds, steps, sizes, len(op.outputs))
    try:
        jax.eval_shape(fn, *values)
    except _REFUSED:
        return None
    name = f"dense[{op.name}]"
    outputs = tuple(TensorSpec((steps, *spec.shape), spec.dtype) for spec in op.outputs)
    whole = Op(
        fresh,
        "apply",
        name,
        domain,
        tuple(edges),
        outputs,
        Payload(fn, name, pads_ok=True),
        op.source,
    )
    point = op.replace(
        inputs=tuple(Edge(fresh, n, domain, TRUE, op.source) for n in range(len(op.outputs))),
        payload=pick_payload(record.dim, 0, op.name),
    )
    return whole, point


def _dense_read(
    program: Program, edge: Edge, ranged: bool, d: Symbol
) -> tuple[str | None, tuple[Any, ...]]:
    """How the dense op reads what the stats op read at one point: ``("range", rows 0:P)``,
    ``("point", 0:T at the dim)`` or ``("fixed", the same index)``; ``(None, ())`` where it
    cannot."""
    producer = program.op(edge.src).domain
    if ranged:
        pos = next(p for p, i in enumerate(edge.index) if isinstance(i, Slice))
        index = list(edge.index)
        index[pos] = Slice(Const(0), producer[pos].bound)
        return "range", tuple(index)
    used = [p for p, i in enumerate(edge.index) if d in dims_of(i)]
    if not used:
        return "fixed", edge.index
    if len(used) != 1 or edge.index[used[0]] != d or producer[used[0]].bound != d.bound:
        return None, ()
    index = list(edge.index)
    index[used[0]] = Slice(Const(0), d.bound)
    return "point", tuple(index)


def _depends_on(
    program: Program, edges: Sequence[Edge], same: tuple[Symbol, ...], targets: set[int]
) -> bool:
    """Whether what ``edges`` read is computed, at the same point of the dims ``same``, from
    an op of ``targets``. A read of an earlier point of one of those dims (``w[i-1]``) is not
    followed: the gradient at ``i`` cannot feed a point before ``i``."""
    seen: set[int] = set()
    stack = list(edges)
    while stack:
        edge = stack.pop()
        producer = program.op(edge.src)
        if any(
            dim in same and _earlier(item, dim)
            for dim, item in zip(producer.domain, edge.index, strict=True)
        ):
            continue
        if producer.id in targets:
            return True
        if producer.id in seen:
            continue
        seen.add(producer.id)
        stack.extend(producer.inputs)
    return False


def _earlier(item: Any, dim: Symbol) -> bool:
    """Whether the index ``item`` is ``dim`` minus a positive constant."""
    if isinstance(item, Slice) or dim not in dims_of(item):
        return False
    offset = simplify(item - dim)
    return isinstance(offset, Const) and offset.value < 0


def _struct(spec: TensorSpec, sizes: dict[Symbol, int]) -> jax.ShapeDtypeStruct:
    shape = tuple(n if isinstance(n, int) else int(n.evaluate(sizes)) for n in spec.shape)
    return jax.ShapeDtypeStruct(shape, spec.dtype)


def _picked_name(op: Op) -> str:
    """``vjp_stats[o]`` -> ``pick_stats[o]``: the op's name once it picks from the dense op."""
    return op.name.replace("vjp_", "pick_", 1)


def _ends(record: DenseGrad, steps: int, sizes: dict[Symbol, int]) -> tuple[Any, Any]:
    """Each consumer's range, ``lo <= row < hi``, as two vectors over the ``steps`` points."""
    env: dict[Expr, Any] = {**sizes, record.dim: jnp.arange(steps, dtype=jnp.int32)}
    lo, hi = (
        jnp.broadcast_to(jnp.asarray(end.evaluate(env), jnp.int32), (steps,))
        for end in (record.item.start, record.item.stop)
    )
    return lo, hi


def dense_payload(
    record: DenseGrad,
    kinds: tuple[str, ...],
    steps: int,
    sizes: dict[Symbol, int],
    batched: bool = True,
) -> Callable[..., tuple[Any, ...]]:
    """``(*forward inputs, *cotangents)``, each read whole along the range's dim (``kinds``
    tells how) -> the cotangents of ``record.order``: a point's over the ``steps`` consumers,
    a range's over the producers.

    ``batched``: the forward is the payload batched over the consumers, masked as one
    computation (each value in the layout the batch gives it: attention's scores stay
    ``(batch, head, query, key)`` for both products); otherwise each consumer's masked
    payload, batched (every masked value's consumer axis moved to the front). The first
    raises where a value padded along the range holds no consumer axis."""
    n_in = len(kinds) - len(record.outs)  # the forward's inputs, then its cotangents

    def fn(*values: Any) -> tuple[Any, ...]:
        lo, hi = _ends(record, steps, sizes)
        outs = record.outs
        if batched:
            fast = functools.partial(_batched, record, kinds[:n_in], _per_point(record, lo, hi))
        else:
            fast = functools.partial(_points, record, kinds[:n_in], lo, hi, False)
        result = _vjp(record, values, lambda full: fast(full, outs))
        slow = functools.partial(_points, record, kinds[:n_in], lo, hi, True)
        return tuple(
            when_finite(
                result, lambda: result, lambda: _vjp(record, values, lambda f: slow(f, outs))
            )
        )

    return fn


def forward_payload(
    record: DenseGrad, kinds: tuple[str, ...], steps: int, sizes: dict[Symbol, int], n_out: int
) -> Callable[..., tuple[Any, ...]]:
    """The forward inputs, read whole along the range's dim (``kinds``) -> the forward's
    ``n_out`` outputs at every consumer: the batched form of :func:`dense_payload`."""
    outs = tuple(range(n_out))

    def fn(*values: Any) -> tuple[Any, ...]:
        lo, hi = _ends(record, steps, sizes)
        result = _batched(record, kinds, _per_point(record, lo, hi), list(values), outs)
        return tuple(
            when_finite(
                result, lambda: result, lambda: _points(record, kinds, lo, hi, True, values, outs)
            )
        )

    return fn


def _per_point(record: DenseGrad, lo: Any, hi: Any) -> PerPoint:
    start = record.item.start
    return PerPoint(0 if isinstance(start, Const) and start.value == 0 else lo, hi, _POINTS)


def _vjp(
    record: DenseGrad, values: Sequence[Any], forward: Callable[[list[Any]], tuple[Any, ...]]
) -> tuple[Any, ...]:
    """The cotangents of ``record.order``, pulled back through ``forward`` (the forward
    inputs -> the outputs ``record.outs``) from the cotangents at the end of ``values``."""
    n_in = len(values) - len(record.outs)
    inputs, cts = list(values[:n_in]), values[n_in:]

    def at(*diff_values: Any) -> tuple[Any, ...]:
        full = list(inputs)
        for k, x in zip(record.diff, diff_values, strict=True):
            full[k] = x
        return forward(full)

    outs, pull = jax.vjp(at, *(inputs[k] for k in record.diff))
    grads = pull(tuple(jnp.asarray(c, o.dtype) for c, o in zip(cts, outs, strict=True)))
    by_input = dict(zip(record.diff, grads, strict=True))
    return tuple(by_input[k] for k in record.order)


def _batched(
    record: DenseGrad,
    kinds: tuple[str, ...],
    rows: PerPoint,
    inputs: list[Any],
    outs: Sequence[int],
) -> tuple[Any, ...]:
    """The forward's outputs ``outs`` at every consumer: the payload batched over them and
    masked as one computation, its transposes moved to its outputs."""
    in_axes = tuple(0 if kind == "point" else None for kind in kinds)
    pads = [
        {0: _ROWS} if kind == "range" else {0: _POINTS} if kind == "point" else {} for kind in kinds
    ]
    batch = sink_transposes(jax.vmap(lambda *a: tuple(record.call(list(a))), in_axes=in_axes))
    lengths = {_ROWS: rows, _POINTS: np.shape(rows.hi)[0]}
    out = masked_call(batch, inputs, pads, lengths, record.what, unchecked=True)
    return tuple(out[j] for j in outs)


def _points(
    record: DenseGrad,
    kinds: tuple[str, ...],
    lo: Any,
    hi: Any,
    safe: bool,
    inputs: Sequence[Any],
    outs: Sequence[int],
) -> tuple[Any, ...]:
    """The forward's outputs ``outs`` at every consumer: each one's masked payload, batched.
    ``safe``: exact, every padded row a copy of a valid one (nothing overflows there)."""
    in_axes = [0 if kind == "point" else None for kind in kinds]
    pads = [{0: _ROWS} if kind == "range" else {} for kind in kinds]

    def one(lo_t: Any, hi_t: Any, *args: Any) -> tuple[Any, ...]:
        args = list(args)
        if safe:
            for k in record.ranged:
                rows = jnp.arange(args[k].shape[0])
                valid = (rows >= lo_t) & (rows < hi_t)
                valid = valid.reshape(valid.shape + (1,) * (args[k].ndim - 1))
                args[k] = jnp.where(valid, args[k], args[k][lo_t])
        call = lambda *a: record.call(list(a))  # noqa: E731
        out = masked_call(call, args, pads, {_ROWS: (lo_t, hi_t)}, record.what, not safe)
        return tuple(out[j] for j in outs)

    return jax.vmap(one, in_axes=(0, 0, *in_axes))(lo, hi, *inputs)
