"""Results that are never lost: a new directory per run, files written atomically.

- :func:`run_dir` gives each run its own directory under a results root: the name asked for,
  or, when a run of that name exists, the first free ``<name>-2``, ``<name>-3``, ... An
  explicit name that exists is refused unless ``overwrite`` is set.
- :func:`write_text`, :func:`write_json`, :func:`write_csv` and :func:`save_figure` write to
  a temporary file in the target's directory and rename it over the target, so a file is
  either its old or its new content, never a mix or a truncation.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pathlib
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any


class ResultsError(RuntimeError):
    """A results path that cannot be used as asked (one line: the path and the fix)."""


def run_dir(
    root: str | pathlib.Path, name: str, *, explicit: bool, overwrite: bool
) -> pathlib.Path:
    """A directory for a new run under ``root``, created.

    ``explicit``: the user named the run; then an existing non-empty directory of that name is
    refused (:class:`ResultsError`) unless ``overwrite``. Otherwise a taken name gets the first
    free numbered suffix.
    """
    root = pathlib.Path(root)
    path = root / name
    if _taken(path):
        if explicit and not overwrite:
            raise ResultsError(
                f"{path} holds an earlier run; pass --overwrite to write into it, or another --run"
            )
        if not explicit:
            k = 2
            while _taken(root / f"{name}-{k}"):
                k += 1
            path = root / f"{name}-{k}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _taken(path: pathlib.Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


@contextlib.contextmanager
def _atomic(path: str | pathlib.Path, mode: str = "w") -> Iterator[Any]:
    """A file object whose content replaces ``path`` when the block ends without error."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | pathlib.Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with _atomic(path) as f:
        f.write(text)


def write_json(path: str | pathlib.Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_csv(
    path: str | pathlib.Path, header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Write a CSV table to ``path`` atomically."""
    with _atomic(path) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def save_figure(fig: Any, path: str | pathlib.Path, **kwargs: Any) -> None:
    """Save a matplotlib figure to ``path`` atomically (the format from its suffix)."""
    path = pathlib.Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", **kwargs)
    with _atomic(path, "wb") as f:
        f.write(buffer.getvalue())
