"""Values kept in host memory: ``tj.offload``, ``tj.keep`` and ``compile(memory_budget=...)``.

Oracles: the same program compiled with every value on the device, and the reference
interpreter (outputs and ``jax.grad`` equal); the jaxpr (the placements the plan lists are
there: ``device_put`` to host memory where a buffer is written, back to the device where it
is read); the memory report (a value moved to the host leaves the device peak).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tests.lower.helpers import decaying

STEPS = 12
HOST = "pinned_host"
# a budget of 0 is not met by most programs here: its warning is tested on its own
pytestmark = pytest.mark.filterwarnings("ignore::tempo_jax.MemoryBudgetWarning")


def _two_phases(
    mark_x: Callable[[Any], Any] | None = None, mark_y: Callable[[Any], Any] | None = None
) -> tj.Program:
    """``x`` (width 6) and then ``y`` (width 4), each stored whole for a range read after its
    loop; ``x`` is also an output."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        a = tj.input("a", (6,), jnp.float32, domain=(t,))
        b = tj.input("b", (4,), jnp.float32, domain=(t,))
        x = tj.placeholder((6,), jnp.float32, domain=(t,))
        x[0] = tj.zeros((6,), jnp.float32)
        x[t + 1] = x[t] * 0.5 + a[t]
        first = tj.lift(lambda v: v.sum(), name="first")(tj.tanh(x[t])[0 : t.bound])
        y = tj.placeholder((4,), jnp.float32, domain=(t,))
        y[0] = tj.zeros((4,), jnp.float32) + first
        y[t + 1] = y[t] * 0.25 + b[t]
        for value, mark in ((x, mark_x), (y, mark_y)):
            if mark is not None:
                mark(value)
        p.output("total", tj.lift(lambda v: v.sum(0), name="second")(tj.sin(y[t])[0 : t.bound]))
        p.output("x", x)
    return p


def _data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a": rng.normal(size=(STEPS, 6)).astype(np.float32),
        "b": rng.normal(size=(STEPS, 4)).astype(np.float32),
    }


def _kinds(compiled: tj.Compiled) -> dict[str, str]:
    return {v.name: v.memory_kind for v in compiled.memory().values if v.kind == "full"}


def test_an_offloaded_value_lives_in_host_memory_with_the_same_outputs() -> None:
    data = _data()
    on_device = _two_phases().compile({"T": STEPS})
    swapped = _two_phases(mark_x=tj.offload).compile({"T": STEPS})
    assert _kinds(on_device) == {"x": "device", "y": "device"}
    assert _kinds(swapped) == {"x": "pinned_host", "y": "device"}
    want = tj.reference.run(_two_phases(), {"T": STEPS}, data)
    got = swapped(**data)
    for name in ("total", "x"):
        np.testing.assert_array_equal(got[name], on_device(**data)[name])
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    report, before = swapped.memory(), on_device.memory()
    host = STEPS * 6 * 4
    assert report.host_bytes == host and before.host_bytes == 0
    assert report.device_bytes == before.device_bytes - host
    assert report.peak_device_bytes < before.peak_device_bytes
    assert "pinned_host" in swapped.explain() and "planned host bytes" in swapped.explain()


def test_the_jaxpr_places_writes_in_host_memory_and_reads_back_on_the_device() -> None:
    data = _data()
    text = str(_two_phases(mark_x=tj.offload).compile({"T": STEPS}).jaxpr(**data))
    assert "f32<host>" in text
    assert text.count("MemorySpace.Host") >= 2  # the buffer, and each row written in the loop
    assert text.count("MemorySpace.Device") >= 2  # the range read, and the output
    plain = str(_two_phases().compile({"T": STEPS}).jaxpr(**data))
    assert "MemorySpace" not in plain and "<host>" not in plain


def test_jax_grad_through_a_program_that_swaps() -> None:
    """``jax.grad`` does not pass a value placed in host memory; the compiled program's
    gradient is that of the same program kept on the device."""
    data = _data()
    swapped = _two_phases(mark_x=tj.offload).compile({"T": STEPS})
    on_device = _two_phases().compile({"T": STEPS})

    def loss(compiled: tj.Compiled) -> Callable[[Any], Any]:
        return lambda a: compiled(a=a, b=data["b"])["total"].sum()

    np.testing.assert_array_equal(
        jax.grad(loss(swapped))(data["a"]), jax.grad(loss(on_device))(data["a"])
    )


