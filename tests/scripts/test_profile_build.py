"""`scripts/profile_build.py`: a build's stages on a cold and a warm schedule cache."""

from __future__ import annotations

import json
import sys

import pytest

from tempo_jax.scripts import profile_build


def test_the_decoder_is_profiled_cold_then_warm(tmp_path, monkeypatch) -> None:
    out = tmp_path / "build.json"
    monkeypatch.setattr(sys, "argv", ["profile_build", "--programs", "decoder", "--out", str(out)])
    profile_build.main()
    rows = json.loads(out.read_text())["rows"]
    assert [(r["program"], r["schedule_cache"]) for r in rows] == [
        ("decoder", "cold"),
        ("decoder", "warm"),
    ]
    for row in rows:
        assert row["ops"] > 0
        stages = ("record", "passes", "check", "schedule")
        assert all(row[f"{stage}_seconds"] >= 0 for stage in stages)
        total = sum(row[f"{stage}_seconds"] for stage in stages)
        assert total == pytest.approx(row["build_seconds"])


def test_an_unknown_program_is_refused(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["profile_build", "--programs", "dqn"])
    with pytest.raises(SystemExit) as info:
        profile_build.main()
    assert info.value.code == 2
    assert "--programs takes some of ppo, reinforce, a2c, lm, decoder" in capsys.readouterr().err
