"""Dims split over a mesh of 8 virtual CPU devices (``p.compile(mesh=, shard=)``): the same
results as on one device, outputs with the requested ``NamedSharding``, XLA's all-reduce for a
reduction over the sharded dim, and one clear error for each bad request. The programs run in
a process of their own (:mod:`tests.lower.sharded`): the device count is fixed when JAX
starts."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _run(part: str) -> dict:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env = {**os.environ, "XLA_FLAGS": flags.strip()}
    done = subprocess.run(
        [sys.executable, "-m", "tests.lower.sharded", part],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("{")]
    found = json.loads(line)
    assert found["devices"] == 8
    return found


def test_a_recurrence_per_row_split_over_rows_equals_one_device() -> None:
    rows = _run("core")["rows"]
    assert rows["diff"] == {"x": 0.0, "mean": 0.0}
    assert rows["specs"] == {"x": "P('data',)", "mean": "P()"}  # the mean is replicated
    assert rows["all_reduce"]  # the mean over the sharded rows


def test_gradient_steps_on_sharded_rows_equal_one_device() -> None:
    fit = _run("core")["fit"]
    assert fit["diff"]["loss"] <= 1e-6 and fit["diff"]["w"] <= 1e-6
    assert fit["specs"] == {"loss": "P()", "w": "P()"}
    assert fit["all_reduce"]  # the gradient summed over the rows of every device


def test_attention_splits_over_its_batch_dim_but_not_over_its_queries() -> None:
    found = _run("core")["attention"]
    # each device's products over a quarter of the rows: XLA may pick other kernels for
    # those shapes than for the whole batch (2.4e-7 apart on one CPU, equal on another)
    assert found["diff"]["o"] <= 1e-6
    assert found["specs"] == {"o": "P('data',)"}  # the output split as the rows
    assert found["query"].startswith(
        "UnsupportedError: dim 't' cannot be sharded over mesh axis 'data': `matmul` at "
    )
    assert (
        "reads a range growing along 't', so its points run in blocks of queries"
        in (found["query"])
    )
    # each device's lanes read its own rows of q, k and v (the vmap's batch axis), in the
    # exact fallback too (a block whose shared tiles gave a value that is not finite: query
    # by query, the rows at once), so nothing is gathered, and the one all-reduce is the
    # finiteness check's bit
    assert found["gathered"] == []
    assert found["reduced"] == ["pred[]"]


def test_a_loops_masked_tiles_split_over_devices_are_exact_without_a_collective() -> None:
    """Attention over a window in tiles inside a recurrence, its rows split over the devices,
    an inf in every row's values outside the window: equal to the interpreter (finite), and
    no all-reduce (a finiteness check over the split values would be one per tile)."""
    found = _run("core")["window"]
    assert found["finite"] and found["equal"]
    assert found["collectives"] == []
    assert found["split"] == "P(None, 'data')"


def test_random_programs_over_rows_split_equal_one_device() -> None:
    """Chains of recurrences and maps along ``t`` in every row, and a mean over the rows:
    split over the rows, every output equals the one-device run's, the rows' outputs split
    like them."""
    programs = _run("core")["random"]["programs"]
    assert len(programs) == 12
    for program in programs:
        assert 0.0 <= program["worst"] <= 1e-6, program
        rows = {name: spec for name, spec in program["specs"].items() if name != "mean"}
        assert set(rows.values()) == {"P('data',)"} and program["specs"]["mean"] == "P()"


def test_bad_requests_are_one_clear_error_each() -> None:
    errors = _run("core")["errors"]
    loop = errors["loop"]
    assert loop.startswith("UnsupportedError: dim 't' cannot be sharded over mesh axis 'data'")
    assert "reads `x` at t = t - 1, a dependence carried along 't'" in loop
    assert "sharded.py" in loop  # the user's line
    assert errors["uneven"] == (
        "DefinitionError: dim 'b' has 6 points, which mesh axis 'data' cannot split evenly "
        "over its 8 devices (use a multiple of 8)"
    )
    assert errors["axis"] == (
        "DefinitionError: `shard` puts dim 'b' on mesh axis 'x'; the mesh's axes are ['data']"
    )
    assert errors["dim"].startswith("DefinitionError: `shard` names dim 'k', which is not a dim")
    assert errors["no mesh"] == (
        "DefinitionError: `shard` and `specs` split values over a device mesh: pass `mesh=` too"
    )


def test_weights_split_over_a_model_axis_equal_one_device() -> None:
    """Tensor parallelism on a 4 x 2 mesh: rows over ``data``, the first weight's columns and
    the second's rows over ``model``; XLA sums the second product's parts (all-reduce)."""
    tensor = _run("core")["tensor"]
    assert tensor["diff"]["y"] <= 1e-5
    assert tensor["specs"] == {"y": "P('data',)"}
    assert "all-reduce" in tensor["hlo"]
    errors = tensor["errors"]
    assert errors["input"] == (
        "DefinitionError: `specs` names 'w', which is not an input of the program (its "
        "inputs: ['w1', 'w2', 'x'])"
    )
    assert errors["rank"] == "DefinitionError: `specs['w1']` splits 3 axes; `w1` has 2 at a point"
    assert errors["taken"] == (
        "DefinitionError: `specs['x']` uses mesh axis 'data', which a sharded dim of `x`'s "
        "domain already splits"
    )


def test_sinks_on_a_mesh_are_called_in_step_order_and_raise_as_themselves() -> None:
    """On a mesh a sink is an unordered callback (JAX runs ordered ones on one device):
    called once per step, in order, with the values of the one-device run; an exception
    its function raises is raised by the call as itself, with the sink's note."""
    sink = _run("core")["sink"]
    assert sink["calls"]["sharded"] == sink["calls"]["one"]
    assert [i for i, _ in sink["calls"]["one"]] == list(range(6))
    raised = sink["raised"]
    assert raised.startswith("KeyError: 'no such metric' ['raised by the sink `sink fail` at ")
    assert "`tj.sink(acc, fn)`, called for i=2']" in raised and "sharded.py:" in raised


