"""Configs of the RL algorithms: frozen dataclasses loaded from ``configs/rl/*.yaml``."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import optax
import yaml


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """One training run. ``iterations`` x ``envs`` x ``steps`` env steps in all."""

    algo: str = "ppo"  # ppo | reinforce | a2c
    env: str = "CartPole-v1"
    env_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    iterations: int = 100
    envs: int = 8  # B: environments run side by side
    steps: int = 128  # T: steps per environment per iteration
    width: int = 64
    layers: int = 2
    cnn: bool = False
    lr: float = 2.5e-4
    max_grad_norm: float = 0.5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    epochs: int = 1
    minibatches: int = 1
    n_step: int = 0  # REINFORCE with n-step TD returns when > 0
    seed: int = 0

    def optimiser(self) -> optax.GradientTransformation:
        """Global-norm clipping, then Adam (``eps=1e-5``): every algorithm and baseline."""
        return optax.chain(
            optax.clip_by_global_norm(self.max_grad_norm), optax.adam(self.lr, eps=1e-5)
        )


def check_one_step(config: RLConfig, algo: str) -> None:
    """Raise ``ValueError`` unless ``config`` fits ``algo``, a one-full-batch-step-per-iteration
    algorithm (reinforce | a2c): one epoch and minibatch, and ``n_step`` for REINFORCE only."""
    if config.epochs != 1 or config.minibatches != 1:
        raise ValueError(
            f"{algo} takes one full-batch step per iteration: epochs and minibatches must be 1, "
            f"got {config.epochs} and {config.minibatches}"
        )
    if config.n_step < 0:
        raise ValueError(f"n_step must be 0 (Monte-Carlo returns) or positive, got {config.n_step}")
    if algo != "reinforce" and config.n_step:
        raise ValueError(f"n_step is REINFORCE's; {algo} uses GAE (gae_lambda): set n_step to 0")


def load(path: str | pathlib.Path, **overrides: Any) -> RLConfig:
    """The config in a YAML file, with ``overrides`` applied."""
    data = yaml.safe_load(pathlib.Path(path).read_text()) or {}
    return dataclasses.replace(RLConfig(**data), **overrides)
