"""Programs compiled over a mesh of 8 virtual CPU devices, run in a process of their own
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts) by
``tests/lower/test_sharding.py``. Prints one JSON object: per check, what the test asserts."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

import tempo_jax as tj

B, T, I = 8, 6, 3


def recurrence() -> tj.Program:
    """A recurrence over ``t`` for each of ``B`` independent rows, and its mean over rows."""
    with tj.Program("rows") as p:
        b, t = p.dims("b t")
        u = tj.input("u", (4,), domain=(b, t))
        x = tj.placeholder((4,), jnp.float32, domain=(b, t), name="x")
        x[b, 0] = u[b, 0]
        x[True] = x[b, t - 1] * 0.9 + jnp.float32(0.5) * u
        p.output("x", x[0 : b.bound, 0 : t.bound])
        p.output("mean", x[0 : b.bound, t.bound - 1].mean(axis=0))
    return p


def regression() -> tj.Program:
    """Linear regression on ``B`` rows per iteration, Adam steps over ``i``."""
    with tj.Program("fit") as p:
        i, b = p.dims("i b")
        xs = tj.input("xs", (3,), domain=(i, b))
        ys = tj.input("ys", (), domain=(i, b))
        w = tj.param(jnp.zeros(3), domain=(i,))
        err = (xs * w).sum() - ys
        loss = (err * err)[i, 0 : b.bound].mean()
        new = tj.optim.step(optax.adam(0.1), w, tj.grad(loss, w), over=i)
        p.output("loss", loss[0 : i.bound])
        p.output("w", new[i.bound - 1])
    return p


def both(
    program: tj.Program, bounds: dict, mesh: Mesh, shard: dict, specs: Any = None, **inputs
) -> dict:
    one = program.compile(bounds)(**inputs)
    sharded = program.compile(bounds, mesh=mesh, shard=shard, specs=specs)
    out = sharded(**inputs)
    hlo = sharded.lower(**inputs).compile().as_text()
    diff = {
        k: float(np.max(np.abs(np.asarray(out[k]) - np.asarray(one[k]))))
        for k in one
        if k != "lengths"
    }
    found = {k: str(out[k].sharding.spec) for k in one if k != "lengths"}
    collectives = sorted({c for c in ("all-reduce", "all-gather", "reduce-scatter") if c in hlo})
    return {"diff": diff, "specs": found, "all_reduce": "all-reduce" in hlo, "hlo": collectives}


def error(fn, kind: type = tj.TempoError) -> str:
    try:
        fn()
    except kind as err:
        notes = getattr(err, "__notes__", None)
        return f"{type(err).__name__}: {err}" + (f" {notes}" if notes else "")
    return "no error"


def main(parts: list[str]) -> None:
    mesh = Mesh(np.array(jax.devices()), ("data",))
    found: dict = {"devices": len(jax.devices())}
    if "core" in parts:
        found |= core(mesh)
    if "ppo" in parts:
        found["ppo"] = ppo_run(mesh)
    if "decode" in parts:
        found["decode"] = decode(mesh)
    if "heads" in parts:
        found["heads"] = heads()
    print(json.dumps(found))


def core(mesh: Mesh) -> dict:
    rng = np.random.default_rng(0)
    found: dict = {}
    u = rng.normal(size=(B, T, 4)).astype(np.float32)
    found["rows"] = both(recurrence(), {"B": B, "T": T}, mesh, {"b": "data"}, u=u)
    xs = rng.normal(size=(I, B, 3)).astype(np.float32)
    ys = (xs @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)
    found["fit"] = both(regression(), {"I": I, "B": B}, mesh, {"b": "data"}, xs=xs, ys=ys)
    program = recurrence()
    found["errors"] = {
        "loop": error(lambda: program.compile({"B": B, "T": 8}, mesh=mesh, shard={"t": "data"})),
        "uneven": error(lambda: program.compile({"B": 6, "T": T}, mesh=mesh, shard={"b": "data"})),
        "axis": error(lambda: program.compile({"B": B, "T": T}, mesh=mesh, shard={"b": "x"})),
        "dim": error(lambda: program.compile({"B": B, "T": T}, mesh=mesh, shard={"k": "data"})),
        "no mesh": error(lambda: program.compile({"B": B, "T": T}, shard={"b": "data"})),
    }
    found["attention"] = attention(mesh)
    found["window"] = window_with_inf(mesh)
    found["random"] = random_rows(mesh, count=12)
    found["sink"] = sinks(mesh)
    found["tensor"] = tensor_parallel()
    return found


def window_with_inf(mesh: Mesh) -> dict:
    """A recurrence over ``t`` of ``B`` rows (an axis of the values, split over the devices by
    the inputs' specs, as the decoders' batch is) attending over a window of its last 3
    values, in tiles of 2, every row's values carrying an inf at ``t = 0`` (outside the window
    from ``t = 3``): the loop's masked tiles are computed exactly, with no finiteness check
    (an all-reduce); against the reference interpreter."""

    def attend(q: jax.Array, ks: jax.Array, vs: jax.Array) -> jax.Array:
        one = lambda q, ks, vs: jax.nn.softmax(ks @ q, axis=0) @ vs  # noqa: E731
        return jax.vmap(one, in_axes=(0, 1, 1))(q, ks, vs)

    with tj.Program("window") as p:
        (t,) = p.dims("t")
        x = tj.input("x", (B, 4), domain=(t,))
        bad = tj.input("bad", (B, 4), domain=(t,))
        h = tj.placeholder((B, 4), jnp.float32, domain=(t,), name="h")
        h[0] = x[0]
        v = tj.sin(h) + bad
        rows = slice(tj.max(0, t - 2), t + 1)
        a = tj.lift(attend, name="attend")(h, tj.tanh(h)[rows], v[rows])
        y = tj.where(t >= 3, a, 0.0) + h
        h[t + 1] = x[t + 1] + 0.5 * y[t]
        p.output("y", y[0 : t.bound])
    steps = 8
    rng = np.random.default_rng(5)
    data = {"x": rng.normal(size=(steps, B, 4)).astype(np.float32)}
    data["bad"] = np.zeros((steps, B, 4), np.float32)
    data["bad"][0, :, 1] = np.inf
    bounds = {"T": steps}
    want = tj.reference.run(p, bounds, data)["y"]
    block = functools.partial(tj.tile_dynamic_ranges, block=2)
    pipeline = tj.Pipeline().replacing("tile_dynamic_ranges", block)
    specs = {"x": PartitionSpec("data"), "bad": PartitionSpec("data")}
    sharded = p.compile(bounds, mesh=mesh, specs=specs, pipeline=pipeline)
    got = np.asarray(sharded(**data)["y"])
    hlo = sharded.lower(**data).compile().as_text()
    return {
        "finite": bool(np.isfinite(want[3:]).all()),
        "equal": bool(np.allclose(got, want, rtol=2e-5, atol=2e-5, equal_nan=True)),
        "collectives": sorted(c for c in ("all-reduce", "all-gather") if c in hlo),
        "split": str(sharded(**data)["y"].sharding.spec),
    }


def attention(mesh: Mesh) -> dict:
    """Causal attention of inputs over ``(b, t)``: the lowering runs ``b`` as a ``jax.vmap``
    axis of its query blocks (:mod:`tempo_jax._lower.blocks`), so ``b`` splits; ``t``, whose
    blocks run one after another, does not. The collectives of the compiled program: where
    each all-gather sits, the shape each all-reduce gives."""
    with tj.Program("attention") as p:
        b, t = p.dims("b t")
        q, k, v = (tj.input(name, (4,), domain=(b, t)) for name in "qkv")
        o = tj.softmax(k[b, 0 : t + 1] @ q[b, t]) @ v[b, 0 : t + 1]
        p.output("o", o[0 : b.bound, 0 : t.bound])
    rng = np.random.default_rng(2)
    inputs = {name: rng.normal(size=(B, 64, 4)).astype(np.float32) for name in "qkv"}
    found = both(p, {"B": B, "T": 64}, mesh, {"b": "data"}, **inputs)
    found["query"] = error(lambda: p.compile({"B": B, "T": 64}, mesh=mesh, shard={"t": "data"}))
    sharded = p.compile({"B": B, "T": 64}, mesh=mesh, shard={"b": "data"})
    lines = sharded.lower(**inputs).compile().as_text().splitlines()
    found["gathered"] = [
        re.findall(r'op_name="([^"]*)"', ln)[0] for ln in lines if " all-gather(" in ln
    ]
    found["reduced"] = [ln.split(" = ")[1].split(" ")[0] for ln in lines if " all-reduce(" in ln]
    return found


def random_rows(mesh: Mesh, count: int) -> dict:
    """``count`` random programs over ``(b, t)``: chains of forward and backward recurrences
    and maps along ``t``, each reading earlier tensors at clamped offsets of ``t`` in the same
    row, then the mean over rows at the last step; split over ``b``, against one device. Per
    program: its layout and the largest difference (``-1``: it failed, the error kept)."""
    rng = np.random.default_rng(7)
    results = []
    for _ in range(count):
        layout = [
            (
                str(rng.choice(["forward", "backward", "map"])),
                int(rng.integers(1, 3)),
                [(int(rng.integers(0, 9)), int(rng.integers(-2, 3))) for _ in range(2)],
            )
            for _ in range(int(rng.integers(1, 4)))
        ]
        with tj.Program("random") as p:
            b, t = p.dims("b t")
            T = t.bound
            tensors = [tj.input("x", (2,), jnp.float32, domain=(b, t))]
            for k, (kind, distance, reads) in enumerate(layout):
                terms: Any = 0.1 * (k + 1) * tensors[0]
                for source, offset in reads:
                    earlier = tensors[source % len(tensors)]
                    terms = terms + 0.3 * earlier[b, tj.max(0, tj.min(t + offset, T - 1))]
                if kind == "map":
                    y = tj.tanh(terms)
                else:
                    y = tj.placeholder((2,), jnp.float32, domain=(b, t), name=f"y{k}")
                    first = t < distance if kind == "forward" else t >= T - distance
                    step = t - distance if kind == "forward" else t + distance
                    y[first] = tj.tanh(terms)
                    y[True] = tj.tanh(0.5 * y[b, step] + terms)
                tensors.append(y)
                p.output(f"y{k}", y[0 : b.bound, 0 : t.bound])
            p.output("mean", tensors[-1][0 : b.bound, T - 1].mean(axis=0))
        x = rng.normal(size=(B, T_RANDOM, 2)).astype(np.float32)
        try:
            found = both(p, {"B": B, "T": T_RANDOM}, mesh, {"b": "data"}, x=x)
            worst = max(found["diff"].values())
        except Exception as failed:  # reported with the layout
            worst, found = -1.0, {"error": f"{type(failed).__name__}: {failed}"[:300]}
        results.append({"layout": layout, "worst": worst, **found})
    return {"programs": results}


T_RANDOM = 6


def tensor_parallel() -> dict:
    """A two-layer MLP over rows ``b`` on a 4 x 2 mesh: rows over ``data``, the first
    weight's columns (and so the hidden units) over ``model``."""
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    with tj.Program("mlp") as p:
        (b,) = p.dims("b")
        x = tj.input("x", (8,), domain=(b,))
        w1, w2 = tj.input("w1", (8, 16)), tj.input("w2", (16, 4))
        y = tj.tanh(x @ w1) @ w2
        p.output("y", y[0 : b.bound])
    rng = np.random.default_rng(1)
    inputs = {
        "x": rng.normal(size=(B, 8)).astype(np.float32),
        "w1": rng.normal(size=(8, 16)).astype(np.float32),
        "w2": rng.normal(size=(16, 4)).astype(np.float32),
    }
    found = both(
        p,
        {"B": B},
        mesh,
        {"b": "data"},
        specs={"w1": PartitionSpec(None, "model"), "w2": PartitionSpec("model")},
        **inputs,
    )
    found["errors"] = {
        "input": error(lambda: p.compile({"B": B}, mesh=mesh, specs={"w": PartitionSpec("model")})),
        "rank": error(
            lambda: p.compile({"B": B}, mesh=mesh, specs={"w1": PartitionSpec(None, None, "x")})
        ),
        "taken": error(
            lambda: p.compile(
                {"B": B}, mesh=mesh, shard={"b": "data"}, specs={"x": PartitionSpec("data")}
            )
        ),
    }
    return found


