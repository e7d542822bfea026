"""The ``tempo-jax`` command: every subcommand on tiny configs, each config error pinned to its
one-line message and exit code 2, runs that never destroy earlier runs, and the built wheel
run from an empty directory."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from tempo_jax.algorithms.config import RLConfig, load
from tempo_jax.configs import ConfigError, find, names
from tempo_jax.scripts import cli, results

TINY = {"algo": "ppo", "env": "CartPole-v1", "iterations": 2, "envs": 2, "steps": 8}


def _yaml(tmp_path: pathlib.Path, data: object, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as error:  # a script's own parser (bench) exits with its code
        code = error.code
    out, err = capsys.readouterr()
    return code, out, err


def test_shipped_configs_are_found_by_name_or_kind_and_name() -> None:
    assert find("ppo_cartpole") == find("rl/ppo_cartpole")
    assert find("ppo_cartpole").name == "ppo_cartpole.yaml"
    assert "bench/rl_cpu_small" in names() and "train/lm_tiny" in names()
    assert load("ppo_cartpole") == load(find("ppo_cartpole"))


def test_show_config_applies_flags_and_aliases(capsys) -> None:
    code, out, _ = _run(capsys, "show-config", "ppo_cartpole", "--learning-rate", "1e-3")
    shown = yaml.safe_load(out)
    assert code == 0 and shown["lr"] == 1e-3 and shown["envs"] == 4 and shown["epochs"] == 4
    code, out, _ = _run(capsys, "show-config", "ppo_cartpole", "--num-envs", "8", "--seed", "3")
    assert (yaml.safe_load(out)["envs"], yaml.safe_load(out)["seed"]) == (8, 3)
    code, out, _ = _run(capsys, "show-config")
    assert "rl/ppo_cartpole" in out.split()


def test_env_options_flag_is_a_yaml_mapping_merged_into_the_configs(capsys) -> None:
    code, out, _ = _run(capsys, "show-config", "ppo_paper", "--env-options", "{episode: 8}")
    assert code == 0 and yaml.safe_load(out)["env_options"] == {
        "obs_shape": [3, 4, 4],
        "episode": 8,
    }
    code, _, err = _run(capsys, "show-config", "ppo_paper", "--env-options", "[1, 2]")
    assert code == 2 and "env_options: expected a mapping such as '{episode: 8}', got [1, 2]" in err
    code, _, err = _run(capsys, "show-config", "ppo_paper", "--env-options", "{a: [")
    assert code == 2 and "env_options: not a YAML mapping" in err


def test_yaml_aliases_and_total_timesteps(tmp_path) -> None:
    data = {"algo": "ppo", "num_envs": 4, "num_steps": 16, "total_timesteps": 640}
    data |= {"learning_rate": "3e-4", "ent_coef": 0.0, "update_epochs": 2, "clip_vloss": True}
    config = load(_yaml(tmp_path, data))
    assert (config.envs, config.steps, config.iterations) == (4, 16, 10)
    assert config.clip_value_loss and not config.anneal_lr
    assert (config.lr, config.entropy_coef, config.epochs) == (3e-4, 0.0, 2)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({**TINY, "envs": "2"}, "envs: expected an integer, got '2'"),
        ({**TINY, "width": -4}, "width: must be at least 1, got -4"),
        ({**TINY, "algo": "dqn"}, "algo: 'dqn' is not one of ppo, reinforce, a2c"),
        ({**TINY, "gamma": 1.5}, "gamma: must be between 0.0 and 1.0, got 1.5"),
        ({**TINY, "lr": "fast"}, "lr: expected a number, got 'fast'"),
        ({**TINY, "lernrate": 1e-3}, "lernrate: unknown key; allowed: algo, env"),
        ({**TINY, "env": "Nope-v0"}, "env: 'Nope-v0' is not one of CartPole-v1"),
        ({**TINY, "minibatches": 3}, "minibatches: 3 does not divide envs x steps = 16"),
        ({**TINY, "algo": "a2c", "n_step": 2}, "n_step: a2c uses GAE"),
        ({**TINY, "algo": "a2c", "clip_vloss": True}, "clip_value_loss: PPO's; a2c has no"),
        ({**TINY, "lr": 1e-3, "learning_rate": 1e-3}, "sets 'lr', which the config sets already"),
        ({**TINY, "devices": 0}, "devices: must be -1 (every device) or at least 1, got 0"),
        ({**TINY, "devices": 3}, "devices: 3 does not divide envs = 2"),
        ("", "the config is empty"),
        ("algo: [ppo\n", "not valid YAML at line 2"),
        ("- ppo\n", "expected a mapping of keys to values, got list"),
    ],
)
def test_each_config_error_is_one_line_with_exit_code_2(capsys, tmp_path, content, message):
    path = _yaml(tmp_path, content)
    with pytest.raises(ConfigError, match="^" + path if isinstance(content, str) else None):
        load(path)
    code, out, err = _run(capsys, "show-config", path)
    assert code == 2 and out == ""
    assert err.startswith("tempo-jax: error: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_resume_refuses_other_settings_and_a_folder_without_a_run(capsys, tmp_path) -> None:
    code, _, err = _run(capsys, "train", str(tmp_path), "--resume", "--seed", "3")
    assert code == 2 and "--resume continues a run with its own settings; drop --seed" in err
    code, _, err = _run(capsys, "train", str(tmp_path), "--resume")
    assert code == 2 and "not a training run's directory (no run.json)" in err
    out = str(tmp_path / "results")
    code, _, err = _run(capsys, "train", "ppo_cartpole", "--checkpoint-every", "0", "--out", out)
    assert code == 2 and "checkpoint_every: must be at least 1, got 0" in err
    assert not (tmp_path / "results").exists()


def test_a_missing_config_and_a_bad_flag_exit_2(capsys, tmp_path) -> None:
    code, _, err = _run(capsys, "show-config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml' does not exist" in err
    code, _, err = _run(capsys, "train", "no_such_config")
    assert code == 2 and "no shipped config named 'no_such_config'; shipped: rl/" in err
    code, _, err = _run(capsys, "show-config", "ppo_cartpole", "--gamma", "2.0")
    assert code == 2 and "gamma: must be between" in err
    with pytest.raises(SystemExit) as info:  # tyro's own error: not an integer
        cli.main(["show-config", "ppo_cartpole", "--envs", "two"])
    assert info.value.code == 2


def test_train_never_destroys_an_earlier_run_and_plot_redraws(capsys, tmp_path) -> None:
    config, out = _yaml(tmp_path, TINY), str(tmp_path / "results")
    code, _, _ = _run(capsys, "train", config, "--out", out, "--seed", "1")
    assert code == 0
    first = tmp_path / "results" / "ppo_CartPole-v1_seed1"
    metrics = (first / "metrics.csv").read_text()
    with open(first / "metrics.csv") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == [0, 1]
    summary = json.loads((first / "summary.json").read_text())
    assert summary["config"]["seed"] == 1 and summary["env_steps"] == 32
    # the same config again: a new, numbered directory; the first is untouched
    assert _run(capsys, "train", config, "--out", out, "--seed", "1")[0] == 0
    assert (tmp_path / "results" / "ppo_CartPole-v1_seed1-2" / "summary.json").is_file()
    assert (first / "metrics.csv").read_text() == metrics
    # a named run that exists is refused without --overwrite
    code, _, err = _run(capsys, "train", config, "--out", out, "--run", "ppo_CartPole-v1_seed1")
    assert code == 2 and "holds an earlier run; pass --overwrite" in err
    assert (first / "metrics.csv").read_text() == metrics
    argv = ["train", config, "--out", out, "--run", "ppo_CartPole-v1_seed1", "--overwrite"]
    assert _run(capsys, *argv)[0] == 0
    (first / "learning_curve.png").unlink()
    code, _, _ = _run(capsys, "plot", str(first))
    assert code == 0 and (first / "learning_curve.png").stat().st_size > 0
    code, _, err = _run(capsys, "plot", str(tmp_path))
    assert code == 2 and "no such file" in err
    # the overwritten run's checkpoints are its own; evaluate the latest
    assert sorted(int(d.name) for d in (first / "checkpoints").iterdir()) == [1, 2]
    code, out_text, _ = _run(capsys, "evaluate", str(first), "--episodes", "2")
    report = json.loads((first / "evaluation.json").read_text())
    assert code == 0 and report["iteration"] == 2 and len(report["returns"]) == 2
    assert json.loads(out_text) == report
    code, _, err = _run(capsys, "evaluate", str(tmp_path))
    assert code == 2 and "not a training run's directory" in err
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_bench_with_an_empty_selection_is_an_error_and_writes_nothing(capsys, tmp_path) -> None:
    out = tmp_path / "out"
    code, _, err = _run(capsys, "bench", "rl_cpu_small", "--only", "nonsense", "--out", str(out))
    assert code == 2 and "--only nonsense: no such factor in this config; it has: base" in err
    code, _, err = _run(capsys, "bench", "decode_cpu_long", "--only", "block", "--out", str(out))
    assert code == 2 and "--only block: this config has no such sweep" in err
    assert not out.exists()
    code, _, err = _run(capsys, "bench", "ppo_cartpole")
    assert code == 2 and "no shipped config named 'ppo_cartpole'" in err


def test_decode_without_a_checkpoint_exits_2(capsys, tmp_path) -> None:
    code, _, err = _run(capsys, "decode", "--model", str(tmp_path), "--prompt", "hi")
    assert code == 2 and "config.json: no such file" in err


def test_a_failed_write_keeps_the_old_file(tmp_path) -> None:
    path = tmp_path / "summary.json"
    results.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        results.write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


@pytest.mark.slow  # pip builds and installs a wheel: 40 s
def test_the_wheel_installs_one_top_level_name_and_trains_from_an_empty_directory(tmp_path):
    root = pathlib.Path(__file__).resolve().parents[2]
    wheels, target, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", str(root), "--no-deps", "-w", str(wheels)], check=True)
    (wheel,) = wheels.glob("tempo_jax-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith("-info")) == [
        "bin",
        "tempo_jax",
    ]
    assert (target / "tempo_jax" / "py.typed").exists()
    assert (target / "tempo_jax" / "configs" / "rl" / "ppo_cartpole.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run(
        [str(target / "bin" / "tempo-jax"), "train", "ppo_cartpole", "--iterations", "3"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((empty / "results/rl/ppo_CartPole-v1_seed0/summary.json").read_text())
    assert summary["env_steps"] == 3 * 4 * 128
    where = subprocess.run(
        [sys.executable, "-c", "import tempo_jax.algorithms as a; print(a.__file__)"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(target))


def test_an_rl_config_default_is_valid() -> None:
    from tempo_jax.algorithms.config import validate

    assert validate(RLConfig()) == RLConfig()
