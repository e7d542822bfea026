"""Exceptions raised by ``tj.sink`` functions in compiled code reach the caller as themselves.

A sink runs as an ordered ``jax.debug.callback``. An exception its function raises there stops
the computation, but JAX reports it to the caller as ``JaxRuntimeError: INTERNAL`` with the
traceback flattened to text. :class:`SinkErrors` (one per compiled program) keeps the
exception object raised on the host, with a note naming the sink's source line and point, and
:meth:`SinkErrors.run` raises that object from the compiled call instead: same type, its own
traceback. The reference interpreter calls the function directly and adds the same note.

A call of a program with sinks returns once its computation (every sink call included) has
finished, so that a sink's exception is raised by the call on every backend. Under a caller's
own ``jax.jit`` around the compiled function, the computation runs after the call has
returned, so the caller sees JAX's error (whose text holds the same note).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._ir.expr import Expr, Symbol
from .._ir.program import Op, Program, sink_note


class SinkErrors:
    """The exception a sink raised during the current compiled call, to raise it from there."""

    def __init__(self, program: Program, ordered: bool = True) -> None:
        self.has_sinks = any(op.kind == "sink" for op in program.ops)
        self._raised: list[Exception] = []
        # ordered callbacks (an effect token through the program) run on one device only: on
        # a mesh, sinks are unordered callbacks, called in the order of their loop's steps
        self.ordered = ordered

    def call(self, op: Op, fn: Callable[..., Any], value: Any, point: dict[str, int]) -> None:
        """``fn(value, point)`` on the host: an exception is noted, kept and raised on. On a
        mesh (unordered callbacks, whose failure JAX keeps in its runtime tokens for good) it
        is kept only, the calls after it are skipped, and :meth:`run` raises it once the
        computation has finished."""
        if not self.ordered and self._raised:
            return
        try:
            fn(value, point)
        except Exception as exc:
            exc.add_note(sink_note(op, point))
            self._raised.append(exc)
            if self.ordered:
                raise

    def send(self, op: Op, shape: tuple[Any, ...], env: Mapping[Symbol, Any], value: Any) -> None:
        """Call sink ``op``'s function on the host with ``value`` (its rows past the sizes of
        ``shape`` at the point of ``env`` cut off) and the point, from compiled code."""
        assert op.payload is not None
        fn, names = op.payload.fn, [d.name for d in op.domain]
        sizes = [
            jnp.asarray(d.evaluate(env) if isinstance(d, Expr) else d, jnp.int32) for d in shape
        ]

        def host(v: Any, sizes: Any, *point: Any) -> None:
            valid = np.asarray(v)[tuple(slice(0, int(n)) for n in sizes)]  # padding cut off
            at = {n: int(p) for n, p in zip(names, point, strict=True)}
            self.call(op, fn, valid, at)  # the user's exception, kept for the caller

        jax.debug.callback(host, value, sizes, *(env[d] for d in op.domain), ordered=self.ordered)

    def run(self, jitted: Callable[..., Any], *args: Any) -> Any:
        """``jitted(*args)``, finished when there are sinks; a sink's exception is raised as
        itself rather than as JAX's runtime error."""
        self._raised.clear()
        try:
            result = jitted(*args)
            if self.has_sinks:
                jax.block_until_ready(result)
                if not self.ordered:
                    jax.effects_barrier()  # every sink call has run
        except jax.errors.JaxRuntimeError:
            if not self._raised:
                raise
        if self._raised:  # ordered: the run stopped there; on a mesh: it finished
            raised = self._raised[0]
            self._raised.clear()
            raise raised from None
        return result
