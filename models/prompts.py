"""A batch of prompts for :meth:`models.tempo.TempoModel.generate_hf`: checked, and laid out
left-padded, the layout decoder-only generation needs.

``input_ids`` is either a list of token lists of any lengths, or a ``[B, P]`` array with an
optional ``attention_mask`` ``[B, P]`` (1: a real token, 0: padding). Token ids must be
integers in ``[0, vocab)`` at every real position; padded positions may hold anything. Each
row's real tokens are moved to the right end, in order (a right-padded mask becomes a
left-padded one), so every row's last prompt token sits in the last column.

Example::

    ids, mask = left_padded([[5, 9, 2], [7]], None, vocab=128, pad=0)
    # ids [[5, 9, 2], [0, 0, 7]], mask [[1, 1, 1], [0, 0, 1]] (bool)
"""

from __future__ import annotations

from typing import Any

import numpy as np


def left_padded(
    input_ids: Any, attention_mask: Any, *, vocab: int, pad: int
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids int32 ``[B, P]`` and a bool mask ``[B, P]``, every row's real tokens flush
    right; a list of rows of different lengths is padded with ``pad``. Raises ``ValueError``
    naming the offending value and position."""
    if _is_ragged(input_ids):
        if attention_mask is not None:
            raise ValueError(
                "attention_mask is only for a padded [B, P] array; a list of prompts of "
                "different lengths is padded here (pass one or the other)"
            )
        ids, mask = _stacked(input_ids, pad)
    else:
        ids = _integers(input_ids)
        if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
            raise ValueError(
                f"input_ids must be [B, P] with B, P >= 1 (a list of prompts, or a 2-D array), "
                f"got shape {ids.shape}"
            )
        mask = np.ones(ids.shape, bool) if attention_mask is None else _mask(attention_mask, ids)
    _check_vocab(ids, mask, vocab)
    order = np.argsort(mask, axis=1, kind="stable")  # padding first, real tokens in order
    ids, mask = np.take_along_axis(ids, order, 1), np.take_along_axis(mask, order, 1)
    return ids.astype(np.int32), mask


def _is_ragged(input_ids: Any) -> bool:
    if not isinstance(input_ids, (list, tuple)) or not input_ids:
        return False
    lengths = {len(row) if hasattr(row, "__len__") else None for row in input_ids}
    return len(lengths) > 1


def _stacked(rows: Any, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of different lengths, right-padded (indices stay the user's ``[b][j]``)."""
    arrays = []
    for b, row in enumerate(rows):
        if np.ndim(row) != 1 or np.size(row) == 0:
            raise ValueError(f"input_ids[{b}] must be a non-empty list of token ids, got {row!r}")
        arrays.append(_integers(row, f"input_ids[{b}]"))
    width = max(row.size for row in arrays)
    ids = np.full((len(arrays), width), pad, np.int64)
    mask = np.zeros((len(arrays), width), bool)
    for b, row in enumerate(arrays):
        ids[b, : row.size], mask[b, : row.size] = row, True
    return ids, mask


def _integers(value: Any, name: str = "input_ids") -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must hold integer token ids, got dtype {array.dtype}"
            + (" (booleans are not token ids)" if array.dtype.kind == "b" else "")
        )
    return array.astype(np.int64)


def _mask(attention_mask: Any, ids: np.ndarray) -> np.ndarray:
    mask = np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(
            f"attention_mask has shape {mask.shape}, input_ids {ids.shape}: they must match"
        )
    if mask.dtype.kind not in "biu" or not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must hold 1 (a real token) and 0 (padding) only")
    mask = mask.astype(bool)
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"attention_mask row {empty[0]} has no real token; every prompt needs one")
    return mask


def _check_vocab(ids: np.ndarray, mask: np.ndarray, vocab: int) -> None:
    bad = np.argwhere(mask & ((ids < 0) | (ids >= vocab)))
    if bad.size:
        b, j = bad[0]
        raise ValueError(
            f"input_ids[{b}][{j}] = {ids[b, j]} is not a token id: this model's vocabulary is "
            f"0 <= id < {vocab}"
        )
