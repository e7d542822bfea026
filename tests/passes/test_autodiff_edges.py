"""Autodiff edge cases: each gradient against ``jax.grad`` of the same computation in plain JAX.

Every program runs twice, through the reference interpreter and compiled, and both must
give what ``jax.grad`` gives for a hand-written (unrolled) JAX version of the loss: detach,
constant-point and range reads, parameters read over dims they lack, ops with two outputs,
``loss.backward()`` / ``w.grad``, a flax parameter pytree, a loss reading a shifted
parameter, optax steps, and the errors ``tj.grad`` raises.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tempo_jax as tj

T = 5
W0 = np.array([0.5, -0.3, 0.8], np.float32)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _normal(seed: int, *shape: int) -> np.ndarray:
    return _rng(seed).normal(size=shape).astype(np.float32)


def _is_rt(value: Any) -> bool:
    return isinstance(value, tj.RT)


def _assert_close(got: Any, want: Any) -> None:
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)


def _check(
    program: tj.Program,
    bounds: dict[Any, int],
    inputs: dict[str, Any],
    want: dict[str, Any],
) -> None:
    """The reference interpreter and the compiled program both give ``want``."""
    runs = {
        "reference": tj.reference.run(program, bounds=bounds, inputs=inputs),
        "compiled": program.compile(bounds=bounds)(**inputs),
    }
    for how, got in runs.items():
        for name, value in want.items():
            assert np.shape(got[name]) == np.shape(value), (how, name)
            try:
                _assert_close(got[name], value)
            except AssertionError as err:
                raise AssertionError(f"{how} output {name!r} differs from jax.grad") from err


# -- 1. detach -----------------------------------------------------------------------------------


def test_detach_excludes_its_path_from_the_gradient() -> None:
    xs = _normal(0, T, 3)
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), domain=(t,))
        w = tj.param(jnp.asarray(W0))
        y = tj.tanh(x * w)
        loss = (y * y.detach() + tj.sin(w) * y.detach()).sum()
        (g,) = tj.grad(loss, [w])
        p.output("g", g)

    def jax_loss(w: jax.Array) -> jax.Array:
        y = jnp.tanh(xs * w)
        stopped = jax.lax.stop_gradient(y)
        return (y * stopped + jnp.sin(w) * stopped).sum()

    _check(p, {t.bound: T}, {"x": xs}, {"g": jax.grad(jax_loss)(W0)})


def test_detach_inside_a_recurrence_truncates_backpropagation_through_time() -> None:
    xs = _normal(1, T, 3)
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), domain=(t,))
        w = tj.param(jnp.asarray(W0))
        h = tj.placeholder((3,), domain=(t,))
        h[0] = tj.tanh(x[0] * w)
        h[t + 1] = tj.tanh(h[t].detach() * w + x[t + 1])
        (g,) = tj.grad((h * h).sum(), [w])
        p.output("g", g)

    def jax_loss(w: jax.Array) -> jax.Array:
        h = jnp.tanh(xs[0] * w)
        total = (h * h).sum()
        for k in range(1, T):
            h = jnp.tanh(jax.lax.stop_gradient(h) * w + xs[k])
            total += (h * h).sum()
        return total

    _check(p, {t.bound: T}, {"x": xs}, {"g": jax.grad(jax_loss)(W0)})


# -- 2. constant points --------------------------------------------------------------------------


def test_constant_point_reads_send_their_gradient_to_that_point_only() -> None:
    """``wt[0]`` and ``wt[T-1]`` of a computed tensor, ``x[0]`` and ``x[T-1]`` of an input."""
    xs = _normal(2, T, 3)
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), domain=(t,))
        w = tj.param(jnp.asarray(W0))
        wt = tj.sin(w * x[t])
        first, last = wt[0], wt[t.bound - 1]
        per_t = first * x[t] + tj.exp(w * last) + tj.cos(x[t.bound - 1]) * x[t] * x[0]
        grad_w, grad_x = tj.grad(per_t.sum(), [w, x])
        p.output("g", grad_w)
        p.output("gx", grad_x)

    def jax_loss(w: jax.Array, x: jax.Array) -> jax.Array:
        wt = jnp.sin(w * x)
        return (wt[0] * x + jnp.exp(w * wt[T - 1]) + jnp.cos(x[T - 1]) * x * x[0]).sum()

    g, gx = jax.grad(jax_loss, argnums=(0, 1))(W0, xs)
    _check(p, {t.bound: T}, {"x": xs}, {"g": g, "gx": gx})


# -- 3. dims the parameter lacks -----------------------------------------------------------------


def test_a_constant_param_read_over_b_and_t_gets_the_sum_over_both() -> None:
    xs = _normal(3, 2, T, 3)
    with tj.Program() as p:
        b, t = p.dims("b t")
        x = tj.input("x", (3,), domain=(b, t))
        w = tj.param(jnp.asarray(W0))
        (g,) = tj.grad((tj.tanh(x[b, t] * w) ** 2).sum(), [w])
        p.output("g", g)

    want = jax.grad(lambda w: (jnp.tanh(xs * w) ** 2).sum())(W0)
    _check(p, {b.bound: 2, t.bound: T}, {"x": xs}, {"g": want})


def test_a_param_over_i_read_over_i_b_t_gets_the_sum_over_b_and_t_per_iteration() -> None:
    n_i, n_b, n_t = 3, 2, 3
    xs = _normal(4, n_i, n_b, n_t, 3)
    with tj.Program() as p:
        i, b, t = p.dims("i b t")
        x = tj.input("x", (3,), domain=(i, b, t))
        w = tj.param(jnp.asarray(W0), domain=(i,))
        w[i + 1] = w[i] * 0.5  # a leaf: this definition is not differentiated
        (g,) = tj.grad((tj.tanh(x * w) ** 2).sum(), [w])
        p.output("g", g)

    ws = np.stack([W0 * 0.5**k for k in range(n_i)])
    want = jax.grad(lambda ws: (jnp.tanh(xs * ws[:, None, None, :]) ** 2).sum())(ws)
    _check(p, {i.bound: n_i, b.bound: n_b, t.bound: n_t}, {"x": xs}, {"g": want})


# -- 4. ranges -----------------------------------------------------------------------------------


def test_constant_range_and_shifted_window_reads() -> None:
    """``k[1:4]`` (the same rows at every ``t``) and ``k[max(0, t-2):t+1]``."""
    xs = _normal(5, T, 3)
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), domain=(t,))
        w = tj.param(jnp.asarray(W0))
        k = tj.tanh(x * w)
        fixed = (k[1:4] * x[t]).sum(axis=0)
        window = tj.sin(k[tj.max(0, t - 2) : t + 1]).sum(axis=0) * x[t]
        grad_w, grad_x = tj.grad((fixed * fixed).sum() + (window * window).sum(), [w, x])
        p.output("g", grad_w)
        p.output("gx", grad_x)

    def jax_loss(w: jax.Array, x: jax.Array) -> jax.Array:
        k = jnp.tanh(x * w)
        total = jnp.zeros(())
        for n in range(T):
            fixed = (k[1:4] * x[n]).sum(0)
            window = jnp.sin(k[max(0, n - 2) : n + 1]).sum(0) * x[n]
            total += (fixed * fixed).sum() + (window * window).sum()
        return total

    g, gx = jax.grad(jax_loss, argnums=(0, 1))(W0, xs)
    _check(p, {t.bound: T}, {"x": xs}, {"g": g, "gx": gx})


def test_prefix_and_suffix_range_reads() -> None:
    """``r[0:t+1]`` (growing) and ``r[t:T]`` (shrinking)."""
    xs = _normal(6, T, 3)
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), domain=(t,))
        w = tj.param(jnp.asarray(W0))
        r = tj.sin(x * w)
        loss = (r[t : t.bound].sum(axis=0) * tj.exp(r[0 : t + 1]).mean(axis=0)).sum()
        (g,) = tj.grad(loss, [w])
        p.output("g", g)

    def jax_loss(w: jax.Array) -> jax.Array:
        r = jnp.sin(xs * w)
        return sum((r[n:].sum(0) * jnp.exp(r[: n + 1]).mean(0)).sum() for n in range(T))

    _check(p, {t.bound: T}, {"x": xs}, {"g": jax.grad(jax_loss)(W0)})


# -- 5. two outputs ------------------------------------------------------------------------------


def test_an_op_with_two_outputs_both_feeding_the_loss() -> None:
    xs = _normal(7, T, 3)
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), domain=(t,))
        w = tj.param(jnp.asarray(W0))
        doubled, total = tj.lift(lambda a: (a * 2, a.sum()))(tj.sin(x * w))
        (g,) = tj.grad((doubled * doubled).sum() + total * total[0], [w])
        p.output("g", g)

    def jax_loss(w: jax.Array) -> jax.Array:
        v = jnp.sin(xs * w)
        doubled, total = v * 2, v.sum(-1)
        return (doubled * doubled).sum() + (total * total[0]).sum()

    _check(p, {t.bound: T}, {"x": xs}, {"g": jax.grad(jax_loss)(W0)})


# -- 6. loss.backward(), w.grad and the forms of tj.param ----------------------------------------


def test_backward_sets_grad_of_params_from_a_callable_and_from_an_input() -> None:
    xs, v0 = _normal(8, T, 3), _normal(9, 3)
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), domain=(t,))
        v_init = tj.input("v0", (3,))
        w = tj.param(lambda: jnp.asarray(W0))
        v = tj.param(v_init)
        h = tj.tanh(x * w + v)
        loss = (h * h).sum()
        loss.backward()
        p.output("gw", w.grad)
        p.output("gv", v.grad)
    assert (w.name, v.name) == ("w", "v")

    def jax_loss(w: jax.Array, v: jax.Array) -> jax.Array:
        h = jnp.tanh(xs * w + v)
        return (h * h).sum()

    gw, gv = jax.grad(jax_loss, argnums=(0, 1))(W0, v0)
    _check(p, {t.bound: T}, {"x": xs, "v0": v0}, {"gw": gw, "gv": gv})


def test_a_pytree_init_gives_a_pytree_of_params_with_their_own_grads() -> None:
    xs = _normal(10, T, 3)
    init = {"a": _normal(11, 3, 2), "b": np.ones(2, np.float32)}
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), domain=(t,))
        layer = tj.param(init)
        h = tj.tanh(x) @ layer["a"] + layer["b"]
        (h * h).sum().backward()
        p.output("ga", layer["a"].grad)
        p.output("gb", layer["b"].grad)
    assert set(layer) == {"a", "b"} and all(_is_rt(v) for v in layer.values())
    assert layer["a"].name == "layer['a']" and layer["a"].shape == (3, 2)

    def jax_loss(layer: dict[str, jax.Array]) -> jax.Array:
        h = jnp.tanh(xs) @ layer["a"] + layer["b"]
        return (h * h).sum()

    want = jax.grad(jax_loss)(init)
    _check(p, {t.bound: T}, {"x": xs}, {"ga": want["a"], "gb": want["b"]})


def test_grad_with_a_dict_wrt_returns_a_dict_through_a_recurrence() -> None:
    """Backpropagation through time to a param and to every point of the input."""
    xs = _normal(14, T, 3)
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), domain=(t,))
        w = tj.param(jnp.asarray(W0))
        h = tj.placeholder((3,), domain=(t,))
        h[0] = tj.tanh(x[0] * w)
        h[t + 1] = tj.tanh(h[t] * w + x[t + 1])
        grads = tj.grad((h * h).sum(), {"w": w, "x": x})
        p.output("gw", grads["w"])
        p.output("gx", grads["x"])
    assert grads["w"].domain == () and grads["x"].domain == (t,)

    def jax_loss(w: jax.Array, x: jax.Array) -> jax.Array:
        h = jnp.tanh(x[0] * w)
        total = (h * h).sum()
        for k in range(1, T):
            h = jnp.tanh(h * w + x[k])
            total += (h * h).sum()
        return total

    gw, gx = jax.grad(jax_loss, argnums=(0, 1))(W0, xs)
    _check(p, {t.bound: T}, {"x": xs}, {"gw": gw, "gx": gx})


def test_three_constant_params_keep_their_value_in_every_iteration_when_compiled() -> None:
    """A regression: the schedule runs the last param's merge inside the ``t`` loop under
    ``if t == 0``; its reads at ``t >= 1`` must not come from a ring (zeros there)."""
    xs = np.arange(T * 2, dtype=np.float32).reshape(T, 2) + 1.0
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (2,), domain=(t,))
        w = tj.param(jnp.ones(2))
        a = tj.param(jnp.ones(2))
        b = tj.param(jnp.ones(2))
        h = x * w * a + b
        (g,) = tj.grad((h * h).sum(), [b])
        p.output("h", h)
        p.output("g", g)
    _check(p, {t.bound: T}, {"x": xs}, {"h": xs + 1.0, "g": 2.0 * (xs + 1.0).sum(0)})


# -- 7. a flax parameter pytree ------------------------------------------------------------------


def test_flax_dense_params_get_the_gradient_of_jax_grad_leaf_by_leaf() -> None:
    n_i, n_t, lr = 2, 3, 0.1
    xs = _normal(12, n_i, n_t, 3)
    model = nn.Dense(2)
    init = model.init(jax.random.PRNGKey(0), jnp.zeros(3))
    with tj.Program() as p:
        i, t = p.dims("i t")
        x = tj.input("x", (3,), domain=(i, t))
        params = tj.param(init, domain=(i,))
        y = tj.lift(lambda prm, v: model.apply(prm, v))(params, x)
        grads = tj.grad((tj.tanh(y) ** 2).sum(), params)
        tj.optim.step(optax.sgd(lr), params, grads, over=i)
        for path, leaf in jax.tree_util.tree_flatten_with_path(grads, is_leaf=_is_rt)[0]:
            p.output("grad" + jax.tree_util.keystr(path), leaf)

    def jax_loss(prm: Any, x: jax.Array) -> jax.Array:
        return (jnp.tanh(jax.vmap(lambda v: model.apply(prm, v))(x)) ** 2).sum()

    prm, per_iteration = init, []
    for k in range(n_i):
        g = jax.grad(jax_loss)(prm, xs[k])
        per_iteration.append(g)
        prm = jax.tree_util.tree_map(lambda q, d: q - lr * d, prm, g)
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *per_iteration)
    want = {
        "grad" + jax.tree_util.keystr(path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(stacked)[0]
    }
    assert len(want) == 2  # kernel and bias
    _check(p, {i.bound: n_i, t.bound: n_t}, {"x": xs}, want)


# -- 8. a loss reading the parameter one iteration back ------------------------------------------


def test_a_loss_reading_w_of_the_previous_iteration_gives_no_gradient_to_the_last_w() -> None:
    n_i = 4
    xs = _normal(13, n_i, 3)
    with tj.Program() as p:
        (i,) = p.dims("i")
        x = tj.input("x", (3,), domain=(i,))
        w = tj.param(jnp.asarray(W0), domain=(i,))
        w[i + 1] = w[i] * 0.5
        loss = tj.placeholder((), domain=(i,))
        loss[0] = (x[0] * x[0]).sum()
        loss[i + 1] = (tj.sin(w[i] * x[i + 1]) ** 2).sum()
        (g,) = tj.grad(loss, [w])
        p.output("g", g)

    ws = np.stack([W0 * 0.5**k for k in range(n_i)])
    want = jax.grad(lambda ws: (jnp.sin(ws[:-1] * xs[1:]) ** 2).sum())(ws)
    assert np.all(np.asarray(want)[-1] == 0.0)
    _check(p, {i.bound: n_i}, {"x": xs}, {"g": want})


# -- 9. errors -----------------------------------------------------------------------------------


def test_a_non_scalar_loss_is_an_error_naming_it_and_the_line() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), domain=(t,))
        w = tj.param(jnp.asarray(W0))
        vec_loss = tj.placeholder((3,), domain=(t,))
        vec_loss[True] = x * w
        with pytest.raises(tj.TempoError, match=r"the loss `vec_loss` must be a float scalar") as e:
            tj.grad(vec_loss, [w])
    assert "float32[3]" in str(e.value) and ".sum()" in str(e.value)
    assert "test_autodiff_edges.py:" in str(e.value)
    assert "`tj.grad(vec_loss, [w])`" in str(e.value)


def test_an_indexed_view_in_wrt_is_an_error_naming_it_and_the_line() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), domain=(t,))
        w = tj.param(jnp.asarray(W0), domain=(t,))
        w[t + 1] = w[t]
        loss = (x * w).sum()
        with pytest.raises(tj.TempoError, match=r"`w\[0\]` is an indexed view") as e:
            tj.grad(loss, [w[0]])
    assert "test_autodiff_edges.py:" in str(e.value)
    assert "`tj.grad(loss, [w[0]])`" in str(e.value)


def test_an_int_tensor_in_wrt_is_an_error_naming_it_and_the_line() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), domain=(t,))
        counts = tj.input("counts", (3,), jnp.int32)
        loss = (x * counts).sum()
        with pytest.raises(tj.TempoError, match=r"`counts` is int32, not a float tensor") as e:
            tj.grad(loss, [counts])
    assert "test_autodiff_edges.py:" in str(e.value)
    assert "`tj.grad(loss, [counts])`" in str(e.value)


def _sin_of_a_param(domain: tuple[tj.Symbol, ...]) -> tuple[tj.RT, tj.RT]:
    """``y = sin(x * w)`` over ``domain`` for an input ``x`` and a param ``w``: (y, w)."""
    x = tj.input("x", (3,), domain=domain)
    w = tj.param(jnp.asarray(W0))
    y = tj.placeholder((3,), domain=domain)
    y[True] = tj.sin(x * w)
    return y, w


def _assert_names_the_read(err: pytest.ExceptionInfo, read: str, line: str) -> None:
    message = str(err.value)
    assert f"the gradient of `{read}`" in message
    assert "test_autodiff_edges.py:" in message and f"`{line}`" in message
    assert ".detach()" in message  # says how to fix it


def test_a_read_at_a_multiple_of_a_dim_cannot_be_inverted() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        y, w = _sin_of_a_param((t,))
        loss = y[2 * t].sum()
        with pytest.raises(tj.UnsupportedError, match=r"cannot invert the index `2 \* t`") as e:
            tj.grad(loss, [w])
    _assert_names_the_read(e, "y[2 * t]", "loss = y[2 * t].sum()")


def test_a_read_at_a_floor_division_of_a_dim_cannot_be_inverted() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        y, w = _sin_of_a_param((t,))
        loss = y[t // 2].sum()
        with pytest.raises(tj.UnsupportedError, match=r"cannot invert the index `t // 2`") as e:
            tj.grad(loss, [w])
    _assert_names_the_read(e, "y[t // 2]", "loss = y[t // 2].sum()")


def test_a_read_indexing_two_dims_by_the_same_dim_cannot_be_inverted() -> None:
    with tj.Program() as p:
        s, t = p.dims("s t")
        y, w = _sin_of_a_param((s, t))
        loss = y[t, t].sum()
        with pytest.raises(tj.UnsupportedError, match=r"`t` indexes two dims") as e:
            tj.grad(loss, [w])
    _assert_names_the_read(e, "y[t, t]", "loss = y[t, t].sum()")


def test_backward_without_any_param_is_an_error_naming_the_loss_and_the_line() -> None:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (3,), domain=(t,))
        loss = tj.placeholder((), domain=(t,))
        loss[True] = (x * x).sum()
        with pytest.raises(tj.TempoError, match=r"`loss.backward\(\)`.*has no `tj.param`") as e:
            loss.backward()
    assert "test_autodiff_edges.py:" in str(e.value)


def test_grad_before_backward_is_an_error_naming_the_param() -> None:
    with tj.Program():
        w = tj.param(jnp.asarray(W0))
        with pytest.raises(tj.TempoError, match=r"`w.grad`.* is not defined.*loss.backward\(\)"):
            _ = w.grad


def test_grad_before_backward_names_the_line() -> None:
    with tj.Program():
        w = tj.param(jnp.asarray(W0))
        with pytest.raises(tj.TempoError) as e:
            _ = w.grad
    assert "test_autodiff_edges.py:" in str(e.value)


# -- 10. optax steps -----------------------------------------------------------------------------


def test_clipped_sgd_steps_match_a_hand_written_optax_loop() -> None:
    n_i = 10
    target = np.array([3.0, -2.0, 0.5], np.float32)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1))
    with tj.Program() as p:
        (i,) = p.dims("i")
        tgt = tj.input("target", (3,))
        w = tj.param(jnp.zeros(3), domain=(i,))
        (g,) = tj.grad(((w - tgt) ** 2).sum(), [w])
        w_next = tj.optim.step(tx, w, g, over=i)
        p.output("ws", w)
        p.output("final", w_next[i.bound - 1])

    w_ref, state, trajectory = jnp.zeros(3), tx.init(jnp.zeros(3)), []
    for _ in range(n_i):
        trajectory.append(w_ref)
        grad = jax.grad(lambda v: ((v - target) ** 2).sum())(w_ref)
        updates, state = tx.update(grad, state, w_ref)
        w_ref = optax.apply_updates(w_ref, updates)
    want = {"ws": np.stack(trajectory), "final": w_ref}
    _check(p, {i.bound: n_i}, {"target": target}, want)
