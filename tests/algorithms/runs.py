"""Comparing two training runs' outputs (``params``, ``mean_return``, ``episodes``, ``loss``
and the metrics both report)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from tempo_jax.algorithms.ppo import METRICS


def assert_same_run(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Episode returns and counts to 1e-5, losses and every parameter leaf to 1e-4."""
    for name in ("mean_return", "episodes"):
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got["loss"]), np.asarray(want["loss"]), rtol=1e-4)
    for name in METRICS:  # what both runs report of the policy and value losses, entropy, ...
        if name in got and name in want:
            np.testing.assert_allclose(
                np.asarray(got[name]), np.asarray(want[name]), rtol=1e-4, atol=1e-6, err_msg=name
            )
    leaves = zip(
        jax.tree_util.tree_leaves(got["params"]),
        jax.tree_util.tree_leaves(want["params"]),
        strict=True,
    )
    for a, b in leaves:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
