"""Where a build's time goes: tempo_jax's stages for the RL programs, the LM training program
and a decoder, on a cold and then a warm schedule cache.

Each program is recorded and compiled twice in one process with its own empty cache
directory: first with nothing cached (isl runs), then again (the schedule is read back). Per
build: the seconds to record the program, each stage of ``compile`` (``stage_seconds``: the
passes, the compile-time checks of every read, the schedule), and the number of ops. XLA's
compile is not part of the build (``scripts.train_rl`` and ``scripts.bench_rl`` time it).
Environments and networks are made once before any build is timed (importing gymnax takes
seconds). Rows go to ``results/build/profile_build.json``.

    python -m tempo_jax.scripts.profile_build [--programs ppo,reinforce,a2c,lm,decoder]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time
from collections.abc import Callable
from typing import Any

import tempo_jax as tj
from tempo_jax.algorithms import a2c, envs, ppo, reinforce
from tempo_jax.algorithms import config as rl_config
from tempo_jax.configs import read

CACHE_SWITCH = "TEMPO_JAX_SCHEDULE_CACHE"
RL = {
    "ppo": (ppo.build, "ppo_cartpole"),
    "reinforce": (reinforce.build, "reinforce_cartpole"),
    "a2c": (a2c.build, "a2c_cartpole"),
}


def _rl(name: str) -> Callable[[], tj.Compiled]:
    build, path = RL[name]
    config = rl_config.load(path)
    envs.make(config.env, **config.env_options)  # imported before timing

    def compile_it() -> tj.Compiled:
        built = build(config)
        return built.program.compile(built.bounds)

    return compile_it


def _lm() -> Callable[[], tj.Compiled]:
    from tempo_jax.models import train
    from tempo_jax.scripts import train_lm

    config = read("lm_tiny", kind="train")
    cfg, params, tx = train_lm.model(config)
    batch, length = config["train"]["batch"], config["train"]["seq_len"]

    def compile_it() -> tj.Compiled:
        program = train.build_training_program(cfg, params, tx, batch=batch, seq_len=length)
        return program.compile(train_lm.program_bounds(config))

    return compile_it


def _decoder() -> Callable[[], tj.Compiled]:
    from tempo_jax.models import tempo
    from tempo_jax.models.config import tiny_llama

    cfg = tiny_llama()

    def compile_it() -> tj.Compiled:
        tempo._compiled.cache_clear()  # decoders keep their compiled programs: build anew
        return tempo.TempoDecoder(cfg, batch=2, prompt_len=4, steps=12, block=8).compiled

    return compile_it


PROGRAMS: dict[str, Callable[[], Callable[[], tj.Compiled]]] = {
    **{name: (lambda name=name: _rl(name)) for name in RL},
    "lm": _lm,
    "decoder": _decoder,
}


def profile(name: str) -> list[dict[str, Any]]:
    """Two builds of program ``name``: cold, then warm schedule cache."""
    compile_it = PROGRAMS[name]()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        before = {k: os.environ.get(k) for k in ("TEMPO_JAX_CACHE_DIR", CACHE_SWITCH)}
        os.environ.update({"TEMPO_JAX_CACHE_DIR": cache, CACHE_SWITCH: "1"})
        try:
            for cache_state in ("cold", "warm"):
                start = time.perf_counter()
                compiled = compile_it()
                total = time.perf_counter() - start
                stages = dict(compiled.stage_seconds)
                rows.append(
                    {
                        "program": name,
                        "schedule_cache": cache_state,
                        "ops": len(compiled.program.ops),
                        "build_seconds": total,
                        "record_seconds": total - sum(stages.values()),
                        **{f"{stage}_seconds": s for stage, s in stages.items()},
                    }
                )
        finally:
            for key, value in before.items():
                if value is None:
                    os.environ.pop(key)
                else:
                    os.environ[key] = value
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", default=",".join(PROGRAMS))
    parser.add_argument("--out", default="results/build/profile_build.json")
    args = parser.parse_args()
    names = [n for n in args.programs.split(",") if n]
    unknown = [n for n in names if n not in PROGRAMS]
    if unknown or not names:
        parser.error(f"--programs takes some of {', '.join(PROGRAMS)}; got {args.programs!r}")
    rows = [row for name in names for row in profile(name)]
    for row in rows:
        stages = "  ".join(
            f"{k.removesuffix('_seconds')} {v:5.2f}"
            for k, v in row.items()
            if k.endswith("_seconds") and k != "build_seconds"
        )
        print(
            f"{row['program']:10s} {row['schedule_cache']}  {row['ops']:4d} ops  "
            f"build {row['build_seconds']:6.2f} s  ({stages})"
        )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