def test_a_budget_moves_the_largest_value_that_pays_first() -> None:
    whole = _two_phases().compile({"T": STEPS}).memory().peak_device_bytes
    assert _kinds(_two_phases().compile({"T": STEPS}, memory_budget=whole)) == {
        "x": "device",
        "y": "device",
    }
    one = _two_phases().compile({"T": STEPS}, memory_budget=whole - 1)
    assert _kinds(one) == {"x": "pinned_host", "y": "device"}  # x is the larger
    assert one.memory().peak_device_bytes < whole
    both = _two_phases().compile({"T": STEPS}, memory_budget=0)
    # the peak is then x brought back whole as an output at the end, where y is not live:
    # moving y would not lower it, so y stays on the device
    assert _kinds(both) == {"x": "pinned_host", "y": "device"}
    assert both.memory().peak_device_bytes == one.memory().peak_device_bytes == STEPS * 6 * 4 + 16
    data = _data()
    np.testing.assert_array_equal(
        both(**data)["total"], _two_phases().compile({"T": STEPS})(**data)["total"]
    )


def test_keep_holds_a_value_on_the_device_whatever_the_budget() -> None:
    kept = _two_phases(mark_x=tj.keep).compile({"T": STEPS}, memory_budget=0)
    assert _kinds(kept) == {"x": "device", "y": "pinned_host"}


def test_a_value_used_within_its_step_is_not_moved() -> None:
    """A value written and read in the same loop step does not pay: a budget leaves it."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        a = tj.input("a", (3,), jnp.float32, domain=(t,))
        p.output("x", decaying(a, 3, 0.5))
    compiled = p.compile({"T": STEPS}, memory_budget=0)
    assert compiled.memory().host_bytes == 0


def test_offloading_a_value_not_stored_in_full_is_an_error() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        a = tj.input("a", (3,), jnp.float32, domain=(t,))
        h = tj.offload(tj.tanh(a[t]))  # read at its own point only: never stored
        p.output("y", h * 2)
    with pytest.raises(tj.TempoError, match=r"tj.offload\(`tanh`.*only values stored in full"):
        p.compile({"T": STEPS})


def test_a_range_read_in_query_blocks_from_host_memory() -> None:
    """Keys computed per point, kept in host memory, read in tiles by attention in blocks."""
    width, steps = 8, 40

    def build(mark: Callable[[Any], Any] | None) -> tj.Program:
        with tj.Program() as p:
            b, t = p.dims("b t")
            q, k = (tj.input(n, (width,), jnp.float32, domain=(b, t)) for n in "qk")
            keys = tj.tanh(k[b, t]) * 2
            if mark is not None:
                mark(keys)
            scores = keys[b, 0 : t + 1] @ q[b, t]
            p.output("o", tj.softmax(scores) @ keys[b, 0 : t + 1])
        return p

    rng = np.random.default_rng(1)
    data = {n: rng.normal(size=(2, steps, width)).astype(np.float32) for n in "qk"}
    bounds = {"B": 2, "T": steps}
    swapped = build(tj.offload).compile(bounds)
    assert swapped.memory().host_bytes > 0
    np.testing.assert_allclose(
        swapped(**data)["o"], build(None).compile(bounds)(**data)["o"], rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("budget", [-1, 1.5, True, "1GB"])
def test_a_budget_is_a_number_of_bytes(budget: Any) -> None:
    with pytest.raises(tj.DefinitionError, match="memory_budget"):
        _two_phases().compile({"T": STEPS}, memory_budget=budget)


def _rollout(mark: Callable[[Any], Any] | None = None) -> tj.Program:
    """A loop over ``t`` keeps ``x`` (width 64) whole for a learner that reads every step of
    it at once after the loop (``x[0:T]``), as a vectorised learner reads a rollout, and
    makes an array as large in its own computation (a running sum over the steps): its step
    holds the rollout and that array, the program's peak."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        a = tj.input("a", (64,), jnp.float32, domain=(t,))
        x = tj.placeholder((64,), jnp.float32, domain=(t,))
        x[0] = tj.zeros((64,), jnp.float32)
        x[t + 1] = tj.tanh(x[t] + a[t])
        if mark is not None:
            mark(x)
        learner = tj.lift(lambda v: jnp.cumsum(v * v, axis=0)[-1], name="learner")
        p.output("loss", learner(x[0 : t.bound]))
    return p


def test_a_value_read_whole_where_the_peak_is_stays_on_the_device() -> None:
    """Moving a rollout that the learner reads whole would free its bytes during acting but
    not at the learner's step, where the peak is: a budget leaves it on the device. Moved by
    ``tj.offload``, the plan counts it back on the device at the learner's step; the planned
    peak is then the same."""
    data = {"a": np.random.default_rng(2).normal(size=(STEPS, 64)).astype(np.float32)}
    plain = _rollout().compile({"T": STEPS})
    budget = _rollout().compile({"T": STEPS}, memory_budget=0)
    assert budget.memory().host_bytes == 0
    forced = _rollout(tj.offload).compile({"T": STEPS})
    whole = STEPS * 64 * 4
    assert forced.memory().host_bytes == whole
    assert forced.memory().peak_device_bytes >= whole
    assert forced.memory().peak_device_bytes == plain.memory().peak_device_bytes
    want = plain(**data)["loss"]
    np.testing.assert_array_equal(forced(**data)["loss"], want)
    np.testing.assert_array_equal(budget(**data)["loss"], want)


