"""tempo_jax algorithms."""
