"""tempo_jax scripts."""
