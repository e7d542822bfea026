"""Recurrent tensors (RTs) and the recording of point-wise JAX functions as ops.

An RT is a symbolic value at one point of its domain: the output ``out`` of op ``op``
read at ``index`` (``None`` means at the op's own point). RTs are pytrees with no leaves;
all of their metadata is static.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._ir.errors import ForeignSymbolError, ShapeError, TempoError
from .._ir.expr import Expr, IndexItem, Symbol, dims_of, format_index, symbols_of
from .._ir.program import Dim, Edge, Payload, TensorSpec, static_dim
from .._ir.source import SourceInfo, capture_source, describe
from .program import Program, active_program


@dataclasses.dataclass(frozen=True)
class TensorMeta:
    """The static description of an RT (its pytree auxiliary data)."""

    program: Program
    op: int
    out: int
    index: tuple[IndexItem, ...] | None
    domain: tuple[Symbol, ...]
    shape: tuple[Dim, ...]
    dtype: np.dtype
    source: SourceInfo


class RecurrentTensor:
    """A tensor over a symbolic domain, written for one point of it.

    Unindexed use means "at the current point"; ``x[t - 1]``, ``x[0:t + 1]`` read other
    points (see INDEXING). Arithmetic, comparisons, ``@`` and methods mirror JAX arrays.
    """

    __slots__ = ("_m",)
    _tempo_tensor = True  # tells index expressions to defer to our reflected operators
    __array_priority__ = 1000  # numpy defers to us too

    def __init__(self, meta: TensorMeta) -> None:
        self._m = meta

    # -- metadata ------------------------------------------------------------------------------
    @property
    def program(self) -> Program:
        return self._m.program

    @property
    def domain(self) -> tuple[Symbol, ...]:
        """The dims this value varies over, in declaration order."""
        return self._m.domain

    @property
    def shape(self) -> tuple[Dim, ...]:
        """The spatial shape of one point; sizes may be symbolic (``t + 1``)."""
        return self._m.shape

    @property
    def dtype(self) -> np.dtype:
        return self._m.dtype

    @property
    def ndim(self) -> int:
        return len(self._m.shape)

    @property
    def source(self) -> SourceInfo:
        return self._m.source

    @property
    def name(self) -> str:
        """The producing tensor's name, with the index when this RT reads other points."""
        op = self.program.op(self._m.op)
        base = op.name if len(op.outputs) == 1 else f"{op.name}.{self._m.out}"
        return base if self._m.index is None else f"{base}[{format_index(self._m.index)}]"

    @property
    def is_view(self) -> bool:
        """Whether this RT reads its producer at another index than the producer's own point."""
        return self._m.index is not None

    def edge(self) -> Edge:
        """The SDG edge that reads this RT from a consumer at the same point."""
        op = self.program.op(self._m.op)
        index = op.domain if self._m.index is None else self._m.index
        return Edge(self._m.op, self._m.out, tuple(index), source=self._m.source)

    def __repr__(self) -> str:
        dom = ", ".join(s.name for s in self.domain)
        return f"RecurrentTensor({self.name}: {TensorSpec(self.shape, self.dtype)} over ({dom}))"

    def __bool__(self) -> bool:
        raise TempoError(
            f"`{self.name}`{describe(self.source)} is symbolic and has no truth value in Python; "
            "use `tj.where(cond, a, b)` for data-dependent choices."
        )

    def __iter__(self) -> Any:
        raise TempoError(f"`{self.name}` is symbolic; index it instead of iterating over it")

    __hash__ = None  # type: ignore[assignment]  # `==` is element-wise, as on JAX arrays

    # -- indexing and definitions ------------------------------------------------------------
    def __getitem__(self, key: Any) -> RecurrentTensor:
        from .indexing import index_tensor

        return index_tensor(self, key, capture_source())

    def __setitem__(self, key: Any, value: Any) -> None:
        from .indexing import define_branch

        define_branch(self, key, value, capture_source())

    # -- arithmetic (mirrors JAX arrays) -------------------------------------------------------
    def __add__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.add, self, o)

    def __radd__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.add, o, self)

    def __sub__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.subtract, self, o)

    def __rsub__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.subtract, o, self)

    def __mul__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.multiply, self, o)

    def __rmul__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.multiply, o, self)

    def __truediv__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.true_divide, self, o)

    def __rtruediv__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.true_divide, o, self)

    def __floordiv__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.floor_divide, self, o)

    def __rfloordiv__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.floor_divide, o, self)

    def __mod__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.mod, self, o)

    def __rmod__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.mod, o, self)

    def __pow__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.power, self, o)

    def __rpow__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.power, o, self)

    def __matmul__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.matmul, self, o)

    def __rmatmul__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.matmul, o, self)

    def __neg__(self) -> RecurrentTensor:
        return apply(jnp.negative, self)

    def __pos__(self) -> RecurrentTensor:
        return self

    def __abs__(self) -> RecurrentTensor:
        return apply(jnp.abs, self)

    def __invert__(self) -> RecurrentTensor:
        return apply(jnp.invert, self)

    def __and__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.bitwise_and, self, o)

    def __rand__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.bitwise_and, o, self)

    def __or__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.bitwise_or, self, o)

    def __ror__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.bitwise_or, o, self)

    def __xor__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.bitwise_xor, self, o)

    def __rxor__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.bitwise_xor, o, self)

    def __lshift__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.left_shift, self, o)

    def __rlshift__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.left_shift, o, self)

    def __rshift__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.right_shift, self, o)

    def __rrshift__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.right_shift, o, self)

    def __divmod__(self, o: Any) -> tuple[RecurrentTensor, RecurrentTensor]:
        return apply(jnp.divmod, self, o)

    def __rdivmod__(self, o: Any) -> tuple[RecurrentTensor, RecurrentTensor]:
        return apply(jnp.divmod, o, self)

    def __lt__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.less, self, o)

    def __le__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.less_equal, self, o)

    def __gt__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.greater, self, o)

    def __ge__(self, o: Any) -> RecurrentTensor:
        return apply(jnp.greater_equal, self, o)

    def __eq__(self, o: Any) -> RecurrentTensor:  # type: ignore[override]
        return apply(jnp.equal, self, o)

    def __ne__(self, o: Any) -> RecurrentTensor:  # type: ignore[override]
        return apply(jnp.not_equal, self, o)

    # -- methods (mirror jax.Array) ------------------------------------------------------------
    def sum(self, axis: Any = None, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.sum, self, axis=axis, **kwargs)

    def mean(self, axis: Any = None, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.mean, self, axis=axis, **kwargs)

    def max(self, axis: Any = None, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.max, self, axis=axis, **kwargs)

    def min(self, axis: Any = None, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.min, self, axis=axis, **kwargs)

    def prod(self, axis: Any = None, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.prod, self, axis=axis, **kwargs)

    def std(self, axis: Any = None, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.std, self, axis=axis, **kwargs)

    def var(self, axis: Any = None, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.var, self, axis=axis, **kwargs)

    def argmax(self, axis: Any = None, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.argmax, self, axis=axis, **kwargs)

    def argmin(self, axis: Any = None, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.argmin, self, axis=axis, **kwargs)

    def any(self, axis: Any = None, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.any, self, axis=axis, **kwargs)

    def all(self, axis: Any = None, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.all, self, axis=axis, **kwargs)

    def cumsum(self, axis: Any = None, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.cumsum, self, axis=axis, **kwargs)

    def cumprod(self, axis: Any = None, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.cumprod, self, axis=axis, **kwargs)

    def sort(self, axis: int | None = -1, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.sort, self, axis=axis, **kwargs)

    def argsort(self, axis: int | None = -1, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.argsort, self, axis=axis, **kwargs)

    def dot(self, other: Any, **kwargs: Any) -> RecurrentTensor:
        return apply(jnp.dot, self, other, **kwargs)

    @property
    def size(self) -> Dim:
        """The number of elements of one point (symbolic when a size is)."""
        total: Dim = 1
        for d in self.shape:
            total = total * d
        return static_dim(total) if isinstance(total, Expr) else total

    def reshape(self, *shape: Any) -> RecurrentTensor:
        target = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple | list) else shape
        return apply(jnp.reshape, self, tuple(target))

    def transpose(self, *axes: Any) -> RecurrentTensor:
        if len(axes) == 1 and isinstance(axes[0], tuple | list):
            axes = tuple(axes[0])
        return apply(jnp.transpose, self, axes or None)

    @property
    def T(self) -> RecurrentTensor:
        return apply(jnp.transpose, self)

    @property
    def mT(self) -> RecurrentTensor:
        return apply(jnp.matrix_transpose, self)

    def swapaxes(self, axis1: int, axis2: int) -> RecurrentTensor:
        return apply(jnp.swapaxes, self, axis1, axis2)

    def squeeze(self, axis: Any = None) -> RecurrentTensor:
        return apply(jnp.squeeze, self, axis)

    def flatten(self) -> RecurrentTensor:
        return apply(jnp.ravel, self)

    def ravel(self) -> RecurrentTensor:
        return apply(jnp.ravel, self)

    def astype(self, dtype: Any) -> RecurrentTensor:
        return apply(lambda v: v.astype(dtype), self, name=f"astype[{np.dtype(dtype).name}]")

    def clip(self, min: Any = None, max: Any = None) -> RecurrentTensor:
        return apply(jnp.clip, self, min, max)

    def round(self, decimals: int = 0) -> RecurrentTensor:
        return apply(jnp.round, self, decimals)

    def take(self, indices: Any, axis: int | None = None) -> RecurrentTensor:
        return apply(jnp.take, self, indices, axis=axis)

    def detach(self) -> RecurrentTensor:
        """The same value, through which no gradient flows."""
        from .training import detach

        return detach(self)

    # -- gradients -----------------------------------------------------------------------------
    def backward(self) -> None:
        """Add the gradients of this loss for every ``tj.param`` so far; read them as ``w.grad``.

        The loss must be a float scalar at each point; its points are summed (see ``tj.grad``).
        """
        from .training import backward

        backward(self)

    @property
    def grad(self) -> RecurrentTensor:
        """The gradient ``loss.backward()`` computed for this parameter."""
        from .training import grad_of

        return grad_of(self)


