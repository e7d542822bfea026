"""Saved residuals: a vjp op reads what its forward op kept instead of running it again.

Oracles: ``jax.grad`` of the same computation written in plain JAX, and the reference
interpreter; structure: which ops gained residual outputs, and that the backward of a matmul
layer holds one matmul (the weight's cotangent), not the forward's again.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj

D, ROWS, STEPS = 8, 4, 6


def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.tanh(x @ w)


def _elementwise(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.tanh(x * w[0])


def _weight_only(x: jax.Array, w: jax.Array) -> jax.Array:
    return x @ jnp.sin(w)  # sin(w): a residual of the weight alone, larger than the output


def _indexed(x: jax.Array, w: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(x @ w, axis=-1)  # an integer residual: the picked columns
    return jnp.take_along_axis(logp, jnp.argmax(x, -1)[:, None], -1)


def _viewed(x: jax.Array, w: jax.Array) -> jax.Array:
    # the weight's residual is x's rows rearranged: a view of the input, taken from it again
    return jnp.transpose(x.reshape(ROWS, D // 2, 2), (0, 2, 1)).reshape(ROWS, D) @ w


def _masked(x: jax.Array, w: jax.Array) -> jax.Array:
    # the mask, larger than the output, is computed from constants alone: made again in the
    # backward, not stored (nor a reason to recompute the forward)
    h = x @ w
    pairs = h[:, :, None] * h[:, None, :]
    mask = jax.lax.broadcasted_iota(jnp.int32, pairs.shape, 1) >= jnp.arange(D)  # an iota
    return jax.lax.select(mask, pairs, jnp.zeros_like(pairs)).sum(-1)


def _program(payload: Callable) -> tuple[tj.Program, np.ndarray]:
    rng = np.random.default_rng(0)
    start = jnp.asarray(rng.normal(size=(D, D)) * 0.5, jnp.float32)
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (ROWS, D), jnp.float32, domain=(t,))
        w = tj.param(start)
        h = tj.lift(payload, name="layer")(x, w)
        (g,) = tj.grad((h**2).mean(), [w])
        p.output("g", g)
    return p, np.asarray(start)


def _ops(program: tj.Program, name: str) -> list:
    return [op for op in program.recorded_ops() if op.name == name]


@pytest.mark.parametrize(
    ("payload", "saves"),
    [
        (_matmul, True),
        (_elementwise, False),
        (_weight_only, False),
        (_indexed, True),
        (_viewed, False),
        (_masked, True),
    ],
    ids=["matmul", "elementwise", "weight-only", "indexed", "viewed", "masked"],
)
def test_gradients_equal_jax_grad_with_or_without_saved_residuals(
    payload: Callable, saves: bool
) -> None:
    program, start = _program(payload)
    xs = np.random.default_rng(1).normal(size=(STEPS, ROWS, D)).astype(np.float32)
    (layer,) = _ops(program, "layer")
    assert (len(layer.outputs) > 1) == saves

    def loss(w: jax.Array) -> jax.Array:
        return sum((payload(x, w) ** 2).mean() for x in xs)

    want = jax.grad(loss)(jnp.asarray(start))
    got = program.compile({"T": STEPS})(x=xs)["g"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    ref = tj.reference.run(program, {"T": STEPS}, {"x": xs})["g"]
    np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-5)


def test_the_backward_of_a_matmul_layer_does_not_run_its_forward_again() -> None:
    """Only the weight is differentiated: its cotangent is one matmul; recomputing the
    forward would be a second."""
    program, _ = _program(_matmul)
    (layer,) = _ops(program, "layer")
    (vjp,) = _ops(program, "vjp[layer]")
    # the residual outputs appended to the layer's own, and tanh's output where JAX's vjp of
    # tanh reads it (JAX 0.10's does, 0.11's keeps a residual of its own instead)
    read = {e.out for e in vjp.inputs if e.src == layer.id}
    assert set(range(1, len(layer.outputs))) <= read <= set(range(len(layer.outputs)))
    specs = [program.to_ir().read_spec(e) for e in vjp.inputs]
    args = [jnp.zeros(s.shape, s.dtype) for s in specs]
    text = str(jax.make_jaxpr(vjp.payload.fn)(*args))
    assert text.count("dot_general") == 1


def test_a_view_of_an_input_is_taken_from_the_input_again_not_stored() -> None:
    """A linear layer over rearranged inputs: the weight's cotangent needs those rows, a view
    of the input; nothing is stored beside the input, and the backward still holds one matmul
    (it does not run the forward again)."""
    program, _ = _program(_viewed)
    (layer,) = _ops(program, "layer")
    (vjp,) = _ops(program, "vjp[layer]")
    assert len(layer.outputs) == 1
    assert not any(e.src == layer.id for e in vjp.inputs)
    specs = [program.to_ir().read_spec(e) for e in vjp.inputs]
    args = [jnp.zeros(s.shape, s.dtype) for s in specs]
    text = str(jax.make_jaxpr(vjp.payload.fn)(*args))
    assert text.count("dot_general") == 1
    assert "transpose" in text  # the view, made again from the input


def _acting(detached: bool) -> tuple[tj.Program, np.ndarray]:
    """A layer in a recurrence over ``t``: ``h[t + 1] = layer(h[t], w)`` (the recurrence
    carrying ``w``'s gradient back), or, ``detached``, fed back through ``detach`` (a policy
    acting on what its actions led to: the gradient stops there)."""
    start = np.asarray(np.random.default_rng(0).normal(size=(D, D)) * 0.5, np.float32)
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (ROWS, D), jnp.float32, domain=(t,))
        w = tj.param(jnp.asarray(start))
        h = tj.placeholder((ROWS, D), jnp.float32, domain=(t,), name="h")
        out = tj.lift(_matmul, name="layer")(h, w)
        h[0] = x[0]
        h[t + 1] = (out.detach() if detached else out)[t] + x[t + 1]
        (g,) = tj.grad((out**2).mean(), [w])
        p.output("g", g)
    return p, start


@pytest.mark.parametrize("detached", [False, True], ids=["carried", "detached"])
def test_a_recurrence_the_gradient_does_not_flow_back_along_recomputes(detached: bool) -> None:
    """Detached, the layer's points run one at a time and its vjp's over all of them at once:
    its residuals would be stored a step at a time, so the vjp recomputes the forward (one
    batched pass). With the gradient carried back along ``t`` (backpropagation through
    time), the vjp is a recurrence too and reads the saved residuals."""
    program, start = _acting(detached)
    (layer,) = _ops(program, "layer")
    assert (len(layer.outputs) > 1) is not detached
    xs = np.random.default_rng(1).normal(size=(STEPS, ROWS, D)).astype(np.float32)

    def loss(w: jax.Array) -> jax.Array:
        h, total = jnp.asarray(xs[0]), 0.0
        for k in range(STEPS):
            out = _matmul(h, w)
            total = total + (out**2).mean()
            if k + 1 < STEPS:
                h = (jax.lax.stop_gradient(out) if detached else out) + xs[k + 1]
        return total

    want = jax.grad(loss)(jnp.asarray(start))
    got = program.compile({"T": STEPS})(x=xs)["g"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
