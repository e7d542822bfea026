"""`make demo`: a small dynamic program, interpreted and compiled to one JAX function.

A toy decoder attends over its growing history ``h[0:t+1]`` and feeds its output back as the
next input (a recurrence); a reward per step is turned into discounted returns with a
backward recurrence ``g[t] = r[t] + gamma * g[t+1]``. The program runs through the reference
interpreter and compiled (schedule printed); both are checked against plain NumPy loops.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import tempo_jax as tj


def build(width: int, gamma: float, seed: int) -> tuple[tj.Program, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    wq, wk, wv = (rng.normal(size=(width, width)).astype(np.float32) / width**0.5 for _ in "qkv")
    with tj.Program("demo") as p:
        (t,) = p.dims("t")
        T = t.bound
        x0 = tj.input("x0", (width,), jnp.float32)
        h = tj.placeholder((width,), jnp.float32, domain=(t,))
        q, k, v = h @ wq, h @ wk, h @ wv  # one point of each, at t
        att = tj.softmax(q[t] @ k[0 : t + 1].T / width**0.5, axis=-1) @ v[0 : t + 1]
        h[0] = x0
        h[t + 1] = tj.tanh(att[t] + h[t])  # the decoder's output is its next input
        reward = (h * h).mean()
        g = tj.placeholder((), jnp.float32, domain=(t,))
        g[T - 1] = reward[T - 1]
        g[True] = reward[t] + gamma * g[t + 1]
        p.output("h", h[0:T])
        p.output("returns", g[0:T])
    inputs = {"x0": rng.normal(size=(width,)).astype(np.float32)}
    return p, inputs, (wq, wk, wv)


def numpy_oracle(x0, weights, steps: int, gamma: float) -> dict[str, np.ndarray]:
    wq, wk, wv = weights
    hs = [x0]
    for n in range(steps - 1):
        hist = np.stack(hs)
        s = (hist[n] @ wq) @ (hist @ wk).T / len(x0) ** 0.5
        e = np.exp(s - s.max())
        hs.append(np.tanh((e / e.sum()) @ (hist @ wv) + hist[n]))
    h = np.stack(hs)
    reward = (h * h).mean(axis=1)
    g, acc = np.zeros(steps), 0.0
    for n in reversed(range(steps)):
        acc = reward[n] + gamma * acc
        g[n] = acc
    return {"h": h, "returns": g}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="the bound T")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--gamma", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    program, inputs, weights = build(args.width, args.gamma, args.seed)
    print("The symbolic dependence graph:")
    print(program.to_ir())
    start = time.perf_counter()
    out = tj.reference.run(program, bounds={"T": args.steps}, inputs=inputs)
    elapsed = time.perf_counter() - start
    want = numpy_oracle(inputs["x0"], weights, args.steps, args.gamma)
    np.set_printoptions(precision=4, suppress=True)
    print(f"\nreference interpreter, T={args.steps}: {elapsed:.2f} s")
    print("returns g[0:T] =", np.asarray(out["returns"]))
    print("h[T-1]         =", np.asarray(out["h"][-1]))
    _check(out, want, "interpreted")

    start = time.perf_counter()
    compiled = program.compile(bounds={"T": args.steps})
    compiled_out = jax.block_until_ready(compiled(**inputs))
    print(f"\ncompiled schedule:\n{compiled.schedule}")
    print(f"compiled, T={args.steps}: {time.perf_counter() - start:.2f} s (compiling included)")
    _check(compiled_out, want, "compiled")
    print("OK: interpreted and compiled programs match plain NumPy loops.")


def _check(out: dict, want: dict, how: str) -> None:
    for name, value in want.items():
        err = float(np.max(np.abs(np.asarray(out[name]) - value)))
        print(f"max |tempo_jax ({how}) - numpy| for {name}: {err:.2e}")
        assert err < 1e-4, f"{name} ({how}) disagrees with the NumPy oracle"


if __name__ == "__main__":
    main()