jax.tree_util.register_pytree_node(
    RecurrentTensor, lambda rt: ((), rt._m), lambda meta, _: RecurrentTensor(meta)
)


def _is_symbolic(value: Any) -> bool:
    return isinstance(value, RecurrentTensor | Expr)


# ---------------------------------------------------------------------------------------------
# Recording ops
# ---------------------------------------------------------------------------------------------


def apply(fn: Callable[..., Any], *args: Any, name: str | None = None, **kwargs: Any) -> Any:
    """Apply a JAX function point-wise; RT and index-expression leaves become inputs.

    Returns the function's output pytree with every array replaced by an RT whose domain is
    the union of the inputs' domains. With no symbolic argument, calls ``fn`` directly.
    """
    return record(fn, args, kwargs, name=name or _fn_name(fn), source=capture_source())


def record(
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    name: str,
    source: SourceInfo,
    extra_domain: frozenset[Symbol] = frozenset(),
    uses_point: bool = False,
    program: Program | None = None,
) -> Any:
    """Record ``fn(*args, **kwargs)`` as an ``apply`` op (see :func:`apply`).

    With ``uses_point``, ``fn`` receives the point's ``env`` (dims and bounds) first.
    """
    leaves, treedef = jax.tree_util.tree_flatten((tuple(args), kwargs), is_leaf=_is_symbolic)
    positions = [k for k, leaf in enumerate(leaves) if _is_symbolic(leaf)]
    if not positions and not extra_domain and program is None:
        return fn(*args, **kwargs)
    program = _common_program([leaves[k] for k in positions], program, name, source)
    inputs = [as_tensor(leaves[k], program, source) for k in positions]
    domain = set(extra_domain)
    for rt in inputs:
        domain |= set(rt.domain)
    domain_t = program.sort_domain(domain)

    def call(env: Any, *values: Any) -> Any:
        filled = list(leaves)
        for k, value in zip(positions, values, strict=True):
            filled[k] = value
        call_args, call_kwargs = jax.tree_util.tree_unflatten(treedef, filled)
        return fn(env, *call_args, **call_kwargs) if uses_point else fn(*call_args, **call_kwargs)

    in_specs = [TensorSpec(rt.shape, rt.dtype, _weak(rt)) for rt in inputs]
    out_specs, out_tree = infer_specs(call, in_specs, domain_t, program, name, source)

    def payload_fn(*values: Any) -> tuple[Any, ...]:
        env = values[0] if uses_point else None
        out = call(env, *(values[1:] if uses_point else values))
        return tuple(jax.tree_util.tree_leaves(out))

    payload = Payload(payload_fn, name, uses_point)
    results = _add_apply_op(program, payload, inputs, domain_t, out_specs, source)
    return jax.tree_util.tree_unflatten(out_tree, results)


