"""Where in the user's code a tensor, an op or an index was written."""

from __future__ import annotations

import dataclasses
import linecache
import os
import sys

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """A user source location: file, line number and the stripped text of the line."""

    file: str
    line: int
    code: str

    def __str__(self) -> str:
        where = f"{os.path.basename(self.file)}:{self.line}"
        return f"{where}: `{self.code}`" if self.code else where


UNKNOWN_SOURCE = SourceInfo("<unknown>", 0, "")


def capture_source() -> SourceInfo:
    """Return the innermost stack frame that lies outside the tempo_jax package."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_PACKAGE_DIR + os.sep) and not filename.startswith("<frozen"):
            code = linecache.getline(filename, frame.f_lineno).strip()
            return SourceInfo(filename, frame.f_lineno, code)
        frame = frame.f_back
    return UNKNOWN_SOURCE


def describe(source: SourceInfo) -> str:
    """`at file:line: `code`` for messages, or an empty string when unknown."""
    return "" if source is UNKNOWN_SOURCE else f" at {source}"
