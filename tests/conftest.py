"""Test-wide settings: schedules are cached in a directory of the test session, never in the
user's cache."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _schedule_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["TEMPO_JAX_CACHE_DIR"] = str(tmp_path_factory.mktemp("tempo_jax_cache"))
