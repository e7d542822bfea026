"""Text in and out: a local Hugging Face ``tokenizer.json`` around a tempo_jax decoder.

Needs the ``tokenizers`` library (the ``[llm]`` extra). Nothing is downloaded: the tokenizer
and the checkpoint are read from a local folder, as transformers saves them.

Example::

    model, tokenizer = load_text_model("my-llama")
    print(generate_text(model, tokenizer, ["Once upon a time"], max_new_tokens=32)[0])
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from .config import CheckpointError
from .tempo import TempoModel


def load_tokenizer(path: str | pathlib.Path) -> Any:
    """The ``tokenizers.Tokenizer`` of ``path`` (a ``tokenizer.json``, or a folder holding
    one)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as error:  # the [llm] extra
        raise ImportError(
            "text needs the `tokenizers` library: pip install 'tempo_jax[llm]'"
        ) from error
    file = pathlib.Path(path)
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise CheckpointError(f"{file}: no tokenizer.json here")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as error:  # the library's own parse error, with the file named
        raise CheckpointError(f"{file}: not a tokenizer.json ({error})") from error


def load_text_model(path: str | pathlib.Path, dtype: Any = None) -> tuple[TempoModel, Any]:
    """The model and tokenizer of a local checkpoint folder (``config.json``, weights and
    ``tokenizer.json``)."""
    return TempoModel.from_pretrained(path, dtype=dtype), load_tokenizer(path)


def generate_text(
    model: TempoModel,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    key: jax.Array | None = None,
    **sampling: Any,
) -> list[str]:
    """Each prompt's continuation as text (the new tokens only, up to the end token).

    ``sampling``: the options of :meth:`TempoModel.generate_hf` (``do_sample``,
    ``temperature``, ``top_k``, ``top_p``, ``eos_token_id``, ``mesh``).
    """
    ids = [tokenizer.encode(text).ids for text in prompts]
    if any(not row for row in ids):
        raise ValueError("a prompt encodes to no tokens; give some text")
    out = model.generate_hf(ids, max_new_tokens=max_new_tokens, key=key, **sampling)
    given = sampling.get("eos_token_id")
    ends = set(model.cfg.eos_token_ids if given is None else np.atleast_1d(given).tolist())
    width = max(len(row) for row in ids)
    texts = []
    for b, row in enumerate(ids):
        new = int(out.lengths[b]) - len(row)
        tokens = [int(x) for x in out.sequences[b, width : width + new]]
        texts.append(tokenizer.decode([x for x in tokens if x not in ends]))
    return texts
