"""Test-wide settings: schedules are cached in a directory of the test session, never in the
user's cache; XLA's CPU backend builds machine code with fewer LLVM optimisations.

Most of the suite's time is compiling small programs that then run for milliseconds. LLVM's
optimisation level 1 without its expensive passes leaves the HLO (what the structure tests
read) as it is and builds a program about a third faster; its machine code runs slower. (Level
0 is faster still but evaluates ``tanh`` and ``exp`` a few ulps differently from the default
build, which the tolerances of some oracle comparisons catch.) Set before JAX starts its
backend (it reads ``XLA_FLAGS`` once); subprocesses inherit it.
"""

from __future__ import annotations

import os

import pytest

FAST_BUILD = "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_BUILD}".strip()


@pytest.fixture(autouse=True, scope="session")
def _schedule_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["TEMPO_JAX_CACHE_DIR"] = str(tmp_path_factory.mktemp("tempo_jax_cache"))