def test_a_budget_the_plan_cannot_meet_is_a_warning_naming_the_peak() -> None:
    """The rollout read whole at the learner's step keeps the peak over a budget of 0: the
    warning names the budget, the peak and ``x`` held there; a budget met says nothing."""
    with pytest.warns(tj.MemoryBudgetWarning) as caught:
        compiled = _rollout().compile({"T": STEPS}, memory_budget=0)
    (message,) = [str(w.message) for w in caught]
    peak = compiled.memory().peak_device_bytes
    assert f"memory_budget=0 bytes is not met: the planned device peak is {peak} bytes" in message
    assert "`x` 0.00 MiB (on the device) at test_offload.py:" in message
    assert "read it in a loop over its steps instead, or raise the budget" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error", tj.MemoryBudgetWarning)
        _rollout().compile({"T": STEPS}, memory_budget=peak)


def _rl(
    cnn: bool, obs: tuple[int, ...], envs: int = 4, steps: int = 8, algo: str = "reinforce"
) -> tuple[Any, Any]:
    """An RL program (Monte-Carlo REINFORCE by default; PPO or A2C, both with GAE) on the
    trivial environment, compiled plainly and under a budget of 0."""
    from tempo_jax.algorithms import a2c, ppo, reinforce
    from tempo_jax.algorithms.config import RLConfig

    config = RLConfig(
        algo=algo,
        env="trivial",
        env_options={"obs_shape": obs, "episode": steps},
        iterations=2,
        envs=envs,
        steps=steps,
        width=8,
        layers=1,
        cnn=cnn,
    )
    built = {"reinforce": reinforce, "ppo": ppo, "a2c": a2c}[algo].build(config)
    return ppo.compile_run(built, config), ppo.compile_run(built, config, memory_budget=0)


def _obs(compiled: tj.Compiled) -> list[str]:
    return [v.memory_kind for v in compiled.memory().values if v.name == "obs" and v.kind != "ring"]


def _temp(compiled: Any) -> int:
    return compiled.lower().compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("algo", ["reinforce", "ppo", "a2c"])
def test_under_a_budget_the_learner_streams_the_rollout_from_host_memory(algo: str) -> None:
    """Monte-Carlo REINFORCE (PPO, A2C: GAE) with a CNN on image observations: vectorised,
    the learner takes every step of the rollout at once, with its activations for every
    step. Under a budget
    the program is compiled again with the learner streaming behind the returns (one step of
    the rollout at a time, its gradient a running sum) and kept, as XLA gives it less
    temporary memory: the observations move to host memory and the run equals the plain one
    (to rounding: the gradient is summed step by step)."""
    plain, swapped = _rl(cnn=True, obs=(3, 16, 16), envs=8, steps=16, algo=algo)
    assert _obs(plain) == ["device"] and _obs(swapped) == [HOST]
    assert ("vjp[policy]", "accumulated") in {(v.name, v.kind) for v in swapped.memory().values}
    assert _temp(swapped) < 0.5 * _temp(plain)
    got, want = swapped(), plain()
    for name in ("loss", "mean_return", "episodes"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5)


def test_a_budget_keeps_the_vectorised_learner_where_streaming_does_not_pay() -> None:
    """With an MLP torso, streaming the learner saves no temporary memory here (on CPU, where
    host memory is the device's, XLA counts the observations either way): the budget keeps
    the vectorised program, the same bit for bit."""
    plain, swapped = _rl(cnn=False, obs=(3, 16, 16), envs=16, steps=32)
    assert _obs(swapped) == ["device"]
    assert swapped.compiled.schedule == plain.compiled.schedule
    got, want = swapped(), plain()
    for name in ("loss", "mean_return", "episodes"):
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize("mark", [tj.offload, tj.keep])
def test_only_a_recurrent_tensor_is_placed(mark: Callable[[Any], Any]) -> None:
    with pytest.raises(TypeError, match="recurrent tensor"):
        mark(np.ones(3))


# -- prefetching: reads from host memory in a loop, one iteration ahead ------------------------