def _add_apply_op(
    program: Program,
    payload: Payload,
    inputs: list[RecurrentTensor],
    domain: tuple[Symbol, ...],
    out_specs: list[TensorSpec],
    source: SourceInfo,
) -> list[RecurrentTensor]:
    op = program.add_op(
        kind="apply",
        name=payload.name,
        domain=domain,
        inputs=tuple(rt.edge() for rt in inputs),
        outputs=tuple(out_specs),
        payload=payload,
        source=source,
    )
    return [
        RecurrentTensor(TensorMeta(program, op.id, k, None, domain, s.shape, s.dtype, source))
        for k, s in enumerate(out_specs)
    ]


def _weak(rt: RecurrentTensor) -> bool:
    """Whether the producer's output is weakly typed (it then adopts its partner's dtype)."""
    return rt.program.op(rt._m.op).outputs[rt._m.out].weak_type


def _common_program(
    symbolic: list[Any], program: Program | None, name: str, source: SourceInfo
) -> Program:
    programs = [rt.program for rt in symbolic if isinstance(rt, RecurrentTensor)]
    if program is not None:
        programs.append(program)
    if not programs:
        programs.append(active_program(name))
    first = programs[0]
    if any(p is not first for p in programs):
        raise ForeignSymbolError(
            f"`{name}`{describe(source)} mixes tensors of different programs; each program's "
            "tensors can only be used inside it."
        )
    for expr in symbolic:
        if isinstance(expr, Expr):
            for sym in symbols_of(expr):
                first.check_symbol(sym, f"`{name}`", source)
    return first