def sinks(mesh: Mesh) -> dict:
    """A sink per iteration of the mean over sharded rows: its calls, in order, against one
    device's; and a sink that raises at ``i == 2``."""

    def program(fn) -> tj.Program:
        with tj.Program("logged") as p:
            i, b = p.dims("i b")
            v = tj.input("v", (), domain=(i, b))
            acc = tj.placeholder((), jnp.float32, domain=(i,), name="acc")
            acc[0] = v[0, 0 : b.bound].mean()
            acc[True] = acc[i - 1] + v[i, 0 : b.bound].mean()
            tj.sink(acc, fn)
            p.output("acc", acc[0 : i.bound])
        return p

    v = np.arange(I * 2 * B, dtype=np.float32).reshape(I * 2, B)
    calls: dict[str, list] = {"one": [], "sharded": []}
    for name, options in (("one", {}), ("sharded", {"mesh": mesh, "shard": {"b": "data"}})):
        record = functools.partial(
            lambda k, value, point: calls[k].append((point["i"], float(value))), name
        )
        program(record).compile({"I": I * 2, "B": B}, **options)(v=v)

    def fail(value: Any, point: dict) -> None:
        if point["i"] == 2:
            raise KeyError("no such metric")

    raised = error(
        lambda: program(fail).compile({"I": I * 2, "B": B}, mesh=mesh, shard={"b": "data"})(v=v),
        KeyError,
    )
    return {"calls": calls, "raised": raised}


