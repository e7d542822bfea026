"""The ``tempo-jax`` command: train, evaluate, decode, bench, plot, show-config and launch.

    tempo-jax train ppo_cartpole --iterations 3 --seed 1     # a shipped config by name
    tempo-jax train my_run.yaml --learning-rate 1e-3         # a YAML file; aliases as flags
    tempo-jax train results/rl/ppo_CartPole-v1_seed0 --resume  # continue a stopped run
    tempo-jax evaluate results/rl/ppo_CartPole-v1_seed0      # the deterministic policy
    tempo-jax show-config reinforce_cartpole --num-envs 16   # the checked config, as YAML
    tempo-jax decode --model DIR --prompt "Once upon a time" # a local HF checkpoint
    tempo-jax bench rl_cpu_small --only base                 # a benchmark config
    tempo-jax plot results/rl/ppo_CartPole-v1_seed0          # redraw a run's learning curve
    tempo-jax launch --processes 2 train ppo_cartpole --devices -1  # one run, two processes

Every field of an RL config is a flag (``--help`` lists them with their help); a flag
overrides the config's value. Configs are checked before anything is built: a bad key,
value or file ends the command with one line naming it and exit code 2, no traceback. The
parser is tyro's.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import sys
import typing
from collections.abc import Sequence
from typing import Annotated, Any

import tyro
import yaml

from tempo_jax.configs import ConfigError, names, read

# an RL config's fields as optional flags (None: the config's value), with their help
# a mapping, given on the command line as a YAML mapping: --env-options '{episode: 8}'
_MAPPINGS = {"env_options"}


def _override_fields() -> list[tuple[str, Any, Any]]:
    from tempo_jax.algorithms.config import ALIASES, RLConfig

    hints = typing.get_type_hints(RLConfig, include_extras=True)
    out = []
    for field in dataclasses.fields(RLConfig):
        aliases = tuple("--" + k.replace("_", "-") for k, v in ALIASES.items() if v == field.name)
        mapping = field.name in _MAPPINGS
        arg = tyro.conf.arg(
            help=field.metadata.get("help", "")
            + (", a YAML mapping merged into the config's" if mapping else ""),
            help_behavior_hint="(default: the config's)",
            aliases=aliases or None,
        )
        kind = Annotated[(str if mapping else hints[field.name]) | None, arg]
        out.append((field.name, kind, dataclasses.field(default=None)))
    return out


Overrides = dataclasses.make_dataclass("Overrides", _override_fields(), frozen=True)
NO_OVERRIDES = Overrides()
FlagOverrides = Annotated[Overrides, tyro.conf.arg(name="")]  # --lr, not --overrides.lr


def _config(config: str, overrides: Any) -> Any:
    from tempo_jax.algorithms.config import load

    given = {k: v for k, v in dataclasses.asdict(overrides).items() if v is not None}
    for key in sorted(_MAPPINGS & set(given)):
        try:
            given[key] = yaml.safe_load(given[key])
        except yaml.YAMLError:
            raise ConfigError(f"{key}: not a YAML mapping: {given[key]!r}") from None
        if not isinstance(given[key], dict):
            raise ConfigError(
                f"{key}: expected a mapping such as '{{episode: 8}}', got {given[key]!r}"
            )
        given[key] = {**(read(config, kind="rl").get(key) or {}), **given[key]}  # merged
    return load(config, **given)


ConfigName = Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="CONFIG")]


def train(
    config: ConfigName,
    overrides: FlagOverrides = NO_OVERRIDES,
    out: str = "results/rl",
    run: str | None = None,
    overwrite: bool = False,
    checkpoint_every: int | None = None,
    resume: bool = False,
    tensorboard: bool = False,
    seeds: int = 1,
) -> None:
    """Train an RL config (a shipped name such as ppo_cartpole, or a YAML path) as one compiled
    program; metrics, summary, learning curve and checkpoints go to a new directory under
    --out. Ctrl-C stops at the next checkpoint; --resume continues a run.

    Args:
        config: a shipped RL config's name (see show-config) or a YAML file; with --resume,
            the run's directory.
        out: the results root.
        run: the run's directory name (refused if it holds a run, unless --overwrite);
            default: <algo>_<env>_seed<S>, numbered past earlier runs.
        overwrite: write into an existing --run directory.
        checkpoint_every: iterations per compiled call, with a checkpoint after each
            (default: the largest divisor of the iterations up to a tenth of them).
        resume: continue the run in the directory CONFIG from its latest checkpoint (its own
            config and checkpoint interval; no other flag applies but --tensorboard).
        tensorboard: also write TensorBoard scalars to the run's tensorboard/ folder (needs
            tempo_jax[tensorboard]).
        seeds: train this many seeds (the config's seed and the next) side by side, one
            program vmapped over them; the curve shows their mean and a band.
    """
    import tempo_jax as tj
    from tempo_jax.scripts import train_rl

    if resume:
        given = [k for k, v in dataclasses.asdict(overrides).items() if v is not None]
        if given or checkpoint_every is not None or run is not None or seeds != 1:
            flags = (
                ", ".join("--" + k.replace("_", "-") for k in given) or "--run/--checkpoint-every"
            )
            raise ConfigError(f"--resume continues a run with its own settings; drop {flags}")
        tj.enable_compilation_cache()
        train_rl.resume(config, tensorboard)
        return
    checked = _config(config, overrides)
    tj.enable_compilation_cache()
    train_rl.run(checked, out, run, overwrite, checkpoint_every, tensorboard, seeds)


def show_config(
    config: Annotated[str | None, tyro.conf.Positional, tyro.conf.arg(metavar="CONFIG")] = None,
    overrides: FlagOverrides = NO_OVERRIDES,
) -> None:
    """Print an RL config as checked (flags applied) in YAML; without a config, the names of
    the shipped configs.

    Args:
        config: a shipped RL config's name or a YAML file.
    """
    if config is None:
        print("\n".join(names()))
        return
    checked = _config(config, overrides)
    print(yaml.safe_dump(dataclasses.asdict(checked), sort_keys=False), end="")


def decode(
    model: str,
    prompt: Annotated[list[str], tyro.conf.UseAppendAction],
    max_new_tokens: int = 64,
    sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed: int = 0,
    devices: int | None = None,
    tensor_parallel: int = 1,
) -> None:
    """Decode text with a local Hugging Face checkpoint (Llama or GPT-2; config.json,
    safetensors weights and tokenizer.json), compiled by tempo_jax.

    Args:
        model: the checkpoint folder.
        prompt: one or more prompts (a batch).
        max_new_tokens: tokens generated after each prompt.
        sample: sample (default: greedy).
        temperature: the sampling temperature.
        top_k: sample among the k likeliest tokens.
        top_p: sample among the likeliest tokens of this much probability.
        seed: the sampling seed.
        devices: split the prompts over this many devices (-1: all; default: one device, or
            every process's under `tempo-jax launch`).
        tensor_parallel: of those devices, how many split each layer's heads and hidden units.
    """
    from tempo_jax.scripts import decode as script

    argv = ["--model", model, "--max-new-tokens", str(max_new_tokens), "--seed", str(seed)]
    for text in prompt:
        argv += ["--prompt", text]
    argv += ["--temperature", str(temperature), "--top-p", str(top_p)]
    if top_k is not None:
        argv += ["--top-k", str(top_k)]
    if sample:
        argv.append("--sample")
    if devices is not None:
        argv += ["--devices", str(devices)]
    argv += ["--tensor-parallel", str(tensor_parallel)]
    code = script.main(argv)
    if code:
        raise SystemExit(code)


# benchmark config stem prefix -> the script running it
BENCHES = {
    "rl_": "bench_rl",
    "memory_": "bench_memory",
    "decode_": "bench_decode",
    "attention": "bench_attention",
    "loops": "bench_loops",
}


def bench(config: ConfigName, only: str | None = None, out: str | None = None) -> None:
    """Run a benchmark config (a shipped name such as rl_cpu_small, or a YAML path): every
    system side by side, rows to JSON and a plot.

    Args:
        config: a shipped bench config's name or a YAML file.
        only: run one part of the sweep (bench_rl: a factor; bench_decode: a sweep).
        out: the results root (default: the script's).
    """
    import importlib

    from tempo_jax.configs import find

    path = find(config, kind="bench")
    script = next((s for prefix, s in BENCHES.items() if path.stem.startswith(prefix)), None)
    if script is None:
        raise ConfigError(
            f"{path.name}: not a benchmark config (names start with {', '.join(BENCHES)})"
        )
    argv = ["--config", str(path)]
    if only is not None:
        argv += ["--only", only]
    if out is not None:
        argv += ["--out", out]
    module = importlib.import_module(f"tempo_jax.scripts.{script}")
    saved = sys.argv
    sys.argv = [f"tempo-jax bench ({script})", *argv]
    try:
        module.main()
    finally:
        sys.argv = saved


def plot(run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]) -> None:
    """Redraw a training run's learning curve (learning_curve.png) from its metrics.csv and
    summary.json (several seeds: their mean and a band).

    Args:
        run: the run's directory.
    """
    from tempo_jax.algorithms.config import from_dict
    from tempo_jax.scripts import rl_metrics

    folder = pathlib.Path(run)
    metrics, summary = folder / "metrics.csv", folder / "summary.json"
    for path in (metrics, summary):
        if not path.is_file():
            raise ConfigError(f"{path}: no such file (is {folder} a run directory?)")
    config = from_dict(json.loads(summary.read_text())["config"])
    with open(metrics) as f:
        count = sum(1 for _ in csv.DictReader(f))
    rl_metrics.plot(rl_metrics.read(metrics, count), config, folder / "learning_curve.png")
    print(f"wrote {folder / 'learning_curve.png'}")


def evaluate(
    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")],
    episodes: int = 10,
    seed: int = 0,
) -> None:
    """Evaluate a training run's latest checkpoint with the deterministic policy (the likeliest
    or mean action): the episodes' returns, printed and written to evaluation.json.

    Args:
        run: the run's directory.
        episodes: episodes run side by side, one each.
        seed: the environments' random seed.
    """
    from tempo_jax.scripts import train_rl

    if episodes < 1:
        raise ConfigError(f"episodes: must be at least 1, got {episodes}")
    report = train_rl.evaluate_run(run, episodes, seed)
    print(json.dumps(report, indent=2))


COMMANDS = {
    "train": train,
    "evaluate": evaluate,
    "decode": decode,
    "bench": bench,
    "plot": plot,
    "show-config": show_config,
}


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point: the command's exit code (2 for a bad config or flag)."""
    from tempo_jax.scripts import launch
    from tempo_jax.scripts.results import ResultsError

    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["launch"]:  # its own parser: everything after its flags is the command
        return launch.main(args[1:])
    launch.initialize_from_env()
    try:
        tyro.extras.subcommand_cli_from_dict(
            COMMANDS,
            prog="tempo-jax",
            description=__doc__.splitlines()[0],
            args=args,
        )
    except (ConfigError, ResultsError) as error:
        print(f"tempo-jax: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