def as_tensor(
    value: Any, program: Program | None = None, source: SourceInfo | None = None
) -> RecurrentTensor:
    """An RT for ``value``: RTs pass through; index expressions and constants are recorded."""
    if isinstance(value, RecurrentTensor):
        return value
    source = source or capture_source()
    program = program or active_program("tj.const")
    if isinstance(value, Expr):
        return symbol_value(value, program, source)
    array = jnp.asarray(value)
    return record(lambda: array, (), {}, name="const", source=source, program=program)


def symbol_value(expr: Expr, program: Program, source: SourceInfo) -> RecurrentTensor:
    """The value of an index expression at each point, as an int32 (or bool) scalar RT."""
    for sym in symbols_of(expr):
        program.check_symbol(sym, f"`{expr}`", source)
    dtype = jnp.bool_ if expr.is_bool else jnp.int32

    def value(env: Any) -> Any:
        return jnp.asarray(expr.evaluate(env), dtype=dtype)

    return record(
        value,
        (),
        {},
        name=f"`{expr}`",
        source=source,
        extra_domain=dims_of(expr),
        uses_point=True,
        program=program,
    )


# ---------------------------------------------------------------------------------------------
# Shape inference with symbolic sizes
# ---------------------------------------------------------------------------------------------

_SENTINELS = ((10007, 13), (20011, 17))  # two probe runs: size of the k-th symbolic dim = a + b*k


