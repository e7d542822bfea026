"""The verifier: named structural checks of an SDG, each raising one TempoError subclass."""

from __future__ import annotations

from collections.abc import Callable

from .errors import BranchMismatchError, ForeignSymbolError, OutputError, VerificationError
from .expr import Symbol, dims_of, format_index
from .program import OP_KINDS, Edge, Op, Program
from .source import describe


def check_op_ids(program: Program) -> None:
    """Op ids are unique and every edge names an existing op and output."""
    ids = [op.id for op in program.ops]
    if len(set(ids)) != len(ids):
        raise VerificationError(f"duplicate op ids in the program: {sorted(ids)}")
    known = set(ids)
    for consumer, edge in _all_edges(program):
        if edge.src not in known:
            raise VerificationError(f"{_where(consumer)} reads op %{edge.src}, which is absent")
        if not 0 <= edge.out < len(program.op(edge.src).outputs):
            raise VerificationError(f"{_where(consumer)} reads a missing output {edge.out}")


def check_op_kinds(program: Program) -> None:
    """Inputs read nothing; apply ops carry a payload; merge ops have one output."""
    for op in program.ops:
        if op.kind not in OP_KINDS:
            raise VerificationError(f"{_where(op)} has unknown kind {op.kind!r}")
        if op.kind == "input" and op.inputs:
            raise VerificationError(f"input {op.name!r} must not read other tensors")
        if op.kind == "apply" and op.payload is None:
            raise VerificationError(f"{_where(op)} is an apply op without a payload")
        if op.kind == "sink" and (op.outputs or len(op.inputs) != 1 or op.payload is None):
            raise VerificationError(f"{_where(op)}: a sink reads one tensor and has no outputs")
        if op.kind == "merge" and len(op.outputs) != 1:
            raise VerificationError(f"{_where(op)}: a defined tensor has exactly one output")


def check_domains(program: Program) -> None:
    """Domains hold distinct dims of this program, in declaration order."""
    order = {dim: k for k, dim in enumerate(program.dims)}
    for op in program.ops:
        for dim in op.domain:
            _check_own_symbol(program, dim, f"the domain of {_where(op)}")
        positions = [order[d] for d in op.domain]
        if positions != sorted(set(positions)):
            raise VerificationError(f"the domain of {_where(op)} is not in declaration order")


def check_edges(program: Program) -> None:
    """Each edge has one index item per producer dim over the consumer's dims and bounds."""
    for consumer, edge in _all_edges(program):
        producer = program.op(edge.src)
        text = f"`{edge.describe(producer.name)}`{describe(edge.source)}"
        if len(edge.index) != len(producer.domain):
            raise VerificationError(
                f"{text} has {len(edge.index)} index items for the {len(producer.domain)} "
                f"domain dims of `{producer.name}`"
            )
        for sym in edge.symbols():
            _check_own_symbol(program, sym, text)
        free = set()
        for item in edge.index:
            free |= dims_of(item)
        free |= dims_of(edge.cond)
        extra = free - set(consumer.domain)
        if extra:
            names = ", ".join(sorted(s.name for s in extra))
            raise VerificationError(
                f"{text} uses dims {names} that the reading op {_where(consumer)} lacks"
            )


def check_branches(program: Program) -> None:
    """Every branch of a defined tensor reads a value of the tensor's rank and dtype."""
    for op in program.ops:
        if op.kind != "merge":
            continue
        spec = op.outputs[0]
        for edge in op.inputs:
            got = program.read_spec(edge)
            if got.dtype != spec.dtype or len(got.shape) != len(spec.shape):
                raise BranchMismatchError(
                    f"the branch `{op.name}[...] = {program.producer_name(edge)}"
                    f"[{format_index(edge.index)}]`{describe(edge.source)} gives {got}, but "
                    f"`{op.name}` holds {spec}."
                )


def check_outputs(program: Program) -> None:
    """Output names are unique and each point's shape depends on bounds only."""
    seen: set[str] = set()
    for out in program.outputs:
        if out.name in seen:
            raise OutputError(f"two outputs are named {out.name!r}; output names must differ")
        seen.add(out.name)
        varying = {s for s in out.spec.symbols() if not s.is_bound}
        if varying:
            raise OutputError(
                f"output {out.name!r}{describe(out.edge.source)} has shape {out.spec}, which "
                f"varies with {', '.join(sorted(s.name for s in varying))}; outputs need one "
                "shape at every point: read a fixed range such as `x[0:T]`."
            )


CHECKS: tuple[Callable[[Program], None], ...] = (
    check_op_ids,
    check_op_kinds,
    check_domains,
    check_edges,
    check_branches,
    check_outputs,
)


def verify(program: Program) -> Program:
    """Run every check; return the program unchanged so it can be chained."""
    for check in CHECKS:
        check(program)
    return program


def _all_edges(program: Program) -> list[tuple[Op, Edge]]:
    pairs = [(op, edge) for op in program.ops for edge in op.inputs]
    pairs += [(out.reader(-1), out.edge) for out in program.outputs]
    return pairs


def _check_own_symbol(program: Program, sym: Symbol, where: str) -> None:
    own = set(program.dims) | set(program.bounds)
    if sym not in own:
        raise ForeignSymbolError(
            f"{where} uses the symbol `{sym.name}`, which belongs to another program; create "
            "symbols with `p.dims(...)` of the program that uses them."
        )


def _where(op: Op) -> str:
    return f"`{op.name}`{describe(op.source)}"
