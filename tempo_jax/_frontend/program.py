"""The user's :class:`Program`: a context manager that owns symbols and records ops."""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax

from .._ir.errors import DefinitionError, ForeignSymbolError, OutputError, TempoError
from .._ir.expr import Symbol
from .._ir.program import STOP, Edge, Op, Output, TensorSpec
from .._ir.program import Program as IRProgram
from .._ir.source import SourceInfo, capture_source, describe
from .._ir.verify import verify

if TYPE_CHECKING:
    from .tensor import RecurrentTensor

_ACTIVE: contextvars.ContextVar[Program | None] = contextvars.ContextVar(
    "tempo_jax_active_program", default=None
)


class Program:
    """Records a dynamic program written for one point of its domain.

    Example::

        with tj.Program() as p:
            t, = p.dims("t")
            x = tj.placeholder((), jnp.float32, domain=(t,))
            x[0] = 1.0
            x[t + 1] = x[t] * 0.5
            p.output("x", x[0:t.bound])
        out = tj.reference.run(p, bounds={t.bound: 8})
    """

    def __init__(self, name: str = "program") -> None:
        self.name = name
        self._dims: list[Symbol] = []
        self._ops: list[Op] = []
        self.saved_residuals: set[int] = set()  # ops whose outputs hold a vjp's residuals
        self._branches: dict[int, list[Edge]] = {}
        self._outputs: list[Output] = []
        self._input_names: set[str] = set()
        self._params: list[RecurrentTensor] = []  # tj.param leaves, for `loss.backward()`
        self._grads: dict[tuple[int, int], RecurrentTensor] = {}  # (op, out) -> its gradient
        self._tokens: list[contextvars.Token[Program | None]] = []
        self._trees: dict[str, tuple[Any, tuple[str, ...]]] = {}  # pytree outputs

    # -- context management --------------------------------------------------------------------
    def __enter__(self) -> Program:
        self._tokens.append(_ACTIVE.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.reset(self._tokens.pop())

    # -- symbols --------------------------------------------------------------------------------
    def dims(self, names: str | Sequence[str]) -> tuple[Symbol, ...]:
        """Declare domain dims (``p.dims("b t")``); each dim ``t`` has the bound ``T``.

        Domains are always ordered as the dims are declared here.
        """
        if isinstance(names, str):
            names = names.replace(",", " ").split()
        created = []
        for name in names:
            if not name.isidentifier():
                raise TempoError(f"dim name {name!r} is not an identifier")
            bound = name.upper() if name.upper() != name else f"{name}_bound"
            taken = {s.name for s in self._dims} | {s.bound.name for s in self._dims}
            if name in taken or bound in taken:
                raise TempoError(
                    f"dim {name!r} (bound {bound!r}) clashes with an existing dim or bound of "
                    "this program; choose another name."
                )
            sym = Symbol(name, id(self), bound)
            self._dims.append(sym)
            created.append(sym)
        return tuple(created)

    @property
    def declared_dims(self) -> tuple[Symbol, ...]:
        """Every dim declared so far, in declaration order."""
        return tuple(self._dims)

    def check_symbol(self, sym: Symbol, where: str, source: SourceInfo) -> None:
        owned = sym in self._dims or any(sym == d.bound for d in self._dims)
        if not owned:
            raise ForeignSymbolError(
                f"{where}{describe(source)} uses the symbol `{sym.name}`, which belongs to another "
                "program; use the symbols returned by this program's `p.dims(...)`."
            )

    def sort_domain(self, dims: set[Symbol] | frozenset[Symbol]) -> tuple[Symbol, ...]:
        """Order a set of dims as declared."""
        return tuple(d for d in self._dims if d in dims)

    # -- recording -------------------------------------------------------------------------------
    def add_op(self, **fields: Any) -> Op:
        op = Op(id=len(self._ops), **fields)
        self._ops.append(op)
        if op.kind == "merge":
            self._branches[op.id] = []
        return op

    def op(self, op_id: int) -> Op:
        return self._ops[op_id]

    def add_branch(self, op_id: int, edge: Edge) -> None:
        self._branches[op_id].append(edge)

    def branches(self, op_id: int) -> tuple[Edge, ...]:
        """The branches of a placeholder defined so far, in definition order."""
        return tuple(self._branches[op_id])

    def replace_op(self, op: Op) -> None:
        """Swap a recorded op for an updated copy (same id)."""
        self._ops[op.id] = op

    def recorded_ops(self) -> tuple[Op, ...]:
        """The ops recorded so far, merges with the branches defined so far."""
        return tuple(
            op.replace(inputs=tuple(self._branches[op.id])) if op.kind == "merge" else op
            for op in self._ops
        )

    def register_input(self, name: str, source: SourceInfo) -> None:
        if name in self._input_names:
            raise TempoError(f"two inputs are named {name!r}{describe(source)}; names must differ")
        self._input_names.add(name)

    def output(self, name: str, value: Any) -> None:
        """Name a program output: ``value`` stacked over its domain (domain dims first).

        ``value`` may be a pytree of tensors (e.g. flax params): the output is then the same
        pytree of arrays.
        """
        from .tensor import RecurrentTensor

        source = capture_source()
        if name == STOP:
            raise OutputError(f"the output name {STOP!r}{describe(source)} is reserved")
        if any(out.name == name for out in self._outputs) or name in self._trees:
            raise OutputError(f"two outputs are named {name!r}{describe(source)}")
        if not isinstance(value, RecurrentTensor):
            paths, treedef = jax.tree_util.tree_flatten_with_path(
                value, is_leaf=lambda x: isinstance(x, RecurrentTensor)
            )
            if not (len(paths) == 1 and not paths[0][0]):  # a pytree, not a single leaf
                names = []
                for path, leaf in paths:
                    names.append(name + jax.tree_util.keystr(path))
                    self._output_leaf(names[-1], leaf, source)
                self._trees[name] = (treedef, tuple(names))
                return
        self._output_leaf(name, value, source)

    def stop_when(self, cond: Any) -> None:
        """End the loop over a dim after the first point where ``cond`` holds.

        ``cond`` is a boolean scalar over exactly one dim, e.g. ``p.stop_when(tj.all(done))``
        with ``done`` over ``t``: the program then runs ``t = 0, 1, ...`` only until ``cond[t]``
        is true (or ``t`` reaches its bound), a data-dependent trip count (``lax.while_loop``
        when compiled). What it guarantees, compiled and interpreted alike:

        - ``n``, the results' ``lengths[T]``, is ``1 +`` the first ``t`` where ``cond`` holds,
          or ``T``. Every op over ``t`` (sinks included) runs inside the one loop over ``t``
          the stop ends, at points ``t < n`` only; ops not over ``t`` run before it (those it
          reads) or after it (those reading it).
        - A point of a computed tensor at ``t >= n`` is never computed and reads as zeros,
          wherever it is read: outputs over ``t`` hold zeros there, ``s[T-1]`` is zeros when
          the loop stopped earlier, ``s[0:T]`` has its rows from ``n`` on zeroed (the same rule
          as padding; inputs read as given). Sinks are not called past the stop.
        - Compiling raises ``UnsupportedError`` when the ops over ``t`` cannot all run in that
          loop: one reads a later point of ``t`` (``x[t+1]``, ``r[t:T]``), or an op not over
          ``t`` reads values over ``t`` and is read by ops over ``t``.
        """
        from .tensor import RecurrentTensor

        source = capture_source()
        if not isinstance(cond, RecurrentTensor) or cond.program is not self:
            raise DefinitionError(
                f"`p.stop_when`{describe(source)} needs a recurrent tensor of this program, "
                f"not {type(cond).__name__}"
            )
        if cond.shape != () or cond.dtype != jax.numpy.bool_ or len(cond.domain) != 1:
            dims = ", ".join(d.name for d in cond.domain)
            raise DefinitionError(
                f"`p.stop_when`{describe(source)} needs a boolean scalar over one dim, not a "
                f"{cond.dtype} of shape {cond.shape} over ({dims}); reduce it, e.g. "
                "`p.stop_when(tj.all(done))`."
            )
        if any(out.name == STOP for out in self._outputs):
            raise DefinitionError(f"`p.stop_when`{describe(source)}: a program stops once only")
        self._output_leaf(STOP, cond, source)

    def _output_leaf(self, name: str, value: Any, source: SourceInfo) -> None:
        from .tensor import RecurrentTensor, as_tensor

        if not isinstance(value, RecurrentTensor):
            value = as_tensor(value, program=self)
        if value.program is not self:
            raise ForeignSymbolError(
                f"output {name!r}{describe(source)} is a tensor of another program"
            )
        edge = dataclasses.replace(value.edge(), source=source)
        spec = TensorSpec(value.shape, value.dtype)
        self._outputs.append(Output(name=name, domain=value.domain, edge=edge, spec=spec))

    # -- freezing --------------------------------------------------------------------------------
    def to_ir(self) -> IRProgram:
        """The immutable, verified dependence graph of what has been recorded so far."""
        ops = tuple(
            op.replace(inputs=tuple(self._branches[op.id])) if op.kind == "merge" else op
            for op in self._ops
        )
        if not self._outputs:
            raise OutputError(
                f"program {self.name!r} has no outputs; name at least one with "
                "`p.output(name, tensor)`."
            )
        trees = tuple((name, tree, leaves) for name, (tree, leaves) in self._trees.items())
        return verify(IRProgram(tuple(self._dims), ops, tuple(self._outputs), trees))

    def compile(
        self,
        bounds: Mapping[Any, int],
        *,
        donate_inputs: bool = False,
        pipeline: Any = None,
        unroll: Sequence[Any] = (),
        memory_budget: int | None = None,
        mesh: Any = None,
        shard: Mapping[Any, str] | None = None,
        specs: Mapping[str, Any] | None = None,
    ) -> Any:
        """Schedule the program and lower it to one pure JAX function (a ``Compiled``).

        Example: ``f = p.compile(bounds={T: 100}); out = f(x0=x0)`` gives the outputs of
        ``tj.reference.run(p, bounds={T: 100}, inputs={"x0": x0})``.

        Every buffer the program needs is allocated inside that one function, once. With
        ``donate_inputs`` the input arrays are donated to it as well: XLA may reuse their
        memory for buffers and outputs, and the caller must not use them after the call.

        ``pipeline`` (a ``tj.Pipeline``) chooses the passes run before scheduling; the
        default removes dead ops and copies.

        ``unroll`` names dims (or gives their symbols) whose loops are unrolled when their trip
        count is static: each iteration is traced with its index a constant, so reads of
        per-layer weights ``w[l]`` become static slices (no copy) at the cost of a larger
        program, e.g. ``unroll=("l",)`` for a short loop over layers.

        ``memory_budget`` (bytes of device memory): while the planned peak is over it, the
        largest values stored in full and read after the step that writes them are kept in
        host memory instead (``tj.offload`` and ``tj.keep`` decide per tensor whatever the
        budget); ``f.memory()`` shows the plan. Where the budget is still missed, the program
        is compiled again with its learners streaming behind backward recurrences (one step
        of a rollout at a time rather than all at once; ``tj.Pipeline().streaming_behind()``),
        and the one XLA gives less temporary device memory is kept (both are XLA-compiled
        for that).

        ``mesh`` (a ``jax.sharding.Mesh``) and ``shard`` (dim -> mesh axis, e.g.
        ``{"b": "data"}``) split the points of vectorised dims over the mesh's devices: inputs
        and outputs with such a dim carry that ``NamedSharding``, JAX's SPMD partitioner
        splits the work and inserts the collectives (a mean over ``b`` is an all-reduce).
        A dim the schedule runs as a loop (a recurrence along it) cannot be sharded.
        ``specs`` (input name -> ``PartitionSpec`` of its value at a point) splits inputs'
        own axes, e.g. a weight's columns for tensor parallelism.
        """
        from .._lower.compiled import compile_program  # the back end sits below the front end

        names = {d.name for d in self._dims}
        dims = tuple(d.name if isinstance(d, Symbol) else d for d in unroll)
        unknown = [d for d in dims if d not in names]
        if unknown:
            raise DefinitionError(
                f"`unroll` names {unknown}, which are not dims of program {self.name!r} "
                f"(its dims: {sorted(names)})"
            )
        if memory_budget is not None and (
            isinstance(memory_budget, bool)
            or not isinstance(memory_budget, int)
            or memory_budget < 0
        ):
            raise DefinitionError(
                f"`memory_budget` is a number of bytes (an int >= 0), not {memory_budget!r}"
            )
        return compile_program(
            self.to_ir(),
            bounds,
            donate_inputs=donate_inputs,
            pipeline=pipeline,
            unroll=dims,
            memory_budget=memory_budget,
            mesh=mesh,
            shard=shard,
            specs=specs,
        )

    def __repr__(self) -> str:
        dims = " ".join(d.name for d in self._dims)
        return f"Program({self.name!r}, dims='{dims}', ops={len(self._ops)})"


def active_program(what: str) -> Program:
    """The program of the innermost ``with tj.Program()`` block."""
    program = _ACTIVE.get()
    if program is None:
        raise DefinitionError(
            f"`{what}` needs a program: call it inside `with tj.Program() as p:`."
        )
    return program
