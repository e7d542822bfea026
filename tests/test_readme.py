"""The README's examples run as printed and agree with their oracles."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _block_after(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_training_example_runs_and_recovers_the_weights() -> None:
    scope: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(_block_after("## Training"), "README.md", "exec"), scope)
    out = scope["out"]
    np.testing.assert_allclose(np.asarray(out["w"]), [2.0, -1.0], atol=1e-2)
    assert float(out["loss"][-1]) < 1e-3 < float(out["loss"][0])


def test_decoding_example_runs_and_matches_the_scan_decoder() -> None:
    import jax

    from tempo_jax.models.baselines import scan
    from tempo_jax.models.params import init_params

    scope: dict = {}
    exec(compile(_block_after("## LLM decoding"), "README.md", "exec"), scope)
    out, greedy, cfg = scope["out"], scope["greedy"], scope["cfg"]
    assert out["tokens"].shape == (2, 16) and out["logits"].shape == (2, 15, cfg.vocab)
    params = init_params(cfg, jax.random.PRNGKey(0))
    want = scan.generate(cfg, params, scope["prompt"], 12)
    np.testing.assert_array_equal(greedy["tokens"], want["tokens"])


@pytest.mark.slow  # the program of tests/models/test_train.py, smaller
def test_transformer_training_example_equals_the_optax_loop() -> None:
    import jax.numpy as jnp
    import optax

    from tempo_jax.models import train
    from tempo_jax.models.baselines import train_loop

    scope: dict = {}
    exec(compile(_block_after("### A transformer trained"), "README.md", "exec"), scope)
    cfg, rows = scope["cfg"], scope["rows"]
    start = train.per_layer(cfg, scope["params"])
    losses, _ = train_loop.train(cfg, optax.adam(3e-3), start, jnp.asarray(rows))
    np.testing.assert_allclose(scope["losses"], losses, rtol=1e-4, atol=1e-4)
