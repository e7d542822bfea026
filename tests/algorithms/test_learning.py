"""PPO learns CartPole-v1 as one tempo_jax program (a short run of the demo's config)."""

from __future__ import annotations

import numpy as np
import pytest

from tempo_jax.algorithms import config as rl_config
from tempo_jax.algorithms import ppo


@pytest.mark.slow
def test_ppo_reaches_a_mean_return_of_300_on_cartpole_within_100k_steps() -> None:
    """CleanRL's settings (4 envs x 128 steps, 4 epochs x 4 minibatches), 200 iterations
    (102k env steps): the mean return of the episodes that end, over 20 iterations, passes 300
    (the full runs reach 400 within 38k-93k steps for seeds 0-2)."""
    config = rl_config.load("configs/rl/ppo_cartpole.yaml", iterations=200, seed=0)
    out = ppo.make_train(config)()
    returns = np.asarray(out["mean_return"], np.float64)
    returns[np.asarray(out["episodes"]) == 0] = np.nan
    smooth = [np.nanmean(returns[max(0, k - 19) : k + 1]) for k in range(len(returns))]
    assert max(smooth) > 300
    assert np.isfinite(np.asarray(out["loss"])).all()
