"""Text in and out: a tiny BPE tokenizer and a tiny random checkpoint, built on the fly.

Oracle: the scan baseline decoder fed the tokenizer's ids, its new tokens decoded by the
tokenizer. Nothing is downloaded.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest

from tempo_jax.models import config
from tempo_jax.models.baselines import scan
from tempo_jax.models.config import CheckpointError
from tempo_jax.models.params import init_params
from tempo_jax.models.pretrained import save_pretrained
from tempo_jax.models.text import generate_text, load_text_model, load_tokenizer
from tempo_jax.scripts import decode

tokenizers = pytest.importorskip("tokenizers")

CORPUS = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog met on a mat",
    "once upon a time the cat ran",
]


def _checkpoint(folder: pathlib.Path, arch: str) -> tuple[config.DecoderConfig, dict]:
    """A tiny random checkpoint and a BPE tokenizer trained on ``CORPUS``, in ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=64, special_tokens=["[UNK]", "</s>"])
    tokenizer.train_from_iterator(CORPUS, trainer)
    cfg = config.tiny_gpt2() if arch == "gpt2" else config.tiny_llama()
    params = init_params(cfg, jax.random.PRNGKey(3))
    save_pretrained(folder, cfg, params)
    tokenizer.save(str(folder / "tokenizer.json"))
    return cfg, params


def _oracle(cfg, params, tokenizer, prompt: str, steps: int) -> str:
    ids = tokenizer.encode(prompt).ids
    out = scan.generate(cfg, params, np.asarray([ids], np.int32), steps)
    return tokenizer.decode([int(x) for x in out["tokens"][0, len(ids) :]])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_text_continues_as_the_scan_decoder_on_the_tokenizers_ids(tmp_path, arch) -> None:
    cfg, params = _checkpoint(tmp_path, arch)
    model, tokenizer = load_text_model(tmp_path)
    prompts = ["the cat sat", "once upon a time the dog"]  # of different token lengths
    got = generate_text(model, tokenizer, prompts, max_new_tokens=5)
    assert got == [_oracle(cfg, params, tokenizer, p, 5) for p in prompts]


def test_the_decode_command_prints_prompt_and_continuation(tmp_path, capsys) -> None:
    cfg, params = _checkpoint(tmp_path, "gpt2")
    tokenizer = load_tokenizer(tmp_path)
    argv = ["--model", str(tmp_path), "--prompt", "the dog", "--max-new-tokens", "4"]
    assert decode.main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == ["the dog" + _oracle(cfg, params, tokenizer, "the dog", 4)]


def test_a_folder_without_a_tokenizer_is_named(tmp_path, capsys) -> None:
    with pytest.raises(CheckpointError, match=r"no tokenizer\.json here"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: not a tokenizer\.json"):
        load_tokenizer(tmp_path)
    assert decode.main(["--model", str(tmp_path / "nowhere"), "--prompt", "x"]) == 2
    assert "error:" in capsys.readouterr().err


def test_the_decode_command_checks_its_devices(tmp_path, capsys) -> None:
    cfg, params = _checkpoint(tmp_path, "llama")
    tokenizer = load_tokenizer(tmp_path)
    argv = ["--model", str(tmp_path), "--prompt", "the dog", "--max-new-tokens", "3"]
    assert decode.main([*argv, "--devices", "1", "--tensor-parallel", "1"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == ["the dog" + _oracle(cfg, params, tokenizer, "the dog", 3)]
    assert decode.main([*argv, "--tensor-parallel", "2"]) == 2
    assert "tensor_parallel must divide" in capsys.readouterr().err


@pytest.mark.slow
def test_the_decode_command_over_two_processes_prints_the_one_process_text(tmp_path) -> None:
    from tests.scripts.test_launch import run_cli

    cfg, params = _checkpoint(tmp_path, "gpt2")
    tokenizer = load_tokenizer(tmp_path)
    prompts = ["the dog", "once upon a time the cat"]
    argv = ["decode", "--model", str(tmp_path), "--max-new-tokens", "4"]  # every device
    for text in prompts:
        argv += ["--prompt", text]
    done = run_cli("launch", "--processes", "2", *argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    want = [p + _oracle(cfg, params, tokenizer, p, 4) for p in prompts]
    printed = [x for x in done.stdout.splitlines() if x and not x.startswith("[Gloo]")]
    assert printed == want  # gloo's own connection notices aside
