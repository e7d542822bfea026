"""tempo_jax configs."""