def _backward(mark: Callable[[Any], Any] | None = None) -> tj.Program:
    """``x`` filled by a loop over ``t``, then read one step at a time by ``back`` in the
    reversed loop of a backward recurrence ``g``."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        a = tj.input("a", (6,), jnp.float32, domain=(t,))
        x = tj.placeholder((6,), jnp.float32, domain=(t,))
        x[0] = tj.zeros((6,), jnp.float32)
        x[t + 1] = tj.tanh(x[t]) + a[t]
        if mark is not None:
            mark(x)
        g = tj.placeholder((6,), jnp.float32, domain=(t,))
        g[t.bound - 1] = x[t.bound - 1]
        g[True] = tj.lift(lambda gn, xv: gn * 0.9 + jnp.sin(xv), name="back")(g[t + 1], x[t])
        p.output("g", g)
    return p


def _loop_bodies(jaxpr: Any) -> list[Any]:
    """The bodies of every ``scan`` and ``while`` loop in ``jaxpr``, nested ones too."""
    found = []
    for eqn in jaxpr.eqns:
        for name, param in eqn.params.items():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if not hasattr(inner, "eqns"):
                    continue
                if (eqn.primitive.name, name) in (("scan", "jaxpr"), ("while", "body_jaxpr")):
                    found.append(inner)
                found += _loop_bodies(inner)
    return found


def test_a_read_from_host_memory_in_a_loop_is_fetched_one_iteration_ahead() -> None:
    """The plan lists the read of ``x`` by ``back``; in the loop's body, ``sin`` takes the
    value carried in from the previous iteration, and the body fetches the next one (a
    ``device_put`` to the device) for the next iteration. Outputs equal the plain run's and
    the reference interpreter's."""
    data = {"a": np.random.default_rng(3).normal(size=(STEPS, 6)).astype(np.float32)}
    swapped = _backward(tj.offload).compile({"T": STEPS})
    (line,) = swapped.memory().prefetches
    assert line.startswith("`x` at test_offload.py:") and "read by `back`" in line
    assert "prefetch: `x`" in swapped.explain()
    assert _backward().compile({"T": STEPS}).memory().prefetches == ()
    (loop,) = [
        b
        for b in _loop_bodies(swapped.jaxpr(**data).jaxpr)
        if any(e.primitive.name == "sin" for e in b.eqns)
    ]
    (sin,) = [e for e in loop.eqns if e.primitive.name == "sin"]
    assert sin.invars[0] in loop.invars  # carried in: fetched at the previous iteration
    puts = [e for e in loop.eqns if e.primitive.name == "device_put"]
    assert any("Device" in str(e.params["devices"]) for e in puts)  # the next iteration's
    want = _backward().compile({"T": STEPS})(**data)["g"]
    np.testing.assert_array_equal(swapped(**data)["g"], want)
    ref = tj.reference.run(_backward(), {"T": STEPS}, data)["g"]
    np.testing.assert_allclose(want, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 5, 16])
def test_prefetching_under_a_dynamic_bound_equals_the_plain_run(steps: int) -> None:
    """A loop of a length known at run time (at most 16 steps): the first fetch, the carried
    ones and the clamped last one give the plain run's values at every length."""
    data = {"a": np.random.default_rng(4).normal(size=(16, 6)).astype(np.float32)}
    swapped = _backward(tj.offload).compile({"T": tj.dynamic(max=16)})
    plain = _backward().compile({"T": tj.dynamic(max=16)})
    assert len(swapped.memory().prefetches) == 1
    got, want = swapped(a=data["a"], T=steps)["g"], plain(a=data["a"], T=steps)["g"]
    np.testing.assert_array_equal(got, want)


def test_a_prefetched_read_holds_two_rows_on_the_device() -> None:
    """The plan counts a read made one iteration ahead twice: at the reversed loop's step,
    ``x`` (in host memory) holds its current row and the next one on the device."""
    from tempo_jax._lower.memory_plan import Steps, held_bytes

    swapped = _backward(tj.offload).compile({"T": STEPS})
    plan = swapped._buffer_plan()
    steps = Steps(plan.tree)
    (held,) = [h for v, h in held_bytes(plan, plan.stored_values(), (), steps) if v.name == "x"]
    assert max(held) == 2 * 6 * 4  # two rows of 6 float32


def test_the_budget_planner_counts_the_reads_it_would_prefetch() -> None:
    """Trying ``x`` in host memory on the plain program's plan (no memory kinds yet, as the
    budget planner does), its read by ``back`` counts the two rows a prefetch would hold."""
    from tempo_jax._lower.memory_plan import Steps, held_bytes

    plan = _backward().compile({"T": STEPS})._buffer_plan()
    assert not plan.memory_kinds and not plan.prefetches
    steps = Steps(plan.tree)
    keys = [key for key, kind, _ in plan.value_keys() if kind == "buffer"]
    (key,) = [k for k in keys if plan.program.op(k[0]).name == "x"]
    (held,) = [h for v, h in held_bytes(plan, plan.stored_values(), {key}, steps) if v.name == "x"]
    assert max(held) == 2 * 6 * 4  # two rows of 6 float32, not one