def infer_specs(
    call: Callable[..., Any],
    in_specs: list[TensorSpec],
    domain: tuple[Symbol, ...],
    program: Program,
    name: str,
    source: SourceInfo,
) -> tuple[list[TensorSpec], Any]:
    """Output specs of ``call`` by abstract evaluation.

    Symbolic input sizes get distinct probe sizes in two runs; an output size equal to the
    probes of one symbolic size in both runs is that size, one equal in both runs is static.
    """
    symbolic: list[Expr] = []
    for spec in in_specs:
        for d in spec.shape:
            if isinstance(d, Expr) and d not in symbolic:
                symbolic.append(d)
    env = {d: jax.ShapeDtypeStruct((), jnp.int32) for d in domain}
    env.update({d.bound: jax.ShapeDtypeStruct((), jnp.int32) for d in program.declared_dims})
    runs = []
    for base, step in _SENTINELS[: 2 if symbolic else 1]:
        probe = {d: base + step * k for k, d in enumerate(symbolic)}
        out = _probe(call, env, in_specs, probe, name, source)
        runs.append((probe, *jax.tree_util.tree_flatten(out)))
    _, first_leaves, out_tree = runs[0]
    specs = []
    for k, leaf in enumerate(first_leaves):
        dims: list[Dim] = []
        for axis, _size in enumerate(leaf.shape):
            sizes = [run[1][k].shape[axis] for run in runs]
            dims.append(_match_size(sizes, [run[0] for run in runs], symbolic, name, source))
        specs.append(TensorSpec(tuple(dims), leaf.dtype, bool(leaf.weak_type)))
    return specs, out_tree


def _probe(
    call: Callable[..., Any],
    env: dict[Symbol, jax.ShapeDtypeStruct],
    in_specs: list[TensorSpec],
    probe: dict[Expr, int],
    name: str,
    source: SourceInfo,
) -> Any:
    """Abstract evaluation of ``call`` with the symbolic sizes set to ``probe``."""
    structs = [
        jax.ShapeDtypeStruct(
            tuple(probe.get(d, d) for d in s.shape), s.dtype, weak_type=s.weak_type
        )
        for s in in_specs
    ]
    try:
        return jax.eval_shape(
            lambda env_values, *xs: call(dict(zip(env, env_values, strict=True)), *xs),
            tuple(env.values()),
            *structs,
        )
    except TempoError:
        raise
    except Exception as err:
        shapes = ", ".join(str(s) for s in in_specs)
        raise ShapeError(
            f"`{name}`{describe(source)} cannot be applied to inputs {shapes}: "
            f"{type(err).__name__}: {err}"
        ) from err


def _match_size(
    sizes: list[int],
    probes: list[dict[Expr, int]],
    symbolic: list[Expr],
    name: str,
    source: SourceInfo,
) -> Dim:
    if all(s == sizes[0] for s in sizes):
        return int(sizes[0])
    for d in symbolic:
        if all(size == probe[d] for size, probe in zip(sizes, probes, strict=True)):
            return d
    raise ShapeError(
        f"`{name}`{describe(source)} makes an output size from the symbolic sizes "
        f"{', '.join(str(d) for d in symbolic)} that tempo_jax cannot track (only sizes equal "
        "to an input's size are supported); keep symbolic sizes as separate axes."
    )


def _fn_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__
