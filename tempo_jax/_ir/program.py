"""The symbolic dependence graph (SDG): immutable ops, edges, outputs and the program.

An :class:`Op` computes one value per point of its *domain* (a tuple of dims). Each input
:class:`Edge` says, per dim of the producer, which producer point(s) one consumer point
reads: an index expression (``t-1``) or a :class:`~tempo_jax._ir.expr.Slice` (``0:t+1``),
which stacks the range along a new leading spatial dim. Op kinds:

- ``"input"``: a program input; its value at a point is one entry of the input array.
- ``"apply"``: a point-wise JAX payload applied to its inputs' values at a point.
- ``"sink"``: a side effect: its payload ``fn(value, point)`` runs on the host once per
  point (logging metrics); it has no outputs.
- ``"merge"``: a tensor defined by ordered branches; each input edge carries a condition
  over the op's domain, and the first edge whose condition holds defines the point.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from .expr import (
    TRUE,
    Const,
    Expr,
    IndexItem,
    Slice,
    Symbol,
    format_index,
    substitute,
    symbols_of,
)
from .simplify import simplify
from .source import UNKNOWN_SOURCE, SourceInfo, describe

Dim = int | Expr  # a spatial dim size: static, or symbolic (over bounds and domain dims)

OP_KINDS = ("input", "apply", "merge", "sink")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Spatial shape and dtype of one point of a tensor."""

    shape: tuple[Dim, ...]
    dtype: np.dtype
    weak_type: bool = False  # JAX weak typing: a Python-scalar constant adopts its partner's dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def symbols(self) -> frozenset[Symbol]:
        found: set[Symbol] = set()
        for d in self.shape:
            if isinstance(d, Expr):
                found |= symbols_of(d)
        return frozenset(found)

    def concrete_shape(self, env: Mapping[Symbol, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else d.evaluate(env) for d in self.shape)

    def __str__(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.dtype.name}[{dims}]"


@dataclasses.dataclass(frozen=True, eq=False)
class Payload:
    """The JAX function computing one point of an ``apply`` op.

    Called as ``fn(*input_values)``; with ``uses_point`` as ``fn(env, *input_values)`` where
    ``env`` maps the op's domain dims and every bound to their values at the point.
    Returns a tuple with one array per output.

    ``pads_ok``: the function is exact on inputs whose symbolic-size axes are padded with
    arbitrary rows past the point's size (it masks them itself), so the compiled program calls
    it directly rather than through the masked evaluation. ``differentiable``: gradients flow
    through it (``detach`` clears it). ``accumulates``: its one input is a read of a box of
    points with constant ends that it only sums over the stacked axes (and is exact when given
    that sum with each stacked axis of size 1), so the compiled program may keep a running
    sum updated wherever the producer runs instead of storing the points. ``block``: the
    compiled program computes it over tiles of this many rows of its growing ranges, visiting
    only the tiles that hold data (0: a size chosen from the range's largest size; None: the
    whole padded range at once).
    """

    fn: Callable[..., tuple[Any, ...]]
    name: str
    uses_point: bool = False
    pads_ok: bool = False
    differentiable: bool = True
    accumulates: bool = False
    block: int | None = None
    fused: tuple[tuple[str, SourceInfo], ...] = ()  # ops folded into this one: name, source
    # a range gradient's rows op: how its range op's whole gradient is computed in one op
    # over the range's dim (``dense_grad.DenseGrad``, taken by ``dense_range_grads``)
    dense: Any = None


@dataclasses.dataclass(frozen=True)
class Edge:
    """A read of producer ``src`` (output ``out``) at ``index`` under condition ``cond``."""

    src: int
    out: int
    index: tuple[IndexItem, ...]
    cond: Expr = TRUE
    source: SourceInfo = UNKNOWN_SOURCE

    @property
    def slices(self) -> tuple[int, ...]:
        """Positions of the index items that are slices (each adds a leading spatial dim)."""
        return tuple(k for k, item in enumerate(self.index) if isinstance(item, Slice))

    def symbols(self) -> frozenset[Symbol]:
        found: set[Symbol] = set(symbols_of(self.cond))
        for item in self.index:
            found |= symbols_of(item)
        return frozenset(found)

    def describe(self, producer_name: str) -> str:
        return f"{producer_name}[{format_index(self.index)}]" if self.index else producer_name


@dataclasses.dataclass(frozen=True)
class Op:
    """One node of the SDG; see the module docstring for the kinds."""

    id: int
    kind: str
    name: str
    domain: tuple[Symbol, ...]
    inputs: tuple[Edge, ...]
    outputs: tuple[TensorSpec, ...]
    payload: Payload | None = None
    source: SourceInfo = UNKNOWN_SOURCE
    # where the user asked its stored values to live: "offload" (host memory), "keep"
    # (device memory), or "" (the planner decides; see tj.offload)
    memory: str = ""

    def replace(self, **changes: Any) -> Op:
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        dom = ", ".join(s.name for s in self.domain)
        outs = ", ".join(str(o) for o in self.outputs)
        return f"%{self.id} {self.name}[{dom}] : {outs} = {self.kind}"


def describe_op(op: Op) -> str:
    """``op`` for a message: its name and source line, and the ops fused into it."""
    text = f"`{op.name}`{describe(op.source)}"
    fused = op.payload.fused if op.payload is not None else ()
    if fused:
        parts = ", ".join(f"`{name}`{describe(source)}" for name, source in fused)
        text += f" (computing {parts} with it)"
    return text


def sink_note(op: Op, point: Mapping[str, int]) -> str:
    """The note added to an exception a sink's function raised: which sink, which point."""
    at = ", ".join(f"{name}={value}" for name, value in point.items()) or "its only point"
    return f"raised by the sink `{op.name}`{describe(op.source)}, called for {at}"


@dataclasses.dataclass(frozen=True)
class Output:
    """A named program output: the read ``edge`` stacked over ``domain`` (dims first).

    ``perm``, when set, transposes the stacked array (a pass that turned a domain dim into an
    array axis puts that axis back where the user's output had it).
    """

    name: str
    domain: tuple[Symbol, ...]
    edge: Edge
    spec: TensorSpec
    perm: tuple[int, ...] | None = None

    def arrange(self, array: Any) -> Any:
        """The stacked array in the output's layout (``perm`` applied)."""
        return array if self.perm is None else array.transpose(self.perm)

    def reader(self, op_id: int) -> Op:
        """A stand-in op for the output's read, to check or analyse it like any consumer."""
        return Op(
            id=op_id,
            kind="apply",
            name=f"output {self.name!r}",
            domain=self.domain,
            inputs=(),
            outputs=(),
        )


STOP = "@stop"  # the output holding a program's stop condition (``p.stop_when``)


@dataclasses.dataclass(frozen=True)
class Program:
    """An immutable SDG. ``dims`` are the program's domain dims in declaration order.

    ``trees`` names outputs that are pytrees: ``(name, treedef, leaf output names)``.
    ``dynamic`` holds the bounds given per call (``tj.dynamic``), set when compiling: passes
    that need a bound's value at trace time leave their dims alone. ``sizes`` holds the others'
    values, for passes that decide by size.
    """

    dims: tuple[Symbol, ...]
    ops: tuple[Op, ...]
    outputs: tuple[Output, ...]
    trees: tuple[tuple[str, Any, tuple[str, ...]], ...] = ()
    dynamic: frozenset[Symbol] = frozenset()
    sizes: tuple[tuple[Symbol, int], ...] = ()  # the static bounds' values, set when compiling
    # (op id, dim name): ops run behind the loop over that dim whose values they read ahead
    # of (``tempo_jax._passes.streaming``), scheduled late by ``tempo_jax._schedule.retime``
    streams: tuple[tuple[int, str], ...] = ()

    def assemble(self, results: dict[str, Any]) -> dict[str, Any]:
        """``results`` with the leaves of each pytree output put back into their pytree."""
        if not self.trees:
            return results
        results = dict(results)
        for name, treedef, leaves in self.trees:
            values = [results.pop(leaf) for leaf in leaves]
            results[name] = jax.tree_util.tree_unflatten(treedef, values)
        return results

    def replace(self, **changes: Any) -> Program:
        return dataclasses.replace(self, **changes)

    @functools.cached_property
    def _by_id(self) -> dict[int, Op]:
        return {op.id: op for op in self.ops}

    def op(self, op_id: int) -> Op:
        return self._by_id[op_id]

    def readers(self) -> dict[int, list[tuple[int, Edge]]]:
        """Per op (every one), the ops reading it, each with the edge it reads through, in
        program order (program outputs are not ops: not among them)."""
        found: dict[int, list[tuple[int, Edge]]] = {op.id: [] for op in self.ops}
        for op in self.ops:
            for edge in op.inputs:
                found[edge.src].append((op.id, edge))
        return found

    @property
    def stop(self) -> Output | None:
        """The stop condition of ``p.stop_when``: an output over one dim, or None."""
        return next((out for out in self.outputs if out.name == STOP), None)

    @property
    def stopped(self) -> Symbol | None:
        """The dim ``p.stop_when`` ends, or None. Every op over it runs inside the one loop the
        stop ends, so no pass turns it into an array axis or drops it from an op's domain."""
        stop = self.stop
        return None if stop is None else stop.domain[0]

    @property
    def inputs(self) -> dict[str, Op]:
        return {op.name: op for op in self.ops if op.kind == "input"}

    @property
    def bounds(self) -> tuple[Symbol, ...]:
        return tuple(d.bound for d in self.dims)

    def read_counts(self) -> dict[tuple[int, int], int]:
        """How many reads (op inputs and program outputs) each ``(op, output)`` has."""
        counts: dict[tuple[int, int], int] = {}
        edges = [e for op in self.ops for e in op.inputs] + [o.edge for o in self.outputs]
        for edge in edges:
            counts[(edge.src, edge.out)] = counts.get((edge.src, edge.out), 0) + 1
        return counts

    def read_spec(self, edge: Edge) -> TensorSpec:
        """Spec of the value an edge reads at one consumer point (see :func:`read_spec`)."""
        return read_spec(self.op(edge.src), edge)

    def producer_name(self, edge: Edge) -> str:
        op = self.op(edge.src)
        return op.name if len(op.outputs) == 1 else f"{op.name}.{edge.out}"

    def __str__(self) -> str:
        lines = []
        for op in self.ops:
            reads = ", ".join(
                edge.describe(f"%{edge.src}") + ("" if edge.cond == TRUE else f" if {edge.cond}")
                for edge in op.inputs
            )
            lines.append(f"{op}({reads})")
        for out in self.outputs:
            lines.append(f"output {out.name} = {out.edge.describe(f'%{out.edge.src}')}")
        return "\n".join(lines)


def read_spec(producer: Op, edge: Edge) -> TensorSpec:
    """Spec of the value ``edge`` reads from ``producer`` at one consumer point.

    Slice items prepend their sizes (in index order); the producer's own symbolic sizes are
    re-expressed at the read point.
    """
    spec = producer.outputs[edge.out]
    point = {
        dim: item
        for dim, item in zip(producer.domain, edge.index, strict=True)
        if not isinstance(item, Slice)
    }
    shape = [d if isinstance(d, int) else substitute(d, point) for d in spec.shape]
    sizes = [item.size for item in edge.index if isinstance(item, Slice)]
    return TensorSpec(tuple(static_dim(d) for d in (*sizes, *shape)), spec.dtype)


def static_dim(dim: Dim) -> Dim:
    """A simplified dim size: an int when it is constant."""
    if isinstance(dim, int):
        return dim
    dim = simplify(dim)
    return dim.value if isinstance(dim, Const) else dim
