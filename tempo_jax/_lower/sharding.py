"""Sharding a vectorised dim over a device mesh: the plan, and its checks.

``p.compile(bounds, mesh=mesh, shard={"b": "data"})`` splits the points of dim ``b`` over the
devices of the mesh axis ``"data"``. The program stays one jitted function; JAX's SPMD
partitioner does the splitting. :func:`plan_sharding` decides and records it (a
:class:`ShardPlan`: which dim goes to which mesh axis); the lowering only pins the layouts
the plan names, with :func:`jax.lax.with_sharding_constraint`:

- every input with a sharded dim in its domain (dims first: the axis of ``b`` is split),
  and the axes of a point's value that ``specs`` splits (``{"w": PartitionSpec(None,
  "model")}``: a weight's columns over the devices of ``"model"``, tensor parallelism);
- every output over the sharded dims its leading axes walk, as the user recorded it (its
  domain's dims, then each range it reads that is all of a dim), so ``out[name].sharding``
  is the plan's ``NamedSharding``.

XLA propagates the layout through the loops and the vectorised ops between them, and inserts
the collectives a sharded dim needs: a reduction over ``b`` (a mean loss, a weight gradient
summed over environments) becomes an all-reduce. Parameters and values without a sharded dim
are replicated.

Sinks run as unordered host callbacks on a mesh (JAX runs ordered ones on one device only):
in the order of their loop's steps, but two sinks of one step may run in either order.

A dim can be sharded only where the schedule vectorises it: a loop over it (a recurrence,
``x[b - 1]``) runs its points one after the other, which no split over devices can do; the
error names the read that carries the dependence. The loops of a block nest
(:mod:`.blocks`) are vectorised by the lowering (``jax.vmap``) but for the query loop, whose
blocks run in turn: that one is refused with the range read that makes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._ir.errors import DefinitionError, UnsupportedError
from .._ir.expr import Const, Slice, Symbol, dims_of
from .._ir.program import Program
from .._ir.source import describe
from .._schedule.tree import Node, loops


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Which dims are split over which axes of ``mesh`` (``dims``: dim name -> mesh axis)."""

    mesh: Mesh
    dims: Mapping[str, str]
    inputs: Mapping[str, PartitionSpec] = dataclasses.field(default_factory=dict)
    # output name -> the dim (or None) of each leading axis of its array, as the user wrote it
    outputs: Mapping[str, tuple[str | None, ...]] = dataclasses.field(default_factory=dict)
    # a loop's masked tiles are computed exactly (both operands of a product masked) instead
    # of fast and checked for finiteness: over a split value that check is an all-reduce per
    # tile, a collective in every step of a data-parallel decode
    exact_masks: bool = True

    def spec(self, domain: tuple[Symbol, ...], within: Any = ()) -> NamedSharding:
        """The sharding of an array whose leading axes are ``domain``'s dims, its others split
        as ``within`` (a partition spec of a point's value) says."""
        axes = [self.dims.get(d.name) for d in domain] + list(within)
        while axes and axes[-1] is None:
            axes.pop()
        return NamedSharding(self.mesh, PartitionSpec(*axes))

    def constrain_output(self, name: str, value: Any) -> Any:
        """Output ``name`` pinned to the split of the sharded dims its leading axes walk."""
        axes = [self.dims.get(d) if d is not None else None for d in self.outputs.get(name, ())]
        if not any(axes):
            return value
        while axes[-1] is None:
            axes.pop()
        spec = NamedSharding(self.mesh, PartitionSpec(*axes))
        return jax.lax.with_sharding_constraint(value, spec)

    def constrain(self, value: Any, domain: tuple[Symbol, ...], within: Any = ()) -> Any:
        """``value`` pinned to :meth:`spec`; as is where nothing of it is split."""
        if not any(d.name in self.dims for d in domain) and not any(within):
            return value
        return jax.lax.with_sharding_constraint(value, self.spec(domain, within))


def plan_sharding(
    program: Program,
    tree: Node,
    bounds: Mapping[Symbol, int],
    dynamic: Mapping[Symbol, Any],
    mesh: Any,
    shard: Any,
    specs: Any = None,
    at_once: Mapping[int, bool] | None = None,
    user: Program | None = None,
) -> ShardPlan | None:
    """The plan for ``shard`` (dim name or symbol -> mesh axis name) and ``specs`` (input name
    -> the partition spec of its value at a point: tensor parallelism) over ``mesh``; None
    without a mesh. ``at_once``: the loops (by ``id``) the lowering runs at once, True for a
    query loop of blocks (``TreeLowering``'s nests); ``user``: the program as recorded, whose
    outputs' layout the results keep. Raises a :class:`DefinitionError` for a
    bad request and an :class:`UnsupportedError` for a dim the schedule runs as a loop."""
    if mesh is None:
        if shard or specs:
            raise DefinitionError(
                "`shard` and `specs` split values over a device mesh: pass `mesh=` too"
            )
        return None
    if not isinstance(mesh, Mesh):
        raise DefinitionError(f"`mesh` is a jax.sharding.Mesh, not {type(mesh).__name__}")
    shard = {} if shard is None else shard
    if not isinstance(shard, Mapping) or not (shard or specs):
        raise DefinitionError(
            "`shard` maps dims to mesh axes, e.g. shard={'b': 'data'}; got " + repr(shard)
        )
    dims = {d.name: d for d in program.dims}
    at_once = at_once or {}
    plan: dict[str, str] = {}
    for key, axis in shard.items():
        name = key.name if isinstance(key, Symbol) else key
        if name not in dims:
            raise DefinitionError(
                f"`shard` names dim {name!r}, which is not a dim of the program "
                f"(its dims: {sorted(dims)})"
            )
        if axis not in mesh.axis_names:
            raise DefinitionError(
                f"`shard` puts dim {name!r} on mesh axis {axis!r}; the mesh's axes are "
                f"{list(mesh.axis_names)}"
            )
        if axis in plan.values():
            raise DefinitionError(f"`shard` puts two dims on mesh axis {axis!r}")
        dim = dims[name]
        walked = [loop for loop in loops(tree) if loop.dim == name]
        if any(at_once.get(id(loop)) for loop in walked):
            raise UnsupportedError(_blocks_error(program, dim, axis))
        if any(id(loop) not in at_once for loop in walked):  # a vmapped nest loop is fine
            raise UnsupportedError(_loop_error(program, dim, axis))
        if dim.bound in dynamic:
            raise UnsupportedError(
                f"dim {name!r} has a dynamic bound `{dim.bound_name}`; a sharded dim needs a "
                "static one (its points are split evenly over the devices)"
            )
        size, devices = bounds[dim.bound], mesh.shape[axis]
        if size % devices:
            raise DefinitionError(
                f"dim {name!r} has {size} points, which mesh axis {axis!r} cannot split "
                f"evenly over its {devices} devices (use a multiple of {devices})"
            )
        plan[name] = axis
    outputs = _output_dims(user or program)
    return ShardPlan(mesh, plan, _input_specs(program, mesh, plan, specs or {}), outputs)


