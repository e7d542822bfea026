"""Local Hugging Face checkpoint folders of Llama and GPT-2 models.

A checkpoint folder holds ``config.json`` and the weights: either ``model.safetensors``, or
shards ``model-00001-of-00002.safetensors``, ... listed in ``model.safetensors.index.json``
(the layout transformers' ``save_pretrained`` writes)::

    cfg, params = load_pretrained("checkpoints/Llama-3.2-1B", dtype=jnp.bfloat16)
    save_pretrained("out/llama", cfg, params, max_shard_bytes=2**30)

Loading is strict (see :mod:`models.safetensors_io` and :func:`models.config.config_from_hf`):
anything the decoders cannot honour raises :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .config import CheckpointError as CheckpointError
from .config import DecoderConfig, config_to_hf, load_config
from .params import Params
from .safetensors_io import Shards, hf_tensors, params_from_hf, write_tensors

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def _read_index(index: pathlib.Path) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file name) of an index file."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{index}: not a readable JSON file ({e})") from None
    except (KeyError, TypeError):
        raise CheckpointError(f"{index}: required field 'weight_map' is missing") from None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise CheckpointError(f"{index}: weight_map must map tensor names to file names")
    return weight_map


def _weight_files(folder: pathlib.Path) -> tuple[list[pathlib.Path], dict[str, str] | None]:
    """The weight files of ``folder`` and, when sharded, the index's weight map."""
    single, index = folder / WEIGHTS, folder / INDEX
    if single.exists() and index.exists():
        raise CheckpointError(f"{folder}: holds both {WEIGHTS} and {INDEX}; remove the stale one")
    if single.exists():
        return [single], None
    if not index.exists():
        found = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (found {', '.join(found)}: only safetensors weights are read)" if found else ""
        raise CheckpointError(f"{folder}: no {WEIGHTS} or {INDEX}{hint}")
    weight_map = _read_index(index)
    files = [folder / name for name in sorted(set(weight_map.values()))]
    for f in files:
        if not f.exists():
            raise CheckpointError(f"{index}: lists shard {f.name}, which is not in {folder}")
    return files, weight_map


def _check_index(shards: Shards, weight_map: dict[str, str], index: pathlib.Path) -> None:
    """Every tensor sits in the shard the index names, and the index names every tensor."""
    for name, file in weight_map.items():
        if name not in shards or shards.file[name].name != file:
            raise CheckpointError(f"{index}: lists tensor {name} in {file}, which does not hold it")
    for name, f in shards.file.items():
        if name not in weight_map:
            raise CheckpointError(f"tensor {name} in {f} is not listed in {index}")


def load_pretrained(path: str | pathlib.Path, dtype: Any = None) -> tuple[DecoderConfig, Params]:
    """``(cfg, params)`` of the Hugging Face Llama or GPT-2 checkpoint folder ``path``: its
    ``config.json`` (transformers 4 or 5) and its safetensors weights, single or sharded, in
    bf16, fp16 or fp32. ``dtype`` casts every weight (``None``: the files' dtype).

    Raises :class:`CheckpointError` for a config field the decoders cannot honour, a tensor
    that is missing, of the wrong shape, unused or in two shards, and an unreadable file::

        cfg, params = load_pretrained("gpt2")  # a folder holding config.json, model.safetensors
        logits = models.flax.from_params(cfg, params)(tokens)
    """
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder (config.json and weights)")
    cfg = load_config(folder / CONFIG)
    files, weight_map = _weight_files(folder)
    shards = Shards(files)
    if weight_map is not None:
        _check_index(shards, weight_map, folder / INDEX)
    params = params_from_hf(cfg, shards)
    return cfg, jax.tree.map(lambda a: jnp.asarray(a, dtype=dtype), params)


def _shard(tensors: dict[str, np.ndarray], max_bytes: int | None) -> list[list[str]]:
    """Tensor names in order, cut into groups of at most ``max_bytes`` (a larger tensor gets
    a group of its own)."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, a in tensors.items():
        if max_bytes is not None and groups[-1] and size + a.nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += a.nbytes
    return groups


def save_pretrained(
    path: str | pathlib.Path,
    cfg: DecoderConfig,
    params: Params,
    max_shard_bytes: int | None = None,
) -> None:
    """Write ``cfg`` and ``params`` to the folder ``path`` in the file layout and tensor names
    transformers' ``save_pretrained`` uses: ``config.json`` and ``model.safetensors``,
    or, when the weights exceed ``max_shard_bytes``, shards ``model-0000i-of-0000n.safetensors``
    and ``model.safetensors.index.json``. Weights keep their dtype; weight files of an earlier
    save in the folder are removed::

        save_pretrained("out/tiny-llama", config.tiny_llama(), params)
    """
    if max_shard_bytes is not None and max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be positive or None, got {max_shard_bytes}")
    hf_config = config_to_hf(cfg, jnp.dtype(params["embed"].dtype).name)
    tensors = hf_tensors(cfg, params)
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.name in (WEIGHTS, INDEX) or _SHARD.fullmatch(old.name):
            old.unlink()
    groups = _shard(tensors, max_shard_bytes)
    if len(groups) == 1:
        write_tensors(folder / WEIGHTS, tensors)
    else:
        weight_map = {}
        for i, names in enumerate(groups, start=1):
            file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            write_tensors(folder / file, {name: tensors[name] for name in names})
            weight_map |= dict.fromkeys(names, file)
        total = sum(a.nbytes for a in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (folder / CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n")
