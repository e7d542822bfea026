"""Hand-written JAX PPO baselines to compare the tempo_jax algorithms against."""
