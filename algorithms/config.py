"""Configs of the RL algorithms: frozen dataclasses loaded from ``configs/rl/*.yaml``.

:func:`load` reads a shipped config by name (``ppo_cartpole``) or a YAML path, accepts the
hyperparameter names RL users know (:data:`ALIASES`: ``num_envs``, ``learning_rate``,
``total_timesteps``, ...), and checks every key, type and range before anything is built:
a bad value raises :class:`~tempo_jax.configs.ConfigError` naming the key, the value and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import pathlib
import typing
from typing import Any, Literal

import optax

from tempo_jax.configs import ConfigError, read

# CleanRL / purejaxrl / stable-baselines names -> ours (``total_timesteps`` is handled apart:
# it sets ``iterations`` from ``envs`` x ``steps``)
ALIASES: dict[str, str] = {
    "num_envs": "envs",
    "num_steps": "steps",
    "n_steps": "steps",
    "learning_rate": "lr",
    "ent_coef": "entropy_coef",
    "vf_coef": "value_coef",
    "clip_coef": "clip",
    "clip_range": "clip",
    "update_epochs": "epochs",
    "n_epochs": "epochs",
    "num_minibatches": "minibatches",
    "num_iterations": "iterations",
    "hidden_size": "width",
    "clip_vloss": "clip_value_loss",
}


def _field(default: Any, help: str) -> Any:
    """A config field with its help text (the command line's flag help)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """One training run. ``iterations`` x ``envs`` x ``steps`` env steps in all."""

    algo: Literal["ppo", "reinforce", "a2c"] = _field("ppo", "the algorithm")
    env: str = _field("CartPole-v1", "a registered environment (algorithms.envs.REGISTRY)")
    env_options: dict[str, Any] = dataclasses.field(
        default_factory=dict, metadata={"help": "to the env builder"}
    )
    iterations: int = _field(100, "I: training iterations (alias: num_iterations)")
    envs: int = _field(8, "B: environments run side by side (alias: num_envs)")
    steps: int = _field(128, "T: steps per environment per iteration (alias: num_steps)")
    width: int = _field(64, "hidden units per layer of the actor and critic")
    layers: int = _field(2, "hidden layers of the actor and critic")
    cnn: bool = _field(False, "a convolutional torso for image observations")
    lr: float = _field(2.5e-4, "Adam's learning rate (alias: learning_rate)")
    anneal_lr: bool = _field(
        False, "decay the learning rate linearly to 0 over the iterations (CleanRL's anneal_lr)"
    )
    max_grad_norm: float = _field(0.5, "global-norm gradient clipping")
    gamma: float = _field(0.99, "discount")
    gae_lambda: float = _field(0.95, "GAE's lambda (PPO, A2C)")
    clip: float = _field(0.2, "PPO's ratio clip (alias: clip_coef)")
    clip_value_loss: bool = _field(
        False, "PPO: clip the value's change from the acting value by clip (alias: clip_vloss)"
    )
    value_coef: float = _field(0.5, "weight of the value loss (alias: vf_coef)")
    entropy_coef: float = _field(0.01, "weight of the entropy bonus (alias: ent_coef)")
    epochs: int = _field(1, "PPO epochs per iteration (alias: update_epochs)")
    minibatches: int = _field(1, "PPO minibatches per epoch (alias: num_minibatches)")
    n_step: int = _field(0, "REINFORCE with n-step TD returns when > 0 (0: Monte-Carlo returns)")
    seed: int = _field(0, "the run's random seed")
    devices: int = _field(1, "split the envs over this many devices (JAX's SPMD; -1: every device)")

    def optimiser(self) -> optax.GradientTransformation:
        """Global-norm clipping, then Adam (``eps=1e-5``): every algorithm and baseline. With
        ``anneal_lr``, iteration ``k``'s updates use ``lr * (1 - k / iterations)``, as CleanRL
        sets it per iteration (the schedule counts ``epochs * minibatches`` updates an
        iteration)."""
        per_iteration = self.epochs * self.minibatches

        def annealed(count: Any) -> Any:
            return self.lr * (1.0 - (count // per_iteration) / self.iterations)

        lr = annealed if self.anneal_lr else self.lr
        return optax.chain(optax.clip_by_global_norm(self.max_grad_norm), optax.adam(lr, eps=1e-5))


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


_RANGES: dict[str, tuple[str, Any]] = {  # key -> (rule, bound)
    "iterations": (">=", 1),
    "envs": (">=", 1),
    "steps": (">=", 1),
    "width": (">=", 1),
    "layers": (">=", 1),
    "lr": (">", 0),
    "max_grad_norm": (">", 0),
    "gamma": ("in", (0.0, 1.0)),
    "gae_lambda": ("in", (0.0, 1.0)),
    "clip": (">", 0),
    "value_coef": (">=", 0),
    "entropy_coef": (">=", 0),
    "epochs": (">=", 1),
    "minibatches": (">=", 1),
    "n_step": (">=", 0),
    "seed": (">=", 0),
}


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(RLConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(RLConfig)}


# field type -> (the values it takes, as words); bool is no int or float here
_KINDS: dict[Any, tuple[Any, str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _typed(key: str, value: Any, kind: Any) -> Any:
    """``value`` as the type of field ``key``, or a :class:`ConfigError`."""
    if typing.get_origin(kind) is Literal:
        allowed = typing.get_args(kind)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    takes, words = _KINDS.get(kind, (lambda v: isinstance(v, dict), "a mapping"))
    if not takes(value):
        raise ConfigError(f"{key}: expected {words}, got {value!r}")
    return float(value) if kind is float else value


def validate(config: RLConfig) -> RLConfig:
    """``config`` if every field is of its type and in its range (and the environment is
    registered, the minibatches divide the batch), else a :class:`ConfigError` naming the
    key, the value and what is allowed."""
    from .envs import REGISTRY  # builds nothing: environments are made on demand

    for key, kind in _field_types().items():
        _typed(key, getattr(config, key), kind)
    for key, (rule, bound) in _RANGES.items():
        value = getattr(config, key)
        if rule == ">=" and value < bound:
            raise ConfigError(f"{key}: must be at least {bound}, got {value!r}")
        if rule == ">" and value <= bound:
            raise ConfigError(f"{key}: must be greater than {bound}, got {value!r}")
        if rule == "in" and not bound[0] <= value <= bound[1]:
            raise ConfigError(f"{key}: must be between {bound[0]} and {bound[1]}, got {value!r}")
    if config.devices == 0 or config.devices < -1:
        raise ConfigError(f"devices: must be -1 (every device) or at least 1, got {config.devices}")
    if config.devices > 1 and config.envs % config.devices:
        raise ConfigError(
            f"devices: {config.devices} does not divide envs = {config.envs} (each device runs "
            "as many environments)"
        )
    if config.env not in REGISTRY:
        raise ConfigError(f"env: {config.env!r} is not one of {', '.join(REGISTRY)}")
    if (config.envs * config.steps) % config.minibatches:
        raise ConfigError(
            f"minibatches: {config.minibatches} does not divide envs x steps = "
            f"{config.envs * config.steps}"
        )
    if config.algo != "ppo" and (config.epochs != 1 or config.minibatches != 1):
        raise ConfigError(
            f"epochs, minibatches: {config.algo} takes one full-batch step per iteration "
            f"(both 1), got {config.epochs} and {config.minibatches}"
        )
    if config.algo != "ppo" and config.clip_value_loss:
        raise ConfigError(f"clip_value_loss: PPO's; {config.algo} has no value clipping")
    if config.algo != "reinforce" and config.n_step:
        raise ConfigError(f"n_step: {config.algo} uses GAE (gae_lambda), so n_step must be 0")
    return config


def from_dict(data: dict[str, Any], **overrides: Any) -> RLConfig:
    """A checked :class:`RLConfig` from a mapping (our keys or :data:`ALIASES`; with
    ``total_timesteps``, ``iterations`` is that many env steps over ``envs`` x ``steps``),
    with ``overrides`` (our keys) applied."""
    types = _field_types()
    fields: dict[str, Any] = {}
    total = None
    for key, value in {**data, **overrides}.items():
        if key == "total_timesteps":
            total = value
            continue
        name = ALIASES.get(key, key)
        if name not in types:
            raise ConfigError(
                f"{key}: unknown key; allowed: {', '.join(types)}, total_timesteps "
                f"and the aliases {', '.join(ALIASES)}"
            )
        if name in fields:  # a key and its alias
            raise ConfigError(f"{key}: sets {name!r}, which the config sets already")
        fields[name] = _typed(key, value, types[name])
    if total is not None:
        if "iterations" in fields:
            raise ConfigError("total_timesteps: give it or iterations, not both")
        total = _typed("total_timesteps", total, int)
        batch = fields.get("envs", RLConfig.envs) * fields.get("steps", RLConfig.steps)
        if total < batch:
            raise ConfigError(f"total_timesteps: {total} is less than one iteration ({batch})")
        fields["iterations"] = total // batch
    return validate(RLConfig(**fields))


def load(path: str | pathlib.Path, **overrides: Any) -> RLConfig:
    """The checked config in a YAML file or shipped config (``ppo_cartpole``), with
    ``overrides`` applied (:func:`from_dict`)."""
    return from_dict(read(path, kind="rl"), **overrides)
