"""How the decode program's inputs split over a mesh (:mod:`models.sharding`): which weights
split by columns or rows, and one clear error for each mesh the model cannot use. The
decoding itself on 8 devices is checked against one device in ``tests/lower/test_sharding.py``.
"""

from __future__ import annotations

import types

import jax
import pytest
from jax.sharding import PartitionSpec

from tempo_jax.models import config
from tempo_jax.models.params import param_shapes
from tempo_jax.models.sharding import decode_mesh, decode_specs


def _mesh(**axes: int) -> types.SimpleNamespace:
    """What decode_specs reads of a mesh: its axis names and sizes."""
    return types.SimpleNamespace(axis_names=tuple(axes), shape=axes)


@pytest.mark.parametrize("make", [config.tiny_gpt2, config.tiny_llama])
def test_heads_split_by_columns_in_and_rows_out(make) -> None:
    cfg = make()
    specs = decode_specs(cfg, _mesh(data=2, model=2), batch=4, ragged=True)
    assert specs["prompt"] == specs["mask"] == specs["key"] == PartitionSpec("data")
    for name in ("wq", "wk", "wv"):
        assert specs[f"layers/{name}"] == PartitionSpec(None, "model")
    assert specs["layers/wo"] == PartitionSpec("model", None)
    down = "w_proj" if cfg.arch == "gpt2" else "w_down"
    assert specs[f"layers/{down}"] == PartitionSpec("model", None)
    layers = set(param_shapes(cfg)["layers"])
    assert {k[len("layers/") :] for k in specs if k.startswith("layers/")} <= layers
    assert "embed" not in specs and "layers/attn_norm/scale" not in specs  # replicated


def test_one_axis_splits_rows_only() -> None:
    specs = decode_specs(config.tiny_gpt2(), _mesh(rows=4), batch=8, ragged=False)
    assert specs == {"prompt": PartitionSpec("rows")}


@pytest.mark.parametrize(
    ("mesh", "batch", "message"),
    [
        (_mesh(data=3), 4, r"batch 4 does not split evenly over the 3 devices of mesh axis 'data'"),
        (_mesh(data=1, model=3), 4, r"heads \(4\) do not split evenly over the 3 devices"),
        (_mesh(a=1, b=1, c=1), 4, r"one axis \(rows\) or two \(rows, heads\)"),
    ],
)
def test_a_mesh_the_model_cannot_use_is_named(mesh, batch, message) -> None:
    with pytest.raises(ValueError, match=message):
        decode_specs(config.tiny_gpt2(), mesh, batch=batch, ragged=False)


def test_kv_heads_must_split_too() -> None:  # tiny Llama: 4 query heads over 2 key/value heads
    with pytest.raises(ValueError, match=r"kv_heads \(2\) do not split evenly over the 4"):
        decode_specs(config.tiny_llama(), _mesh(data=1, model=4), batch=2, ragged=False)


def test_decode_mesh_counts_devices() -> None:
    mesh = decode_mesh(1)
    assert mesh.axis_names == ("data", "model") and dict(mesh.shape) == {"data": 1, "model": 1}
    with pytest.raises(ValueError, match="devices must be -1"):
        decode_mesh(len(jax.devices()) + 1)
    with pytest.raises(ValueError, match="tensor_parallel must divide"):
        decode_mesh(1, tensor_parallel=2)
