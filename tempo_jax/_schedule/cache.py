"""An on-disk cache of schedule trees: the second compile of the same program skips isl.

The schedule of a program depends only on its structure: its ops' domains, their reads (index
expressions and conditions) and its stop; not on the bounds' values (it holds for every value)
nor on what the payloads compute. :func:`cached_schedule` keys a tree by a SHA-256 of that
structure (the program's text with names, not object identities), the library's version and
the source of this package (a change to the scheduler misses every old entry), and keeps it
under the user cache directory:

- ``$TEMPO_JAX_CACHE_DIR/schedules`` if set, else ``$XDG_CACHE_HOME/tempo_jax/schedules``, else
  ``~/.cache/tempo_jax/schedules``; one file per program, safe to delete at any time;
- ``TEMPO_JAX_SCHEDULE_CACHE=0`` turns the cache off;
- an entry that cannot be read (truncated, corrupt, from another layout) is ignored, and the
  schedule computed again and written over it.

The compile-time check of every read (:func:`~tempo_jax._schedule.domains.check_reads`) is
keyed the same way plus the bounds' values: :func:`cached_check` skips it where it passed
before (an empty ``<key>.checked`` file).

Symbols are stored by name (a program's symbols carry the identity of the program object)
and mapped back to the current program's on the way in.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import pathlib
import pickle
import tempfile
from collections.abc import Callable, Mapping

from .._ir.expr import Expr, Symbol, format_index, substitute, symbols_of
from .._ir.program import Edge, Program
from .tree import LOOP_SCOPE, Node, map_exprs

SCHEMA = 1  # the layout of an entry; bump to drop every old entry


def user_cache_dir() -> pathlib.Path:
    """tempo_jax's user cache directory (``$TEMPO_JAX_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/tempo_jax``, else ``~/.cache/tempo_jax``)."""
    root = os.environ.get("TEMPO_JAX_CACHE_DIR")
    if root:
        return pathlib.Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "tempo_jax"


def cache_dir() -> pathlib.Path | None:
    """Where schedules are cached, or None when the cache is off."""
    if os.environ.get("TEMPO_JAX_SCHEDULE_CACHE", "1") in ("0", "false", "no", "off"):
        return None
    return user_cache_dir() / "schedules"


def enable_compilation_cache() -> pathlib.Path:
    """Turn on JAX's persistent compilation cache in ``xla/`` of the user cache directory, so
    a second run of the same program skips XLA's compile too; returns the directory.

    Example: ``tj.enable_compilation_cache()`` at the start of a script.
    """
    import jax

    folder = user_cache_dir() / "xla"
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return folder


def schedule_key(program: Program) -> str:
    """The key of ``program``'s schedule: a hash of its structure and of the scheduler."""
    parts = [
        f"schema {SCHEMA}",
        _source_hash(),
        f"islpy {importlib.metadata.version('islpy')}",
        "dims " + ", ".join(f"{d.name}<{d.bound_name}" for d in program.dims),
        "bounds " + ", ".join(b.name for b in program.bounds),
    ]
    for op in program.ops:
        reads = "; ".join(f"{_read_text(e)}" for e in op.inputs)
        parts.append(f"{op.id} {op.kind} [{', '.join(d.name for d in op.domain)}] <- {reads}")
    for out in program.outputs:
        parts.append(f"output {out.name} <- {_read_text(out.edge)}")
    if program.streams:
        parts.append("streams " + ", ".join(f"{op_id} {dim}" for op_id, dim in program.streams))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _read_text(edge: Edge) -> str:
    return f"%{edge.src}.{edge.out}[{format_index(edge.index)}] if {edge.cond}"


def cached_schedule(program: Program, compute: Callable[[Program], Node]) -> Node:
    """``compute(program)``, read from the cache when this structure was scheduled before."""
    folder = cache_dir()
    if folder is None:
        return compute(program)
    path = folder / f"{schedule_key(program)}.pickle"
    tree = _read(path, program)
    if tree is not None:
        return tree
    tree = compute(program)
    _write(path, tree)
    return tree


def cached_check(
    program: Program, ranges: Mapping[str, tuple[int, int]], check: Callable[[], None]
) -> None:
    """``check()`` (the compile-time check of every read), skipped when it passed before for
    this structure and these bound ranges: a passed check leaves an empty marker file next to
    the schedules; a check that raises leaves none."""
    folder = cache_dir()
    if folder is None:
        check()
        return
    spans = ", ".join(f"{name} {lo}..{hi}" for name, (lo, hi) in sorted(ranges.items()))
    key = hashlib.sha256(f"{schedule_key(program)}\nranges {spans}".encode()).hexdigest()
    path = folder / f"{key}.checked"
    if path.exists():
        return
    check()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError:
        pass  # a read-only or full disk: the cache is an optimisation only


def _read(path: pathlib.Path, program: Program) -> Node | None:
    try:
        stored = pickle.loads(path.read_bytes())
        return _renamed(stored, _by_name(program))
    except Exception:  # missing, truncated, corrupt or foreign: schedule again
        return None


def _write(path: pathlib.Path, tree: Node) -> None:
    """Write atomically (a rename), so a concurrent reader never sees half an entry."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        canonical = _renamed(tree, lambda s: Symbol(s.name, 0, s.bound_name))
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as f:
            f.write(pickle.dumps(canonical, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(f.name, path)
    except OSError:
        pass  # a read-only or full disk: the cache is an optimisation only


def _by_name(program: Program) -> Callable[[Symbol], Symbol]:
    symbols = {d.name: d for d in program.dims} | {b.name: b for b in program.bounds}

    def current(symbol: Symbol) -> Symbol:
        return symbols[symbol.name]  # a KeyError: an entry of another program, not used

    return current


def _renamed(tree: Node, rename: Callable[[Symbol], Symbol]) -> Node:
    """``tree`` with every program symbol (not loop variables) replaced by ``rename`` of it."""

    def expr(e: Expr) -> Expr:
        found = {s: rename(s) for s in symbols_of(e) if s.program != LOOP_SCOPE}
        return substitute(e, found) if found else e  # type: ignore[return-value]

    return map_exprs(tree, expr)


@functools.cache
def _source_hash() -> str:
    """A hash of the library's source: any change to it misses every old entry."""
    digest = hashlib.sha256()
    root = pathlib.Path(__file__).resolve().parent.parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
