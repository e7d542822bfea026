"""Where a tensor's stored values live: ``tj.offload`` and ``tj.keep``.

A value a program stores in full (every point of its domain, e.g. a rollout's observations
read by the learner after the acting loop) may be kept in host memory instead of device
memory: written there as it is produced, each read brought back to the device. The compiler
decides this against ``compile(..., memory_budget=bytes)``; these two override it per tensor.

Example::

    obs = tj.offload(env_step(...)[0])   # stored in host memory
    logits = tj.keep(policy(obs))        # never moved off the device
"""

from __future__ import annotations

from .tensor import RecurrentTensor


def offload(x: RecurrentTensor) -> RecurrentTensor:
    """``x``, its stored values placed in host memory (``pinned_host``) whatever the budget.
    Compiling raises a ``TempoError`` if the compiler does not store ``x`` in full."""
    return _mark(x, "offload", "tj.offload")


def keep(x: RecurrentTensor) -> RecurrentTensor:
    """``x``, its stored values kept in device memory whatever the budget."""
    return _mark(x, "keep", "tj.keep")


def _mark(x: RecurrentTensor, memory: str, what: str) -> RecurrentTensor:
    if not isinstance(x, RecurrentTensor):
        raise TypeError(f"{what} takes a recurrent tensor of a program, not {type(x).__name__}")
    program = x.program
    op = program.op(x._m.op)
    program.replace_op(op.replace(memory=memory))
    return x
