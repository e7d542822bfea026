"""The on-disk schedule cache: hits, misses, corrupt entries, and equal schedules."""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

import tempo_jax as tj
from tempo_jax._schedule import cache
from tempo_jax._schedule.scheduler import schedule
from tempo_jax._schedule.tree import render
from tests.corpus import CASES, Case


def _program(decay: float = 0.5, shift: int = 1) -> tj.Program:
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        s = tj.placeholder((), jnp.float32, domain=(t,))
        s[t < shift] = x
        s[True] = s[t - shift] * decay + x
        p.output("s", s)
    return p


@pytest.fixture
def folder(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("TEMPO_JAX_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TEMPO_JAX_SCHEDULE_CACHE", raising=False)
    return tmp_path / "schedules"


def _counting() -> tuple[list[int], object]:
    calls: list[int] = []

    def compute(program):
        calls.append(1)
        return schedule(program)

    return calls, compute


def test_a_second_compile_reads_the_schedule(folder: pathlib.Path) -> None:
    ir = _program().to_ir()
    calls, compute = _counting()
    first = cache.cached_schedule(ir, compute)
    again = cache.cached_schedule(_program().to_ir(), compute)  # a new program object
    assert calls == [1] and len(list(folder.glob("*.pickle"))) == 1
    assert render(again, ir) == render(first, ir)


def test_what_the_schedule_depends_on_misses(folder: pathlib.Path) -> None:
    calls, compute = _counting()
    cache.cached_schedule(_program().to_ir(), compute)
    cache.cached_schedule(_program(decay=0.9).to_ir(), compute)  # same structure: a hit
    assert calls == [1]
    cache.cached_schedule(_program(shift=2).to_ir(), compute)  # other reads: a miss
    assert calls == [1, 1]


def test_bounds_do_not_miss_and_values_are_right(folder: pathlib.Path) -> None:
    program = _program()
    xs = np.arange(7, dtype=np.float32)
    for steps in (7, 5):
        got = program.compile({"T": steps})(x=xs[:steps])["s"]
        want = tj.reference.run(program, {"T": steps}, {"x": xs[:steps]})["s"]
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert len(list(folder.glob("*.pickle"))) == 1


def test_a_corrupt_entry_is_ignored_and_rewritten(folder: pathlib.Path) -> None:
    ir = _program().to_ir()
    calls, compute = _counting()
    cache.cached_schedule(ir, compute)
    (entry,) = folder.glob("*.pickle")
    entry.write_bytes(entry.read_bytes()[:10])  # truncated
    tree = cache.cached_schedule(ir, compute)
    assert calls == [1, 1] and tree == schedule(ir)
    cache.cached_schedule(ir, compute)
    assert calls == [1, 1]  # rewritten whole


def test_a_change_of_the_library_misses(folder: pathlib.Path, monkeypatch) -> None:
    ir = _program().to_ir()
    calls, compute = _counting()
    cache.cached_schedule(ir, compute)
    monkeypatch.setattr(cache, "_source_hash", lambda: "another version")
    cache.cached_schedule(ir, compute)
    assert calls == [1, 1]


def test_the_cache_can_be_turned_off(folder: pathlib.Path, monkeypatch) -> None:
    monkeypatch.setenv("TEMPO_JAX_SCHEDULE_CACHE", "0")
    calls, compute = _counting()
    for _ in range(2):
        cache.cached_schedule(_program().to_ir(), compute)
    assert calls == [1, 1] and not folder.exists()


def test_a_passed_check_is_skipped_for_the_same_structure_and_bounds(folder) -> None:
    """The check of every read runs once per structure and bound ranges; other bounds or other
    reads check again; with the cache off it always runs."""
    calls: list[int] = []
    check = lambda: calls.append(1)  # noqa: E731
    for _ in range(2):
        cache.cached_check(_program().to_ir(), {"T": (7, 7)}, check)
    assert calls == [1] and len(list(folder.glob("*.checked"))) == 1
    cache.cached_check(_program().to_ir(), {"T": (5, 5)}, check)  # other bounds
    cache.cached_check(_program().to_ir(), {"T": (1, 7)}, check)  # a dynamic range
    cache.cached_check(_program(shift=2).to_ir(), {"T": (7, 7)}, check)  # other reads
    assert calls == [1, 1, 1, 1]


def test_a_failed_check_is_not_remembered(folder) -> None:
    """A program whose output reads a point nobody defines fails its compile every time."""
    with tj.Program() as p:
        (t,) = p.dims("t")
        x = tj.input("x", (), jnp.float32, domain=(t,))
        s = tj.placeholder((), jnp.float32, domain=(t,))
        s[t > 0] = s[t - 1] + x  # s[0] is never defined
        p.output("s", s)
    for _ in range(2):
        with pytest.raises(tj.TempoError):
            p.compile({"T": 4})
    assert not list(folder.glob("*.checked"))


def test_the_check_runs_every_time_with_the_cache_off(folder, monkeypatch) -> None:
    monkeypatch.setenv("TEMPO_JAX_SCHEDULE_CACHE", "0")
    calls: list[int] = []
    for _ in range(2):
        cache.cached_check(_program().to_ir(), {"T": (7, 7)}, lambda: calls.append(1))
    assert calls == [1, 1] and not folder.exists()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_schedules_are_equal_with_and_without_the_cache(folder: pathlib.Path, case: Case) -> None:
    program = case.build()[0]
    fresh = schedule(program.to_ir())
    cache.cached_schedule(program.to_ir(), schedule)  # written
    other = case.build()[0].to_ir()  # a new program object: its own symbols
    read = cache.cached_schedule(other, lambda p: pytest.fail("missed"))
    assert read == schedule(other)
    assert render(read, other) == render(fresh, program.to_ir())


def test_enable_compilation_cache_points_jax_at_the_user_cache(tmp_path, monkeypatch) -> None:
    import jax

    monkeypatch.setenv("TEMPO_JAX_CACHE_DIR", str(tmp_path))
    before = jax.config.jax_compilation_cache_dir
    try:
        folder = tj.enable_compilation_cache()
        assert folder == tmp_path / "xla"
        assert jax.config.jax_compilation_cache_dir == str(folder)
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
