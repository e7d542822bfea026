"""Streaming: work reading a bounded window ahead of a loop runs inside it, some steps late.

The oracle is the reference interpreter; the structure checked is the recorded streams, the
one loop the schedule runs acting and learning in, the running sum of the per-step gradient
and XLA's temporary memory staying flat as the loop gets longer.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax._ir.expr import Const, Slice
from tempo_jax._schedule.retime import bounded, reach
from tempo_jax._schedule.tree import Exec, Loop, Node, walk

N = 4  # the window: n-step returns r[t : min(t + N, T)]
D = 8


def _learner(batched: bool, window: bool = True, width: int = D) -> tuple[tj.Program, tuple]:
    """A recurrence over ``t`` (acting) per iteration ``i``, and a loss at each step from a
    window of its rewards ahead (``window``; else all rewards to the end, ``r[t:T]``), whose
    mean over the steps trains ``w`` (``batched``: over ``b`` environments too; ``width``:
    the size of ``h``)."""
    D = width
    with tj.Program("stream") as p:
        i, b, t = p.dims("i b t")
        w0 = tj.input("w0", (D, D))
        xs = tj.input("xs", (D,), domain=(b, t))
        w = tj.placeholder((D, D), jnp.float32, domain=(i,), name="w")
        w[0] = w0
        h = tj.placeholder((D,), jnp.float32, domain=(i, b, t), name="h")
        h[i, b, 0] = xs[b, 0]
        h[True] = tj.tanh(h[i, b, t - 1] @ w) + xs[b, t]
        r = (h * h).sum().detach()
        end = tj.min(t + N, t.bound) if window else t.bound
        ret = r[i, b, t:end].sum()
        loss = (h.detach() @ w).sum() * ret
        bs = b.bound if batched else 1
        total = loss[i, 0:bs, 0 : t.bound].mean()
        w[i + 1] = w - 0.01 * tj.grad(total, w)
        p.output("w", w[i.bound - 1])
    return p, (i, b, t)


BEHIND = tj.Pipeline().streaming_behind()  # learners behind a whole-episode read stream too


def _run(
    p: tj.Program,
    dims: tuple,
    steps: int,
    envs: int = 2,
    width: int = D,
    pipeline: tj.Pipeline | None = None,
) -> tuple[tj.Compiled, dict]:
    i, b, t = dims
    bounds = {i.bound: 3, b.bound: envs, t.bound: steps}
    rng = np.random.default_rng(steps)
    inputs = {
        "w0": (np.eye(width) * 0.1).astype(np.float32),
        "xs": rng.normal(size=(envs, steps, width)).astype(np.float32),
    }
    f = p.compile(bounds, pipeline=pipeline)
    want = tj.reference.run(p.to_ir(), bounds, inputs)
    np.testing.assert_allclose(f(**inputs)["w"], want["w"], rtol=1e-5, atol=1e-5)
    return f, inputs


def _loops_over(tree: Node, dim: str) -> list[Loop]:
    return [n for n in walk(tree) if isinstance(n, Loop) and n.dim == dim]


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("steps", [1, 3, 5, 16])
def test_a_window_learner_equals_the_reference(batched: bool, steps: int) -> None:
    p, dims = _learner(batched)
    _run(p, dims, steps)


@pytest.mark.parametrize("batched", [False, True])
def test_the_learner_runs_inside_the_acting_loop_n_minus_1_steps_late(batched: bool) -> None:
    p, dims = _learner(batched)
    f, _ = _run(p, dims, 16)
    names = {op.id: op.name for op in f.program.ops}
    assert f.program.streams  # recorded by vectorize for the scheduler
    (loop,) = [  # one loop over t: acting, and learning
        lp
        for lp in _loops_over(f.tree, "t")
        if "h" in {names[n.op] for n in walk(lp) if isinstance(n, Exec)}
    ]
    body = [n for n in walk(loop) if isinstance(n, Exec)]
    late = {names[ex.op] for ex in body if str(ex.point[-1]) == f"t - {N - 1}"}
    assert "sum" in late and "vjp[matmul]" in late  # the window's sum and the weight gradient
    assert "h" in {names[ex.op] for ex in body if str(ex.point[-1]) == "t"}
    assert str(loop.stop) == f"T + {N - 1}"


def test_the_weight_gradient_is_summed_as_it_is_made() -> None:
    p, dims = _learner(True)
    f, _ = _run(p, dims, 16)
    kinds = {(v.name, v.kind) for v in f.memory().values}
    assert ("vjp[matmul]", "accumulated") in kinds
    biggest = max(f.memory().values, key=lambda v: v.bytes)
    assert biggest.bytes <= 4 * D * D * 2  # nothing per step of the weight's size


def test_temporary_memory_does_not_grow_with_the_loop() -> None:
    p, dims = _learner(True, width=64)
    temp = []
    for steps in (16, 64):
        f, inputs = _run(p, dims, steps, width=64)
        temp.append(f.lower(**inputs).compile().memory_analysis().temp_size_in_bytes)
    assert temp[1] <= 1.1 * temp[0]


def test_a_window_to_the_end_does_not_stream() -> None:
    p, dims = _learner(True, window=False)
    f, _ = _run(p, dims, 8)
    assert not f.program.streams  # needs the whole loop first: vectorised as before
    assert not any(v.kind == "accumulated" for v in f.memory().values)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("steps", [1, 5, 16])
def test_a_whole_episode_learner_streams_behind_when_asked(batched: bool, steps: int) -> None:
    """``vectorize(behind=True)``: the learner reading ``r[t:T]`` stays a loop over ``t``
    after the acting loop (no delay recorded), its weight gradient a running sum."""
    p, dims = _learner(batched, window=False)
    f, _ = _run(p, dims, steps, pipeline=BEHIND)
    assert not f.program.streams  # no delay: nothing for the scheduler to retime
    names = {op.id: op.name for op in f.program.ops}
    looped = [
        {names[n.op] for n in walk(lp) if isinstance(n, Exec)} for lp in _loops_over(f.tree, "t")
    ]
    (acting,) = [ops for ops in looped if "h" in ops]
    (learning,) = [ops for ops in looped if "vjp[matmul]" in ops]
    assert "h" not in learning and "vjp[matmul]" not in acting  # a loop of its own, after
    assert ("vjp[matmul]", "accumulated") in {(v.name, v.kind) for v in f.memory().values}


def test_a_learner_behind_is_vectorised_by_default() -> None:
    p, dims = _learner(True, window=False)
    f, _ = _run(p, dims, 8)
    names = {op.id: op.name for op in f.program.ops}
    in_loops = {
        names[n.op] for lp in _loops_over(f.tree, "t") for n in walk(lp) if isinstance(n, Exec)
    }
    assert "vjp[matmul]" not in in_loops


def test_a_pipeline_streams_behind_once() -> None:
    assert BEHIND is not None and BEHIND.streaming_behind() is None
    assert tj.Pipeline().without("vectorize").streaming_behind() is None


def test_reach_and_bounded_windows() -> None:
    with tj.Program("x") as p:
        (t,) = p.dims("t")
    assert reach(t + 2, t) == 2 and reach(t, t) == 0 and reach(t - 1, t) == -1
    assert reach(Slice(t, tj.min(t + 8, t.bound)), t) == 7
    assert reach(Slice(t, t.bound), t) == float("inf")
    assert reach(t.bound - 1, t) == float("inf")
    assert bounded(Slice(t, tj.min(t + 8, t.bound)).size)
    assert not bounded(Slice(Const(0), t + 1).size)
    assert not bounded(Slice(t, t.bound).size)