def _output_dims(program: Program) -> dict[str, tuple[str | None, ...]]:
    """Per output, the dim each leading axis of its array walks: its domain's dims, then one
    per range it reads (the dim when the range is all of it, else None)."""
    found = {}
    for out in program.outputs:
        producer = program.op(out.edge.src).domain
        axes: list[str | None] = [d.name for d in out.domain]
        for dim, item in zip(producer, out.edge.index, strict=True):
            if isinstance(item, Slice):
                whole = item.start == Const(0) and item.stop == dim.bound
                axes.append(dim.name if whole else None)
        found[out.name] = tuple(axes)
    return found


def _input_specs(
    program: Program, mesh: Mesh, plan: Mapping[str, str], specs: Any
) -> dict[str, PartitionSpec]:
    """``specs`` checked: each names an input and splits its point's axes over mesh axes no
    sharded dim of its domain uses."""
    if not isinstance(specs, Mapping):
        raise DefinitionError(
            "`specs` maps input names to partition specs, e.g. "
            f"{{'w': PartitionSpec(None, 'model')}}; got {specs!r}"
        )
    inputs = program.inputs
    found = {}
    for name, spec in specs.items():
        if name not in inputs:
            raise DefinitionError(
                f"`specs` names {name!r}, which is not an input of the program (its inputs: "
                f"{sorted(inputs)})"
            )
        if not isinstance(spec, PartitionSpec):
            raise DefinitionError(
                f"`specs[{name!r}]` is a jax.sharding.PartitionSpec, not {type(spec).__name__}"
            )
        op = inputs[name]
        rank = len(op.outputs[0].shape)
        if len(spec) > rank:
            raise DefinitionError(
                f"`specs[{name!r}]` splits {len(spec)} axes; `{name}` has {rank} at a point"
            )
        taken = {plan[d.name] for d in op.domain if d.name in plan}
        for entry in spec:
            for axis in (entry,) if isinstance(entry, str) else entry or ():
                if axis not in mesh.axis_names:
                    raise DefinitionError(
                        f"`specs[{name!r}]` uses mesh axis {axis!r}; the mesh's axes are "
                        f"{list(mesh.axis_names)}"
                    )
                if axis in taken:
                    raise DefinitionError(
                        f"`specs[{name!r}]` uses mesh axis {axis!r}, which a sharded dim of "
                        f"`{name}`'s domain already splits"
                    )
        found[name] = spec
    return found


def _blocks_error(program: Program, dim: Symbol, axis: str) -> str:
    """Why dim ``dim``, along which a range grows, cannot be sharded: its query blocks."""
    reader = next(
        (
            f"`{op.name}`{describe(op.source)}"
            for op in program.ops
            for edge in op.inputs
            for item in edge.index
            if isinstance(item, Slice) and dim in dims_of(item.stop)
        ),
        "an op",
    )
    return (
        f"dim {dim.name!r} cannot be sharded over mesh axis {axis!r}: {reader} reads a range "
        f"growing along {dim.name!r}, so its points run in blocks of queries, one block after "
        "another. Shard another dim of it (a batch dim), or split the weights with `specs`."
    )


def _loop_error(program: Program, dim: Symbol, axis: str) -> str:
    """Why dim ``dim`` cannot be sharded: the read that makes the schedule loop over it."""
    head = (
        f"dim {dim.name!r} cannot be sharded over mesh axis {axis!r}: the schedule runs it as "
        "a loop, one point after another"
    )
    for op in program.ops:
        if dim not in op.domain:
            continue
        for edge in op.inputs:
            producer = program.op(edge.src)
            if dim not in producer.domain:
                continue
            item = edge.index[producer.domain.index(dim)]
            if item != dim and not isinstance(item, Slice) and dim in dims_of(item):
                return (
                    f"{head}: `{op.name}`{describe(edge.source)} reads `{producer.name}` at "
                    f"{dim.name} = {item}, a dependence carried along {dim.name!r}. Shard a "
                    "dim the program maps over independently (an env or batch dim)."
                )
    return f"{head}. Shard a dim the program maps over independently (an env or batch dim)."
