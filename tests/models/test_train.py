"""A decoder trained as one program (``models.train``) against the hand-written JAX/optax loop
of the same model on the same batches (``models.baselines.train_loop``): the loss before every
step and the trained parameters."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tempo_jax.models import train
from tempo_jax.models.baselines import train_loop
from tempo_jax.models.config import tiny_gpt2, tiny_llama
from tempo_jax.models.params import init_params

BATCH, SEQ = 3, 12


def _run(cfg, iterations: int, tx) -> tuple[dict, tuple]:
    params = init_params(cfg, jax.random.PRNGKey(1))
    # counting modulo 11 from a random start per row: a sequence a model learns quickly
    starts = np.random.default_rng(2).integers(0, 11, size=(iterations, BATCH, 1))
    rows = ((starts + np.arange(SEQ + 1)) % 11).astype(np.int32)
    program = train.build_training_program(cfg, params, tx, batch=BATCH, seq_len=SEQ)
    out = program.compile({"I": iterations, "T": SEQ})(tokens=rows)
    want = train_loop.train(cfg, tx, train.per_layer(cfg, params), jnp.asarray(rows))
    return {"out": out, "params": params}, want


def test_gpt2_loss_curve_and_weights_equal_the_optax_loop() -> None:
    cfg = tiny_gpt2()
    got, (losses, prm) = _run(cfg, 20, optax.adam(3e-3))
    np.testing.assert_allclose(got["out"]["loss"], losses, rtol=1e-4, atol=1e-4)
    trained = train.stacked(got["out"]["params"])
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(train.stacked(prm)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert losses[-1] < losses[0]  # it learns (the same batches' statistics)


@pytest.mark.slow
def test_llama_with_a_window_equals_the_optax_loop() -> None:
    """Grouped-query attention, RoPE, an untied head and a sliding window."""
    cfg = dataclasses.replace(tiny_llama(), window=5)
    got, (losses, _) = _run(cfg, 6, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)))
    np.testing.assert_allclose(got["out"]["loss"], losses, rtol=1e-4, atol=1e-4)
