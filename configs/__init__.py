"""The shipped configs (YAML package data), found by name or path, read with clear errors.

Configs live in kinds: ``rl/`` (one RL training run), ``bench/`` (a benchmark sweep) and
``train/`` (LM training). :func:`find` takes a name (``ppo_cartpole``, or ``rl/ppo_cartpole``)
or a path to a YAML file; :func:`read` returns the file's mapping.

Example::

    from tempo_jax import configs
    path = configs.find("ppo_cartpole")      # .../configs/rl/ppo_cartpole.yaml
    data = configs.read("ppo_cartpole")      # {"algo": "ppo", "env": "CartPole-v1", ...}
"""

from __future__ import annotations

import importlib.resources
import pathlib
from typing import Any

import yaml

KINDS = ("rl", "bench", "train")


class ConfigError(ValueError):
    """A config that cannot be used: its message names the file or key, the value and what is
    allowed, on one line."""


def _root() -> pathlib.Path:
    return pathlib.Path(str(importlib.resources.files(__name__)))


def names(kind: str | None = None) -> list[str]:
    """The shipped configs as ``kind/name``, of one kind or all."""
    kinds = KINDS if kind is None else (kind,)
    return sorted(
        f"{k}/{path.stem}" for k in kinds for path in (_root() / k).glob("*.yaml") if path.is_file()
    )


def find(name: str | pathlib.Path, kind: str | None = None) -> pathlib.Path:
    """The YAML file ``name`` means: an existing path, else a shipped config ``name`` or
    ``kind/name`` (of ``kind`` when given). Raises :class:`ConfigError` listing the shipped
    names when there is none."""
    path = pathlib.Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {str(name)!r} does not exist")
        return path
    stem = str(name).removesuffix(".yaml")
    shipped = names(kind)
    hits = [n for n in shipped if n == stem or n.split("/", 1)[1] == stem]
    if len(hits) != 1:
        what = "no" if not hits else "more than one"
        raise ConfigError(
            f"{what} shipped config named {stem!r}; shipped: {', '.join(shipped)} "
            "(or give a path to a .yaml file)"
        )
    return _root() / f"{hits[0]}.yaml"


def read(name: str | pathlib.Path, kind: str | None = None) -> dict[str, Any]:
    """The mapping in the config ``name`` (:func:`find`). Raises :class:`ConfigError` for a
    file that is not YAML, is empty, or holds something other than a mapping."""
    path = find(name, kind)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the config is empty (expected a mapping of keys to values)")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys to values, got {type(data).__name__}"
        )
    return data
