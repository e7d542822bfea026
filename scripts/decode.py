"""Decode text with a local Hugging Face checkpoint, compiled by tempo_jax.

Reads ``config.json``, the safetensors weights and ``tokenizer.json`` from ``--model`` (a
Llama or GPT-2 folder as transformers saves it; nothing is downloaded), encodes each
``--prompt``, generates with :meth:`models.tempo.TempoModel.generate_hf` and prints each
continuation.

    python -m tempo_jax.scripts.decode --model DIR --prompt "Once upon a time" [--max-new-tokens 64]
        [--sample --temperature 0.8 --top-k 50 --top-p 0.95 --seed 0]
        [--devices N [--tensor-parallel M]]

``--devices N`` (``-1``: every device) splits the prompts over ``N / M`` devices and, with
``--tensor-parallel M``, every layer's heads and hidden units over ``M``
(:func:`models.sharding.decode_mesh`); the number of prompts must be a multiple of ``N / M``.
Under ``jax.distributed`` (``tempo-jax launch --processes N decode ...``) the default is every
process's devices.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax

import tempo_jax as tj
from tempo_jax.models.config import CheckpointError
from tempo_jax.models.sharding import decode_mesh
from tempo_jax.models.text import generate_text, load_text_model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a local checkpoint folder")
    parser.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--devices", type=int, default=None, help="-1: every device")
    parser.add_argument("--tensor-parallel", type=int, default=1, help="devices per heads split")
    args = parser.parse_args(argv)
    tj.enable_compilation_cache()
    try:
        mesh = None
        if args.devices is not None or args.tensor_parallel != 1 or jax.process_count() > 1:
            devices = -1 if args.devices is None else args.devices
            mesh = decode_mesh(devices, args.tensor_parallel)
        model, tokenizer = load_text_model(args.model)
        texts = generate_text(
            model,
            tokenizer,
            args.prompt,
            max_new_tokens=args.max_new_tokens,
            key=jax.random.PRNGKey(args.seed),
            do_sample=args.sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            mesh=mesh,
        )
    except (CheckpointError, ImportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for prompt, text in zip(args.prompt, texts, strict=True):
        print(prompt + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
