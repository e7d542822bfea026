"""Building the ops a gradient adds: applies, reverse running sums, guarded values, zeros.

:class:`GradOps` adds ops to the program being differentiated, each with the source line of
the ``tj.grad`` call; :mod:`.autodiff` decides which ops to add and builds them through it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np

from .._ir.expr import TRUE, Expr, IndexItem, Symbol, eq
from .._ir.program import Edge, Op, Payload, TensorSpec
from .._ir.simplify import simplify
from .._ir.source import SourceInfo
from .dense_grad import DenseGrad

if TYPE_CHECKING:
    from .._frontend.program import Program as FrontProgram

Key = tuple[int, int]  # (op id, output)


class GradOps:
    """Adds a gradient's ops to ``program``, at the gradient's ``source`` line."""

    def __init__(self, program: FrontProgram, source: SourceInfo) -> None:
        self.program = program
        self.source = source
        self._zeros: dict[TensorSpec, int] = {}  # one zeros op per static spec

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
