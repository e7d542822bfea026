"""tempo_jax models: GPT-2 / Llama decoders written as tempo_jax programs, their flax twins and
hand-written JAX baselines. ``load_pretrained`` reads a local Hugging Face checkpoint."""

from .pretrained import load_pretrained as load_pretrained
from .pretrained import save_pretrained as save_pretrained
