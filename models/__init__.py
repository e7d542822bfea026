"""tempo_jax models."""