def decode(mesh: Mesh) -> dict:
    """Greedy and ragged sampled decoding of 8 prompts, one row per device, against one
    device."""
    from tempo_jax.models import config
    from tempo_jax.models.params import init_params
    from tempo_jax.models.tempo import TempoDecoder

    cfg = config.tiny_gpt2()
    params = init_params(cfg, jax.random.PRNGKey(0))
    prompt = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab, (B, 3)), jnp.int32)
    found = {}
    for name, options in (("greedy", {}), ("ragged", {"ragged": True, "temperature": 1.0})):
        one = TempoDecoder(cfg, B, 3, 5, block=4, **options)
        split = TempoDecoder(cfg, B, 3, 5, block=4, mesh=mesh, **options)
        keys = jax.random.split(jax.random.PRNGKey(1), B) if options else None
        a = one.generate(params, prompt, keys)
        b = split.generate(params, prompt, keys)
        hlo = split.compiled.lower(**split.inputs(params, prompt, keys)).compile().as_text()
        found[name] = {
            "tokens_equal": bool(np.array_equal(a["tokens"], b["tokens"])),
            "logits": float(np.max(np.abs(np.asarray(a["logits"]) - np.asarray(b["logits"])))),
            "collectives": sorted(
                c for c in ("all-reduce", "all-gather", "all-to-all") if c in hlo
            ),
            # what is all-reduced: the type of each all-reduce's result
            "all_reduced": sorted(set(re.findall(r"= (\S+) all-reduce\(", hlo))),
            # the all-reduces in a loop's body (the step loop; the prompt fits one block)
            "in_loops": sum(
                "all-reduce(" in line and "while/body" in line for line in hlo.splitlines()
            ),
            "rows_split": str(
                split.compiled(**split.inputs(params, prompt, keys))["first"].sharding.spec
            ),
        }
    return found


