"""Gradients on the dependence graph against ``jax.grad`` of hand-written JAX programs.

Each program is differentiated with ``tj.grad`` and run twice, by the reference interpreter
and compiled; both must equal ``jax.grad`` (or an optax loop) of the same computation written
as plain JAX. The cases cover the reads whose dependence the gradient inverts: points, shifts
(backpropagation through time), prefixes, windows, suffixes, full ranges, dims the parameter
lacks, and a parameter read at a shifted iteration.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tempo_jax as tj
from tempo_jax._schedule.tree import Loop, Node, Sequence


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _both(program: tj.Program, bounds: dict[Any, int], inputs: dict[str, Any]) -> list[dict]:
    """The outputs of the reference interpreter and of the compiled program."""
    return [
        tj.reference.run(program, bounds=bounds, inputs=inputs),
        program.compile(bounds=bounds)(**inputs),
    ]


def _close(got: Any, want: Any, tol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=tol, atol=tol)


# -- linear regression trained with Adam: the whole loop is one program ---------------------------


def test_linear_regression_with_adam_matches_an_optax_loop() -> None:
    n, d, iters = 32, 3, 50
    rng = _rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.1 * rng.normal(size=n)).astype(np.float32)
    tx = optax.adam(0.1)
    with tj.Program() as p:
        (i,) = p.dims("i")
        xs, ys = tj.input("x", (n, d)), tj.input("y", (n,))
        params = tj.param({"w": jnp.zeros(d), "b": jnp.zeros(())}, domain=(i,))
        loss = ((xs @ params["w"] + params["b"] - ys) ** 2).mean()
        new = tj.optim.step(tx, params, tj.grad(loss, params), over=i)
        p.output("w", new["w"][i.bound - 1])
        p.output("b", new["b"][i.bound - 1])
        p.output("loss", loss[0 : i.bound])

    def loss_fn(prm: dict) -> jax.Array:
        return ((x @ prm["w"] + prm["b"] - y) ** 2).mean()

    prm = {"w": jnp.zeros(d), "b": jnp.zeros(())}
    state, losses = tx.init(prm), []
    for _ in range(iters):
        value, g = jax.value_and_grad(loss_fn)(prm)
        updates, state = tx.update(g, state, prm)
        prm = optax.apply_updates(prm, updates)
        losses.append(value)
    for out in _both(p, {i.bound: iters}, {"x": x, "y": y}):
        _close(out["w"], prm["w"])
        _close(out["b"], prm["b"])
        _close(out["loss"], np.array(losses), tol=1e-4)


def test_minibatched_adam_over_nested_dims_carries_one_state_like_an_optax_loop() -> None:
    """``over=(i, e, m)``: E epochs of M minibatch steps per iteration, one Adam state carried
    through every step and across iterations, as in a nested optax loop."""
    n, d, iters, epochs, mbs = 12, 3, 4, 2, 3
    rng = _rng(1)
    x = rng.normal(size=(iters, n, d)).astype(np.float32)
    y = rng.normal(size=(iters, n)).astype(np.float32)
    tx = optax.adam(0.05)
    with tj.Program() as p:
        i, e, m = p.dims("i e m")
        xs, ys = tj.input("x", (n, d), domain=(i,)), tj.input("y", (n,), domain=(i,))
        params = tj.param({"w": jnp.zeros(d), "b": jnp.zeros(())}, domain=(i, e, m), over=(i, e, m))
        rows = tj.lift(lambda a, k: a.reshape(mbs, -1, *a.shape[1:])[k])
        xb, yb = rows(xs[i], m), rows(ys[i], m)
        loss = ((xb @ params["w"] + params["b"] - yb) ** 2).mean()
        new = tj.optim.step(tx, params, tj.grad(loss, params), over=(i, e, m))
        last = (i.bound - 1, e.bound - 1, m.bound - 1)
        p.output("w", new["w"][last])
        p.output("b", new["b"][last])
        p.output("loss", loss[0 : i.bound, 0 : e.bound, 0 : m.bound])

    def loss_fn(prm: dict, xb: np.ndarray, yb: np.ndarray) -> jax.Array:
        return ((xb @ prm["w"] + prm["b"] - yb) ** 2).mean()

    prm = {"w": jnp.zeros(d), "b": jnp.zeros(())}
    state, losses = tx.init(prm), []
    for it in range(iters):
        for _ in range(epochs):
            for k in range(mbs):
                part = slice(k * n // mbs, (k + 1) * n // mbs)
                value, g = jax.value_and_grad(loss_fn)(prm, x[it, part], y[it, part])
                updates, state = tx.update(g, state, prm)
                prm = optax.apply_updates(prm, updates)
                losses.append(value)
    bounds = {i.bound: iters, e.bound: epochs, m.bound: mbs}
    for out in _both(p, bounds, {"x": x, "y": y}):
        _close(out["w"], prm["w"])
        _close(out["b"], prm["b"])
        _close(out["loss"], np.array(losses).reshape(iters, epochs, mbs), tol=1e-4)


# -- a tanh RNN over T = 64: backpropagation through time -----------------------------------------

RNN_T, RNN_D = 64, 8


def _rnn(x: np.ndarray, w: Any, u: Any, h0: Any) -> Any:
    h, total = h0, 0.0
    for k in range(x.shape[0]):
        h = jnp.tanh(h @ w + x[k] @ u)
        total = total + (h**2).mean()
    return total


def _rnn_program() -> tuple[tj.Program, Any]:
    d = RNN_D
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (d,), domain=(t,))
        w = tj.param(jnp.asarray(_rng(1).normal(size=(d, d)) * 0.4, jnp.float32))
        u = tj.param(jnp.asarray(_rng(2).normal(size=(d, d)) * 0.4, jnp.float32))
        h0 = tj.param(jnp.asarray(_rng(3).normal(size=(d,)), jnp.float32))
        h = tj.placeholder((d,), domain=(t,))
        h[0] = tj.tanh(h0 @ w + x[0] @ u)
        h[t + 1] = tj.tanh(h[t] @ w + x[t + 1] @ u)
        loss = (h**2).mean()
        gw, gu, gh0 = tj.grad(loss, [w, u, h0])
        p.output("gw", gw)
        p.output("gu", gu)
        p.output("gh0", gh0)
    return p, t


def test_tanh_rnn_bptt_matches_jax_grad() -> None:
    p, t = _rnn_program()
    x = _rng(4).normal(size=(RNN_T, RNN_D)).astype(np.float32)
    w = jnp.asarray(_rng(1).normal(size=(RNN_D, RNN_D)) * 0.4, jnp.float32)
    u = jnp.asarray(_rng(2).normal(size=(RNN_D, RNN_D)) * 0.4, jnp.float32)
    h0 = jnp.asarray(_rng(3).normal(size=(RNN_D,)), jnp.float32)
    gw, gu, gh0 = jax.grad(_rnn, argnums=(1, 2, 3))(x, w, u, h0)
    for out in _both(p, {t.bound: RNN_T}, {"x": x}):
        _close(out["gw"], gw, 1e-4)
        _close(out["gu"], gu, 1e-4)
        _close(out["gh0"], gh0, 1e-4)


def _loops(node: Node) -> list[Loop]:
    if isinstance(node, Loop):
        return [node, *_loops(node.body)]
    if isinstance(node, Sequence):
        return [loop for child in node.children for loop in _loops(child)]
    body = getattr(node, "body", None)
    return _loops(body) if body is not None else []


def test_rnn_forward_and_backward_are_one_loop_each() -> None:
    """Not unrolled: the forward recurrence is one loop over t, the backward one reversed."""
    p, t = _rnn_program()
    compiled = p.compile({t.bound: RNN_T})
    loops = _loops(compiled.tree)
    assert [loop.reverse for loop in loops] == [False, True], compiled.schedule
    jaxpr = str(compiled.jaxpr())
    assert jaxpr.count("scan[") + jaxpr.count("while[") == 2


def test_weight_gradients_are_accumulated_not_stored_per_step() -> None:
    """Two stacked RNN layers: each weight is read at every t; its gradient is summed as the
    backward pass runs, never kept as a (T, D, D) buffer of per-step cotangents."""
    steps, d = 256, 32
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (d,), domain=(t,))
        ws = [tj.input(f"w{k}", (d, d)) for k in range(4)]  # input and recurrent, per layer
        below = x
        for w, u in (ws[:2], ws[2:]):
            h = tj.placeholder((d,), domain=(t,))
            h[0] = tj.tanh(below[0] @ w)
            h[t + 1] = tj.tanh(below[t + 1] @ w + h[t] @ u)
            below = h
        for k, g in enumerate(tj.grad((below**2).mean(), ws)):
            p.output(f"g{k}", g)
    compiled = p.compile({t.bound: steps})
    temp = compiled.lower().compile().memory_analysis().temp_size_in_bytes
    assert temp < steps * d * d * 4 / 4, temp  # a quarter of one per-step gradient buffer
    rng = _rng(17)
    xs = rng.normal(size=(steps, d)).astype(np.float32)
    w0 = [(rng.normal(size=(d, d)) * d**-0.5).astype(np.float32) for _ in range(4)]

    def oracle(ws: list) -> Any:
        below = xs
        for w, u in (ws[:2], ws[2:]):

            def step(h: Any, xi: Any, w: Any = w, u: Any = u) -> Any:
                h = jnp.tanh(xi @ w + h @ u)
                return h, h

            h0 = jnp.tanh(below[0] @ w)
            below = jnp.concatenate([h0[None], jax.lax.scan(step, h0, below[1:])[1]])
        return (below**2).mean(axis=1).sum()

    want = jax.grad(oracle)(w0)
    out = compiled(x=xs, **{f"w{k}": w0[k] for k in range(4)})
    for k in range(4):
        _close(out[f"g{k}"], want[k], 1e-4)


# -- growing ranges: attention over 0:t+1, windows, suffixes, full ranges -------------------------

ATT_T, ATT_D, WINDOW = 7, 4, 3
RANGES = {
    "causal": lambda k: (0, k + 1),
    "window": lambda k: (max(0, k - WINDOW + 1), k + 1),
    "suffix": lambda k: (k, ATT_T),
    "full": lambda k: (0, ATT_T),
}


def _attention_program(kind: str) -> tuple[tj.Program, Any]:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (ATT_D,), domain=(t,))
        wq = tj.param(jnp.asarray(_rng(5).normal(size=(ATT_D, ATT_D)) * 0.5, jnp.float32))
        wk = tj.param(jnp.asarray(_rng(6).normal(size=(ATT_D, ATT_D)) * 0.5, jnp.float32))
        wv = tj.param(jnp.asarray(_rng(7).normal(size=(ATT_D, ATT_D)) * 0.5, jnp.float32))
        q, k, v = x @ wq, x @ wk, x @ wv
        span = {
            "causal": slice(0, t + 1),
            "window": slice(tj.max(0, t - WINDOW + 1), t + 1),
            "suffix": slice(t, t.bound),
            "full": slice(0, t.bound),
        }[kind]
        att = tj.softmax(k[span] @ q / np.sqrt(ATT_D))
        out = att @ v[span]
        loss = (out * tj.tanh(out)).sum()
        for name, g in zip(("gq", "gk", "gv", "gx"), tj.grad(loss, [wq, wk, wv, x]), strict=True):
            p.output(name, g[0 : t.bound] if name == "gx" else g)
    return p, t


def _attention_loss(x: Any, wq: Any, wk: Any, wv: Any, kind: str) -> Any:
    q, k, v = x @ wq, x @ wk, x @ wv
    total = 0.0
    for step in range(ATT_T):
        lo, hi = RANGES[kind](step)
        att = jax.nn.softmax(k[lo:hi] @ q[step] / np.sqrt(ATT_D))
        out = att @ v[lo:hi]
        total = total + (out * jnp.tanh(out)).sum()
    return total


@pytest.mark.parametrize("kind", list(RANGES))
def test_attention_gradients_over_ranges(kind: str) -> None:
    p, t = _attention_program(kind)
    x = _rng(8).normal(size=(ATT_T, ATT_D)).astype(np.float32)
    weights = [
        jnp.asarray(_rng(s).normal(size=(ATT_D, ATT_D)) * 0.5, jnp.float32) for s in (5, 6, 7)
    ]
    want = jax.grad(_attention_loss, argnums=(0, 1, 2, 3))(x, *weights, kind)
    for out in _both(p, {t.bound: ATT_T}, {"x": x}):
        for name, g in zip(("gx", "gq", "gk", "gv"), want, strict=True):
            _close(out[name], g, 1e-4)


def test_sliding_window_sum_gradient() -> None:
    steps, width = 20, 4
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), domain=(t,))
        scale = tj.param(jnp.float32(0.7))
        y = tj.exp(x * scale)
        s = y[tj.max(0, t - width + 1) : t + 1].sum()
        loss = s * s
        gs, gx = tj.grad(loss, [scale, x])
        p.output("gs", gs)
        p.output("gx", gx[0 : t.bound])
    xs = _rng(9).normal(size=steps).astype(np.float32) * 0.5

    def oracle(scale: Any, x: Any) -> Any:
        y = jnp.exp(x * scale)
        sums = jnp.stack([y[max(0, k - width + 1) : k + 1].sum() for k in range(steps)])
        return (sums**2).sum()

    gs, gx = jax.grad(oracle, argnums=(0, 1))(jnp.float32(0.7), xs)
    for out in _both(p, {t.bound: steps}, {"x": xs}):
        _close(out["gs"], gs, 1e-4)
        _close(out["gx"], gx, 1e-4)


# -- discounted returns through a suffix read r[t:T] ----------------------------------------------

GAMMA = 0.9


def test_returns_via_suffix_read_gradient() -> None:
    steps, d = 12, 3
    with tj.Program() as p:
        (t,) = p.dims("t")
        obs = tj.input("obs", (d,), domain=(t,))
        w = tj.param(jnp.asarray([0.3, -0.2, 0.5], jnp.float32))
        reward = tj.tanh(obs @ w)
        discounted = tj.lift(lambda rs: (rs * GAMMA ** jnp.arange(rs.shape[0])).sum())
        ret = discounted(reward[t : t.bound])
        loss = (ret - 1.0) ** 2
        (g,) = tj.grad(loss, [w])
        p.output("g", g)
        p.output("ret", ret[0 : t.bound])
    o = _rng(10).normal(size=(steps, d)).astype(np.float32)

    def oracle(w: Any) -> Any:
        r = jnp.tanh(o @ w)
        rets = jnp.stack([(r[k:] * GAMMA ** jnp.arange(steps - k)).sum() for k in range(steps)])
        return ((rets - 1.0) ** 2).sum()

    w0 = jnp.asarray([0.3, -0.2, 0.5], jnp.float32)
    for out in _both(p, {t.bound: steps}, {"obs": o}):
        _close(out["g"], jax.grad(oracle)(w0), 1e-4)


# -- a PPO-style clipped loss over (b, t) with GAE ------------------------------------------------

B, T_PPO, OBS, ACTIONS = 2, 6, 4, 2
LAM, CLIP = 0.95, 0.2


def _ppo_program(detach_advantages: bool) -> tuple[tj.Program, Any, Any]:
    with tj.Program() as p:
        b, t = p.dims("b t")
        T = t.bound
        obs = tj.input("obs", (OBS,), domain=(b, t))
        action = tj.input("action", (), jnp.int32, domain=(b, t))
        old_logp = tj.input("old_logp", (), domain=(b, t))
        reward = tj.input("reward", (), domain=(b, t))
        wp = tj.param(jnp.asarray(_rng(11).normal(size=(OBS, ACTIONS)) * 0.3, jnp.float32))
        wv = tj.param(jnp.asarray(_rng(12).normal(size=(OBS,)) * 0.3, jnp.float32))
        logits = obs @ wp
        logp_all = tj.log_softmax(logits)
        logp = (logp_all * tj.one_hot(action, ACTIONS)).sum()
        value = obs @ wv
        delta = tj.placeholder((), domain=(b, t))
        delta[b, T - 1] = reward[b, T - 1] - value[b, T - 1]
        delta[True] = reward + GAMMA * value[b, t + 1] - value
        adv = tj.placeholder((), domain=(b, t))
        adv[b, T - 1] = delta[b, T - 1]
        adv[True] = delta + GAMMA * LAM * adv[b, t + 1]
        a = adv.detach() if detach_advantages else adv
        ratio = tj.exp(logp - old_logp)
        policy = -tj.minimum(ratio * a, tj.clip(ratio, 1 - CLIP, 1 + CLIP) * a)
        returns = (a + value).detach() if detach_advantages else a + value.detach()
        value_loss = (value - returns) ** 2
        entropy = -(tj.exp(logp_all) * logp_all).sum()
        per_step = policy + 0.5 * value_loss - 0.01 * entropy
        loss = per_step[0 : b.bound, 0:T].mean()
        gp, gv = tj.grad(loss, [wp, wv])
        p.output("gp", gp)
        p.output("gv", gv)
        p.output("adv", adv[0 : b.bound, 0:T])
    return p, b, t


def _ppo_oracle(wp: Any, wv: Any, inp: dict, detach_advantages: bool) -> Any:
    obs, action, old_logp, reward = inp["obs"], inp["action"], inp["old_logp"], inp["reward"]
    logp_all = jax.nn.log_softmax(obs @ wp)
    logp = jnp.take_along_axis(logp_all, action[..., None], axis=-1)[..., 0]
    value = obs @ wv
    nxt = jnp.concatenate([value[:, 1:], jnp.zeros((B, 1))], axis=1)
    delta = reward + GAMMA * nxt - value
    advs, acc = [], jnp.zeros(B)
    for k in reversed(range(T_PPO)):
        acc = delta[:, k] + GAMMA * LAM * acc
        advs.append(acc)
    adv = jnp.stack(advs[::-1], axis=1)
    a = jax.lax.stop_gradient(adv) if detach_advantages else adv
    ratio = jnp.exp(logp - old_logp)
    policy = -jnp.minimum(ratio * a, jnp.clip(ratio, 1 - CLIP, 1 + CLIP) * a)
    if detach_advantages:
        returns = jax.lax.stop_gradient(a + value)
    else:
        returns = a + jax.lax.stop_gradient(value)
    value_loss = (value - returns) ** 2
    entropy = -(jnp.exp(logp_all) * logp_all).sum(-1)
    return (policy + 0.5 * value_loss - 0.01 * entropy).mean()


@pytest.mark.parametrize("detach_advantages", [True, False])
def test_ppo_clipped_loss_with_gae(detach_advantages: bool) -> None:
    p, b, t = _ppo_program(detach_advantages)
    rng = _rng(13)
    inp = {
        "obs": rng.normal(size=(B, T_PPO, OBS)).astype(np.float32),
        "action": rng.integers(0, ACTIONS, size=(B, T_PPO)).astype(np.int32),
        "old_logp": np.log(rng.uniform(0.3, 0.7, size=(B, T_PPO))).astype(np.float32),
        "reward": rng.normal(size=(B, T_PPO)).astype(np.float32),
    }
    wp = jnp.asarray(_rng(11).normal(size=(OBS, ACTIONS)) * 0.3, jnp.float32)
    wv = jnp.asarray(_rng(12).normal(size=(OBS,)) * 0.3, jnp.float32)
    gp, gv = jax.grad(_ppo_oracle, argnums=(0, 1))(wp, wv, inp, detach_advantages)
    for out in _both(p, {b.bound: B, t.bound: T_PPO}, inp):
        _close(out["gp"], gp, 1e-4)
        _close(out["gv"], gv, 1e-4)


# -- a parameter read at a shifted iteration ------------------------------------------------------


def test_gradient_through_a_parameter_read_at_the_previous_iteration() -> None:
    """loss[i] reads w[i-1] (and w[i]): the gradient at w[q] collects loss[q+1] and loss[q]."""
    iters = 6
    with tj.Program() as p:
        (i,) = p.dims("i")
        target = tj.input("target", (2,), domain=(i,))
        w = tj.placeholder((2,), domain=(i,))
        w[True] = target * 0.5 + 1.0
        loss = tj.placeholder((), domain=(i,))
        loss[0] = (w[0] ** 2).sum()
        loss[True] = (tj.sin(w[i - 1]) * w[i]).sum()
        (g,) = tj.grad(loss, [w])
        p.output("g", g[0 : i.bound])
    tg = _rng(14).normal(size=(iters, 2)).astype(np.float32)

    def oracle(w: Any) -> Any:
        return (w[0] ** 2).sum() + sum((jnp.sin(w[k - 1]) * w[k]).sum() for k in range(1, iters))

    want = jax.grad(oracle)(jnp.asarray(tg * 0.5 + 1.0))
    for out in _both(p, {i.bound: iters}, {"target": tg}):
        _close(out["g"], want)


# -- an optimiser state in and out: a run continued from where another left off -----------------


def _continued_adam(n: int, d: int, steps: int, tx: optax.GradientTransformation) -> tj.Program:
    """``steps`` Adam steps from parameters and an optimiser state given as inputs, with the
    state after the last step as outputs (a chunk of a longer run)."""
    shapes = {"w": jnp.zeros(d), "b": jnp.zeros(())}
    state_leaves, _ = jax.tree_util.tree_flatten(tx.init(shapes))
    with tj.Program() as p:
        (i,) = p.dims("i")
        xs, ys = tj.input("x", (n, d), domain=(i,)), tj.input("y", (n,), domain=(i,))
        start = {"w": tj.input("w0", (d,)), "b": tj.input("b0", ())}
        given = [tj.input(f"s{k}", a.shape, a.dtype) for k, a in enumerate(state_leaves)]
        state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tx.init(shapes)), given)
        params = tj.param(start, domain=(i,))
        loss = ((xs[i] @ params["w"] + params["b"] - ys[i]) ** 2).mean()
        new, after = tj.optim.step(
            tx, params, tj.grad(loss, params), over=i, state=state, with_state=True
        )
        p.output("params", {k: v[i.bound - 1] for k, v in new.items()})
        last = jax.tree_util.tree_map(
            lambda x: x[i.bound - 1], after, is_leaf=lambda x: isinstance(x, tj.RT)
        )
        p.output("state", last)
    return p


def test_an_optimiser_state_given_and_returned_continues_an_optax_loop() -> None:
    """Two chunks of 3 steps, the second from the first's parameters and Adam state (its step
    count included), equal 6 steps of an optax loop, compiled and in the reference."""
    n, d = 8, 3
    rng = _rng(7)
    x = rng.normal(size=(6, n, d)).astype(np.float32)
    y = rng.normal(size=(6, n)).astype(np.float32)
    tx = optax.adam(0.1)
    p = _continued_adam(n, d, 3, tx)

    def loss_fn(prm: dict, xb: np.ndarray, yb: np.ndarray) -> jax.Array:
        return ((xb @ prm["w"] + prm["b"] - yb) ** 2).mean()

    prm = {"w": jnp.zeros(d), "b": jnp.zeros(())}
    state = tx.init(prm)
    for k in range(6):
        updates, state = tx.update(jax.grad(loss_fn)(prm, x[k], y[k]), state, prm)
        prm = optax.apply_updates(prm, updates)
    for run in ("reference", "compiled"):
        params, opt = {"w": jnp.zeros(d), "b": jnp.zeros(())}, tx.init(prm)
        for chunk in range(2):
            inputs = {"x": x[3 * chunk : 3 * chunk + 3], "y": y[3 * chunk : 3 * chunk + 3]}
            inputs |= {"w0": params["w"], "b0": params["b"]}
            inputs |= {f"s{k}": v for k, v in enumerate(jax.tree_util.tree_leaves(opt))}
            if run == "reference":
                out = tj.reference.run(p, bounds={"I": 3}, inputs=inputs)
            else:
                out = p.compile({"I": 3})(**inputs)
            params, opt = out["params"], out["state"]
        _close(params["w"], prm["w"])
        _close(params["b"], prm["b"])
        assert int(opt[0].count) == 6


def test_an_optimiser_state_of_another_structure_is_refused() -> None:
    with tj.Program() as p:
        (i,) = p.dims("i")
        params = tj.param({"w": jnp.zeros(3)}, domain=(i,))
        loss = (params["w"] ** 2).sum()
        with pytest.raises(tj.TempoError, match="`state` must have the structure of"):
            tj.optim.step(optax.adam(0.1), params, tj.grad(loss, params), over=i, state=())
        sgd_state = optax.sgd(0.1, momentum=0.9).init({"w": jnp.zeros(4)})
        with pytest.raises(tj.TempoError, match=r"`state` leaf 0 must be float32\[3\]"):
            tj.optim.step(
                optax.sgd(0.1, momentum=0.9), params, tj.grad(loss, params), over=i,
                state=sgd_state,
            )  # fmt: skip


# -- flax parameters in, the same pytree out ------------------------------------------------------


def _is_tensor(x: Any) -> bool:
    return isinstance(x, tj.RT)


def test_flax_mlp_trained_with_adam_comes_back_as_its_pytree() -> None:
    import flax.linen as nn

    model = nn.Sequential([nn.Dense(8), nn.tanh, nn.Dense(1)])
    rng = _rng(15)
    x = rng.normal(size=(16, 2)).astype(np.float32)
    y = np.sin(x.sum(1, keepdims=True)).astype(np.float32)
    init = model.init(jax.random.key(0), x)
    tx, iters = optax.adam(1e-2), 12
    with tj.Program() as p:
        (i,) = p.dims("i")
        xs, ys = tj.input("x", (16, 2)), tj.input("y", (16, 1))
        params = tj.param(init, domain=(i,))
        loss = ((tj.lift(model.apply)(params, xs) - ys) ** 2).mean()
        new = tj.optim.step(tx, params, tj.grad(loss, params), over=i)
        last = jax.tree_util.tree_map(lambda v: v[i.bound - 1], new, is_leaf=_is_tensor)
        p.output("params", last)

    prm, state = init, tx.init(init)
    for _ in range(iters):
        g = jax.grad(lambda q: ((model.apply(q, x) - y) ** 2).mean())(prm)
        updates, state = tx.update(g, state, prm)
        prm = optax.apply_updates(prm, updates)
    for out in _both(p, {i.bound: iters}, {"x": x, "y": y}):
        assert jax.tree_util.tree_structure(out["params"]) == jax.tree_util.tree_structure(prm)
        jax.tree_util.tree_map(lambda a, b: _close(a, b, 1e-5), out["params"], prm)


def test_nnx_state_trained_with_sgd_comes_back_as_a_state() -> None:
    from flax import nnx

    graphdef, state = nnx.split(nnx.Linear(2, 1, rngs=nnx.Rngs(0)))
    rng = _rng(16)
    x = rng.normal(size=(16, 2)).astype(np.float32)
    y = (x @ np.array([[1.0], [-1.0]])).astype(np.float32)
    iters = 5
    with tj.Program() as p:
        (i,) = p.dims("i")
        xs, ys = tj.input("x", (16, 2)), tj.input("y", (16, 1))
        params = tj.param(state, domain=(i,))
        predict = tj.lift(lambda st, inp: nnx.merge(graphdef, st)(inp))
        loss = ((predict(params, xs) - ys) ** 2).mean()
        new = tj.optim.step(optax.sgd(0.1), params, tj.grad(loss, params), over=i)
        p.output("state", jax.tree_util.tree_map(lambda v: v[i.bound - 1], new, is_leaf=_is_tensor))

    want = state
    for _ in range(iters):
        g = jax.grad(lambda s: ((nnx.merge(graphdef, s)(x) - y) ** 2).mean())(want)
        want = jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, want, g)
    for out in _both(p, {i.bound: iters}, {"x": x, "y": y}):
        assert isinstance(out["state"], nnx.State)
        jax.tree_util.tree_map(lambda a, b: _close(a, b), out["state"], want)


def test_zero_gradients_off_the_path_and_through_integer_outputs() -> None:
    """``v`` is not read by the loss; ``w`` reaches it only through an argmax (no derivative)."""
    steps = 4
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), domain=(t,))
        w = tj.param(jnp.asarray([0.5, -1.0, 2.0]))
        v = tj.param(jnp.asarray([1.0, 1.0]))
        pick = tj.argmax(x * w)
        loss = (x * tj.one_hot(pick, 3)).sum() ** 2
        gw, gv = tj.grad(loss, [w, v])
        p.output("gw", gw)
        p.output("gv", gv)
    xs = _rng(18).normal(size=(steps, 3)).astype(np.float32)

    def oracle(w: Any, v: Any) -> Any:
        pick = jnp.argmax(xs * w, axis=1)
        return ((xs * jax.nn.one_hot(pick, 3)).sum(1) ** 2).sum() + 0.0 * v.sum()

    want = jax.grad(oracle, argnums=(0, 1))(jnp.asarray([0.5, -1.0, 2.0]), jnp.ones(2))
    for out in _both(p, {t.bound: steps}, {"x": xs}):
        _close(out["gw"], want[0])
        _close(out["gv"], want[1])
