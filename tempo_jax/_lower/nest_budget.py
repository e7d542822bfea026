"""Under a device memory budget, which loop nests run as loops rather than all at once.

A nest of independent points computed at once (:mod:`.blocks`) is one fused computation over
all its points: fast, but it holds every point's gathered ranges and temporaries together (a
suffix ``r[t:T]`` read at every ``t`` at once is a ``(T, T, D)`` array). When the planned
device peak (:mod:`.memory_plan`, with transients) stays over ``compile(...,
memory_budget=...)`` after the stored values that pay have moved to host memory, the nests
that run in the peak's step are tried one by one as plain loops (one point per iteration; a
nest inside a refused loop may still run at once), and the first that lowers the peak is
kept so, until the budget is met or no nest there lowers it. Without a budget, or within it,
every nest runs at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._schedule.tree import Exec, Loop, walk
from .memory_plan import Steps, peak_bytes

if TYPE_CHECKING:
    from .buffer_plan import BufferPlan


def fit_nests(plan: BufferPlan, budget: int) -> None:
    """Refuse nests of ``plan`` (``plan.refused``, re-planning what follows from them) while
    that lowers a planned device peak over ``budget`` (module docstring)."""
    peak, step = _peak(plan)
    while peak > budget and step >= 0:
        inside = Steps(plan.tree).nodes[step]
        kept = plan.refused
        for loop in [loop for loop in plan.nests if id(loop) in inside]:
            plan.plan_from_nests(kept | {id(loop)}, True, budget)
            lower, at = _peak(plan)
            if lower < peak:
                peak, step = lower, at
                break
        else:  # no nest of the peak's step lowers it
            plan.plan_from_nests(kept, True, budget)
            return


def _peak(plan: BufferPlan) -> tuple[int, int]:
    """The planned device peak of ``plan`` and its top-level step's index."""
    peak, _, step = peak_bytes(plan, plan.stored_values(), steps=Steps(plan.tree))
    return peak, step


def describe_refused(plan: BufferPlan) -> tuple[str, ...]:
    """A line per nest the budget runs as a loop: its loop and its first op's step."""
    lines = []
    for node in walk(plan.tree):
        if isinstance(node, Loop) and id(node) in plan.refused:
            first = next((n for n in walk(node) if isinstance(n, Exec)), None)
            at = f"S{first.op}" if first is not None else "its body"
            lines.append(
                f"the loop over {node.dim} ({at}) runs one point per iteration, not all at once"
            )
    return tuple(lines)