def ppo_run(mesh: Mesh) -> dict:
    """A PPO run of 2 iterations (2 epochs x 2 minibatches) with its 8 envs split over the
    devices, against the same run on one device."""
    from tempo_jax.algorithms import ppo
    from tempo_jax.algorithms.config import RLConfig

    config = RLConfig(iterations=2, envs=B, steps=8, epochs=2, minibatches=2)
    built = ppo.build(config)
    one = ppo.compile_run(built, config)()
    split = dataclasses.replace(config, devices=-1)  # every device: the config's way
    run = ppo.compile_run(built, split)
    assert run.sharding is not None and dict(run.sharding.dims) == {"b": "data"}
    out = run()
    hlo = run.lower().compile().as_text()
    return {
        "diff": {
            k: float(np.max(np.abs(np.asarray(out[k]) - np.asarray(one[k]))))
            for k in ("loss", "mean_return", "episodes")
        },
        "params": max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(
                jax.tree_util.tree_leaves(out["params"]),
                jax.tree_util.tree_leaves(one["params"]),
                strict=True,
            )
        ),
        "obs_spec": str(out["state"].obs.sharding.spec),
        "all_reduce": "all-reduce" in hlo,
    }


def heads() -> dict:
    """GPT-2 (4 heads) and Llama (4 query heads over 2 key/value heads) decoding on a 4 x 2
    mesh: rows over ``data``, heads and hidden units over ``model``; against one device."""
    from tempo_jax.models import config
    from tempo_jax.models.params import init_params
    from tempo_jax.models.sharding import decode_mesh
    from tempo_jax.models.tempo import TempoDecoder

    mesh = decode_mesh(8, tensor_parallel=2)
    found = {}
    for cfg in (config.tiny_gpt2(), config.tiny_llama()):
        params = init_params(cfg, jax.random.PRNGKey(0))
        prompt = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab, (B, 3)), jnp.int32)
        one = TempoDecoder(cfg, B, 3, 5, block=4)
        split = TempoDecoder(cfg, B, 3, 5, block=4, mesh=mesh)
        a, b = one.generate(params, prompt), split.generate(params, prompt)
        compiled = split.compiled.lower(**split.inputs(params, prompt)).compile()
        hlo = compiled.as_text()
        found[cfg.arch] = {
            "tokens_equal": bool(np.array_equal(a["tokens"], b["tokens"])),
            "logits": float(np.max(np.abs(np.asarray(a["logits"]) - np.asarray(b["logits"])))),
            "all_reduced": sorted(set(re.findall(r"= (\S+) all-reduce\(", hlo))),
            # the per-device shapes of the loop-carried KV cache tiles: [B/4, KV/2, rows, hd]
            "cache_shards": sorted(
                set(re.findall(rf"f32\[{B // 4},{cfg.kv_heads // 2},\d+,{cfg.head_dim}\]", hlo))
            ),
            "whole_cache": sorted(
                set(re.findall(rf"f32\[{B // 4},{cfg.kv_heads},\d+,{cfg.head_dim}\]", hlo))
            ),
        }
    return found


if __name__ == "__main__":
    main(sys.argv[1:])