@pytest.mark.slow  # two decoders compiled twice each, one for 8 devices: 30-60 s
def test_decoding_rows_split_over_devices_equals_one_device() -> None:
    """Greedy and ragged sampled decoding with one prompt row per device: the same tokens;
    no collective in a decode step (its masked tiles are computed exactly, not checked for
    finiteness: :class:`tempo_jax._lower.sharding.ShardPlan`); the only collectives are the
    one-bit all-reduces of the prompt's query blocks' checks
    (:func:`tempo_jax._lower.masking.when_finite`), no data moves between devices."""
    for name, run in _run("decode")["decode"].items():
        assert run["tokens_equal"], name
        assert run["logits"] <= 1e-5, name
        assert run["rows_split"] == "P('data',)", name
        assert run["collectives"] in ([], ["all-reduce"]) and run["all_reduced"] in ([], ["pred[]"])
        assert run["in_loops"] == 0, name


@pytest.mark.slow  # four decoders compiled, two of them for 8 devices: about 1 min
def test_decoding_with_heads_split_over_a_model_axis_equals_one_device() -> None:
    """GPT-2 and Llama (grouped keys and values) on a 4 x 2 mesh, rows over ``data`` and heads
    over ``model``: the same tokens; the row-parallel products end in all-reduces of floats;
    the KV cache the step loop carries holds half the key/value heads per device."""
    for arch, run in _run("heads")["heads"].items():
        assert run["tokens_equal"], arch
        assert run["logits"] <= 1e-4, arch
        assert "f32[" in " ".join(run["all_reduced"]), (arch, run["all_reduced"])
        assert run["cache_shards"] and not run["whole_cache"], (arch, run)


def _two_processes(part: str) -> dict:
    """``tests.lower.sharded_process`` as processes 0 and 1 of a localhost cluster; what
    process 0 printed."""
    with socket.socket() as probe:  # a free port for the coordinator
        probe.bind(("localhost", 0))
        port = str(probe.getsockname()[1])
    flags = os.environ.get("XLA_FLAGS", "").split()  # one CPU device per process
    kept = " ".join(f for f in flags if "device_count" not in f)
    env = {**os.environ, "XLA_FLAGS": kept}
    argv = [sys.executable, "-m", "tests.lower.sharded_process"]
    procs = [
        subprocess.Popen(
            [*argv, str(pid), port, part],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in (0, 1)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    (line,) = [x for x in outs[0][0].splitlines() if x.startswith("{")]
    found = json.loads(line)
    assert found["processes"] == 2
    return found


def test_two_processes_on_localhost_agree_with_one() -> None:
    """The program on a global mesh of two processes (one CPU device each, gloo
    collectives), each passing its half of the rows: the gathered rows and the mean over
    them are the one-process run's."""
    found = _two_processes("rows")
    assert found["devices"] == 2
    assert found["x"] == 0.0 and found["mean"] <= 1e-6
    assert found["spec"] == "P('data',)"


@pytest.mark.slow  # PPO compiled in two processes at once, and once more alone: about 1 min
def test_ppo_over_two_processes_equals_one() -> None:
    """``devices=-1`` under ``jax.distributed``: the envs over both processes' devices, the
    initial state made where the program reads it; the run is the one-process run's."""
    found = _two_processes("ppo")
    assert found["loss"] <= 1e-5 and found["mean_return"] <= 1e-5
    assert found["spec"] == "P('data',)"


@pytest.mark.slow  # two PPO compiles, one of them for 8 devices: about 100 s
def test_ppo_with_its_envs_split_over_devices_equals_one_device() -> None:
    ppo = _run("ppo")["ppo"]
    assert ppo["diff"]["mean_return"] == 0.0 and ppo["diff"]["episodes"] == 0.0
    assert ppo["diff"]["loss"] <= 1e-5 and ppo["params"] <= 1e-6  # all-reduce order: rounding
    assert ppo["obs_spec"] == "P('data',)"  # the environments' state stays split
    assert ppo["all_reduce"]
