"""Decode text with a local Hugging Face checkpoint, compiled by tempo_jax.

Reads ``config.json``, the safetensors weights and ``tokenizer.json`` from ``--model`` (a
Llama or GPT-2 folder as transformers saves it; nothing is downloaded), encodes each
``--prompt``, generates with :meth:`models.tempo.TempoModel.generate_hf` and prints each
continuation.

    python -m tempo_jax.scripts.decode --model DIR --prompt "Once upon a time" [--max-new-tokens 64]
        [--sample --temperature 0.8 --top-k 50 --top-p 0.95 --seed 0]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax

import tempo_jax as tj
from tempo_jax.models.config import CheckpointError
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
    args = parser.parse_args(argv)
    tj.enable_compilation_cache()
    try:
        model, tokenizer = load_text_model(args.model)
    except (CheckpointError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
    )
    for prompt, text in zip(args.prompt, texts, strict=True):
        print(prompt + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
