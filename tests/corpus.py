"""The test corpus: dynamic programs, each with a NumPy-loop oracle written here.

Each :class:`Case` builds a program, its bounds and inputs; ``oracle`` computes the expected
outputs with plain NumPy loops. Later stages (the compiler, every pass) are tested against
the reference interpreter on this corpus.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import tempo_jax as tj

Built = tuple[tj.Program, dict[Any, int], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Built]
    oracle: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- running sum ----------------------------------------------------------------------------------


def running_sum() -> Built:
    with tj.Program() as p:
        (t,) = p.dims("t")
        T = t.bound
        x = tj.input("x", (), jnp.float32, domain=(t,))
        s = tj.placeholder((), jnp.float32, domain=(t,))
        s[0] = x[0]
        s[t + 1] = s[t] + x[t + 1]
        p.output("s", s[0:T])
    return p, {T: 12}, {"x": _rng(0).normal(size=12).astype(np.float32)}


def running_sum_oracle(inp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, acc = [], 0.0
    for v in inp["x"]:
        acc += v
        out.append(acc)
    return {"s": np.array(out)}


# -- Fibonacci-style two-step recurrence ----------------------------------------------------------


def fibonacci() -> Built:
    with tj.Program() as p:
        (t,) = p.dims("t")
        f = tj.placeholder((), jnp.int32, domain=(t,))
        f[0] = 0
        f[1] = 1
        f[t + 2] = f[t + 1] + f[t]
        p.output("f", f[0 : t.bound])
    return p, {t.bound: 20}, {}


def fibonacci_oracle(inp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    f = [0, 1]
    while len(f) < 20:
        f.append(f[-1] + f[-2])
    return {"f": np.array(f)}


# -- exponential moving average over a batch ------------------------------------------------------


def ema() -> Built:
    with tj.Program() as p:
        b, t = p.dims("b t")
        x = tj.input("x", (3,), jnp.float32, domain=(b, t))
        m = tj.placeholder((3,), jnp.float32, domain=(b, t))
        m[b, 0] = x[b, 0]
        m[b, t + 1] = 0.9 * m[b, t] + 0.1 * x[b, t + 1]
        p.output("m", m)
        p.output("last", m[b, t.bound - 1])
    return p, {b.bound: 2, t.bound: 9}, {"x": _rng(1).normal(size=(2, 9, 3)).astype(np.float32)}


def ema_oracle(inp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = inp["x"]
    m = np.zeros_like(x)
    m[:, 0] = x[:, 0]
    for k in range(1, x.shape[1]):
        m[:, k] = 0.9 * m[:, k - 1] + 0.1 * x[:, k]
    return {"m": m, "last": m[:, -1]}


# -- discounted returns, computed backwards and as a suffix range ---------------------------------

GAMMA = 0.9


def returns_backward() -> Built:
    with tj.Program() as p:
        (t,) = p.dims("t")
        T = t.bound
        r = tj.input("r", (), jnp.float32, domain=(t,))
        g = tj.placeholder((), jnp.float32, domain=(t,))
        g[T - 1] = r[T - 1]
        g[True] = r[t] + GAMMA * g[t + 1]
        p.output("g", g[0:T])
    return p, {T: 10}, {"r": _rng(2).normal(size=10).astype(np.float32)}


def returns_suffix() -> Built:
    with tj.Program() as p:
        (t,) = p.dims("t")
        T = t.bound
        r = tj.input("r", (), jnp.float32, domain=(t,))
        discounted = tj.lift(lambda rs: (rs * GAMMA ** jnp.arange(rs.shape[0])).sum())
        p.output("g", discounted(r[t:T]))
    return p, {T: 10}, {"r": _rng(2).normal(size=10).astype(np.float32)}


def returns_oracle(inp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    r = inp["r"]
    g = np.zeros_like(r)
    acc = 0.0
    for k in reversed(range(len(r))):
        acc = r[k] + GAMMA * acc
        g[k] = acc
    return {"g": g}


# -- sliding-window sum ---------------------------------------------------------------------------

WINDOW = 3


def window_sum() -> Built:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (2,), jnp.float32, domain=(t,))
        p.output("w", x[tj.max(0, t - WINDOW + 1) : t + 1].sum(axis=0))
    return p, {t.bound: 8}, {"x": _rng(3).normal(size=(8, 2)).astype(np.float32)}


def window_sum_oracle(inp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = inp["x"]
    return {"w": np.stack([x[max(0, k - WINDOW + 1) : k + 1].sum(0) for k in range(len(x))])}


# -- parameters over an iteration dim, read by an inner time dim ----------------------------------

LR = 0.1


def linear_regression() -> Built:
    with tj.Program() as p:
        i, t = p.dims("i t")
        I, T = i.bound, t.bound
        x = tj.input("x", (2,), jnp.float32, domain=(t,))
        y = tj.input("y", (), jnp.float32, domain=(t,))
        w = tj.placeholder((2,), jnp.float32, domain=(i,))
        err = x[t] @ w[i] - y[t]  # domain (i, t)
        grad = (err[i, 0:T][..., None] * x[0:T]).mean(axis=0) * 2.0  # domain (i,)
        w[0] = jnp.zeros(2)
        w[i + 1] = w[i] - LR * grad[i]
        p.output("w", w[0:I])
        p.output("loss", (err[i, 0:T] ** 2).mean())
    rng = _rng(4)
    xs = rng.normal(size=(6, 2)).astype(np.float32)
    ys = (xs @ np.array([1.5, -0.5]) + 0.1).astype(np.float32)
    return p, {I: 5, T: 6}, {"x": xs, "y": ys}


def linear_regression_oracle(inp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x, y = inp["x"], inp["y"]
    w = np.zeros(2, np.float32)
    ws, losses = [], []
    for _ in range(5):
        err = x @ w - y
        ws.append(w.copy())
        losses.append((err**2).mean())
        w = w - LR * 2.0 * (err[:, None] * x).mean(0)
    return {"w": np.stack(ws), "loss": np.array(losses)}


# -- causal attention over the growing prefix 0:t+1 -----------------------------------------------


def attention() -> Built:
    with tj.Program() as p:
        (t,) = p.dims("t")
        q = tj.input("q", (4,), jnp.float32, domain=(t,))
        k = tj.input("k", (4,), jnp.float32, domain=(t,))
        v = tj.input("v", (3,), jnp.float32, domain=(t,))
        scores = q[t] @ k[0 : t + 1].T / 2.0
        p.output("o", tj.softmax(scores, axis=-1) @ v[0 : t + 1])
    rng = _rng(5)
    data = {
        n: rng.normal(size=(7, d)).astype(np.float32) for n, d in (("q", 4), ("k", 4), ("v", 3))
    }
    return p, {t.bound: 7}, data


def attention_oracle(inp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    q, k, v = inp["q"], inp["k"], inp["v"]
    outs = []
    for n in range(len(q)):
        s = k[: n + 1] @ q[n] / 2.0
        e = np.exp(s - s.max())
        outs.append((e / e.sum()) @ v[: n + 1])
    return {"o": np.stack(outs)}


# -- ordered, first-match conditional branches ----------------------------------------------------


def branches() -> Built:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.placeholder((), jnp.int32, domain=(t,))
        x[t < 3] = t * 10
        x[tj.eq(t % 2, 0)] = -t  # first match: t = 0 and 2 were taken by the branch above
        x[True] = t
        p.output("x", x[0 : t.bound])
    return p, {t.bound: 8}, {}


def branches_oracle(inp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"x": np.array([k * 10 if k < 3 else (-k if k % 2 == 0 else k) for k in range(8)])}


# -- deterministic randomness folded with the point -----------------------------------------------


def random_walk() -> Built:
    with tj.Program() as p:
        b, t = p.dims("b t")
        key = tj.input("key", (2,), jnp.uint32)
        step = tj.random.normal(key, (), domain=(b, t))
        pos = tj.placeholder((), jnp.float32, domain=(b, t))
        pos[b, 0] = step
        pos[b, t + 1] = pos[b, t] + step[b, t + 1]
        p.output("pos", pos)
    return p, {b.bound: 2, t.bound: 5}, {"key": np.asarray(jax.random.PRNGKey(7))}


def random_walk_oracle(inp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    key = jnp.asarray(inp["key"])
    steps = np.array(
        [
            [
                float(jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, bi), ti)))
                for ti in range(5)
            ]
            for bi in range(2)
        ]
    )
    return {"pos": np.cumsum(steps, axis=1)}


# -- GAE over (env, step): a backward recurrence whose last step is its own op over (b,) ----------

GAE_LAMBDA = 0.8


def gae() -> Built:
    with tj.Program() as p:
        b, t = p.dims("b t")
        T = t.bound
        reward = tj.input("reward", (), jnp.float32, domain=(b, t))
        value = tj.input("value", (), jnp.float32, domain=(b, t)) * 1.0
        delta = tj.placeholder((), jnp.float32, domain=(b, t))
        delta[b, T - 1] = reward[b, T - 1] - value[b, T - 1]
        delta[True] = reward + GAMMA * value[b, t + 1] - value
        adv = tj.placeholder((), jnp.float32, domain=(b, t))
        adv[b, T - 1] = delta[b, T - 1]
        adv[True] = delta + GAMMA * GAE_LAMBDA * adv[b, t + 1]
        p.output("adv", adv[0 : b.bound, 0:T])
    rng = _rng(9)
    inputs = {
        "reward": rng.normal(size=(3, 9)).astype(np.float32),
        "value": rng.normal(size=(3, 9)).astype(np.float32),
    }
    return p, {b.bound: 3, T: 9}, inputs


def gae_oracle(inp: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    r, v = inp["reward"], inp["value"]
    nxt = np.concatenate([v[:, 1:], np.zeros_like(v[:, :1])], axis=1)
    delta = r + GAMMA * nxt - v
    adv = np.zeros_like(r)
    acc = np.zeros(r.shape[0], np.float32)
    for k in reversed(range(r.shape[1])):
        acc = delta[:, k] + GAMMA * GAE_LAMBDA * acc
        adv[:, k] = acc
    return {"adv": adv}


CASES = [
    Case("running_sum", running_sum, running_sum_oracle),
    Case("fibonacci", fibonacci, fibonacci_oracle),
    Case("ema", ema, ema_oracle),
    Case("returns_backward", returns_backward, returns_oracle),
    Case("returns_suffix", returns_suffix, returns_oracle),
    Case("window_sum", window_sum, window_sum_oracle),
    Case("linear_regression", linear_regression, linear_regression_oracle),
    Case("attention", attention, attention_oracle),
    Case("branches", branches, branches_oracle),
    Case("random_walk", random_walk, random_walk_oracle),
    Case("gae", gae, gae_oracle),
]
