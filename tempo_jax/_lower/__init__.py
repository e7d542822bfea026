"""Lowering: the schedule tree becomes one pure, jittable JAX function."""
