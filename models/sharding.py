"""Decoding over a device mesh: prompt rows over its first axis, attention heads and the MLP's
hidden units over its second (Megatron-style tensor parallelism), as partition specs of the
decode program's inputs (:func:`decode_specs`). JAX's SPMD partitioner does the rest: the keys
and values a layer computes from head-split projections, and so the KV cache, are split like
the heads, and the row-parallel products (``wo``, the MLP's down projection) end in an
all-reduce.

Example::

    mesh = decode_mesh(devices=8, tensor_parallel=2)  # 4 x 2 devices: ("data", "model")
    decoder = TempoDecoder(cfg, batch=8, prompt_len=16, steps=32, mesh=mesh)
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from .config import DecoderConfig
from .params import param_shapes

DATA, MODEL = "data", "model"

# per layer weight (a point of the stacked input: the layer axis dropped), how its axes split
# over the model axis: columns of the projections into heads or hidden units, rows of the
# projections out of them, the biases of the first
_COLUMNS = ("wq", "wk", "wv", "w_fc", "w_gate", "w_up")
_ROWS = ("wo", "w_proj", "w_down")
_COLUMN_BIASES = ("bq", "bk", "bv", "b_fc")


def decode_mesh(devices: int = -1, tensor_parallel: int = 1) -> Mesh:
    """A ``(devices / tensor_parallel, tensor_parallel)`` mesh of the first ``devices`` devices
    (``-1``: all of them) with axes ``("data", "model")``."""
    available = jax.devices()
    count = len(available) if devices == -1 else devices
    if count < 1 or count > len(available):
        raise ValueError(
            f"devices must be -1 (all) or 1 to {len(available)} (the devices JAX sees), "
            f"got {devices}"
        )
    if tensor_parallel < 1 or count % tensor_parallel:
        raise ValueError(f"tensor_parallel must divide the {count} devices, got {tensor_parallel}")
    grid = np.array(available[:count]).reshape(count // tensor_parallel, tensor_parallel)
    return Mesh(grid, (DATA, MODEL))


def decode_specs(
    cfg: DecoderConfig, mesh: Mesh, batch: int, ragged: bool
) -> dict[str, PartitionSpec]:
    """The partition specs of the decode program's inputs on ``mesh``: the prompt's rows (and,
    ragged, the mask's and the keys') over its first axis; with a second axis, every layer's
    heads and hidden units over it. Raises ``ValueError`` where an axis cannot split evenly."""
    names = mesh.axis_names
    if len(names) > 2:
        raise ValueError(
            f"a decoding mesh has one axis (rows) or two (rows, heads); got axes {list(names)}"
        )
    rows = names[0]
    if batch % mesh.shape[rows]:
        raise ValueError(
            f"batch {batch} does not split evenly over the {mesh.shape[rows]} devices of mesh "
            f"axis {rows!r} (use a multiple of {mesh.shape[rows]})"
        )
    specs = {"prompt": PartitionSpec(rows)}
    if ragged:
        specs |= {"mask": PartitionSpec(rows), "key": PartitionSpec(rows)}
    if len(names) == 1:
        return specs
    heads = names[1]
    ways = mesh.shape[heads]
    for what, size in (("heads", cfg.heads), ("kv_heads", cfg.kv_heads), ("hidden", cfg.hidden)):
        if size % ways:
            raise ValueError(
                f"the model's {what} ({size}) do not split evenly over the {ways} devices of "
                f"mesh axis {heads!r}; use a tensor-parallel size that divides {what}"
            )
    present = param_shapes(cfg)["layers"]
    for group, spec in (
        (_COLUMNS, PartitionSpec(None, heads)),
        (_ROWS, PartitionSpec(heads, None)),
        (_COLUMN_BIASES, PartitionSpec(heads)),
    ):
        specs |= {f"layers/{name}": spec for name in group if name in present}
    return specs


def gathered(outputs: Any) -> Any:
    """``outputs`` whole on every process: under ``jax.distributed`` a decode's outputs span
    every process's devices (rows split), and reading one needs all its rows here."""
    if jax.process_count() == 1:
        return outputs
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(outputs, tiled=True)
