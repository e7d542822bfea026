"""Under a device memory budget, which loop nests run as loops rather than all at once.

A nest of independent points computed at once (:mod:`.blocks`) is one fused computation over
all its points: fast, but it holds every point's gathered ranges and temporaries together (a
suffix ``r[t:T]`` read at every ``t`` at once is a ``(T, T, D)`` array). When the planned
device peak (:mod:`.memory_plan`, with transients) stays over ``compile(...,
memory_budget=...)`` after the stored values that pay have moved to host memory, the nests
that run in the peak's step and hold a tenth of the peak or more at once are tried, the
largest first, as plain loops (one point per iteration; a nest inside a refused loop may still
run at once), and the first that lowers the peak by a tenth or more is kept so, until the
budget is met or no nest there does. A loop is slower than the same points at once, so a
smaller saving is not taken. Without a budget, or within it, every nest runs at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._schedule.tree import Exec, Loop, walk
from .blocks import Nest
from .memory_plan import Steps, peak_bytes
from .transients import Transients

# a nest runs as a loop only for a tenth of the peak or more: a loop of points one at a time
# is slower than computing them at once, so a small saving is not worth it
GAIN = 0.1

if TYPE_CHECKING:
    from .buffer_plan import BufferPlan


def fit_nests(plan: BufferPlan, budget: int) -> None:
    """Refuse nests of ``plan`` (``plan.refused``, re-planning what follows from them) while
    that lowers a planned device peak over ``budget`` (module docstring)."""
    peak, step = _peak(plan)
    while peak > budget and step >= 0:
        inside = Steps(plan.tree).nodes[step]
        kept = plan.refused
        found = Transients(plan)
        held = {loop: _at_once(found, n) for loop, n in plan.nests.items() if id(loop) in inside}
        tried = [loop for loop, n in held.items() if n >= peak * GAIN]
        for loop in sorted(tried, key=lambda loop: -held[loop]):
            plan.plan_from_nests(kept | {id(loop)}, True, budget)
            lower, at = _peak(plan)
            if lower <= peak * (1 - GAIN):
                peak, step = lower, at
                break
        else:  # no nest of the peak's step lowers it
            plan.plan_from_nests(kept, True, budget)
            return


def _at_once(found: Transients, nest: Nest) -> int:
    """The bytes ``nest``'s ops hold for all its points at once: their scratch, gathers and
    unkept outputs (:mod:`.transients`), beyond one point's."""
    total = 0
    for ex in nest.execs:
        count = found.at_once.get(id(ex), 1)
        cost = found.cost(ex.op)
        gathers = cost.gathered * (1 if id(ex) in found.shared else count)
        total += (cost.scratch + found.output_bytes(ex.op)) * count + gathers
    return total


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
