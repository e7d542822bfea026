"""Polyhedral scheduling of the SDG; all islpy use in the project lives behind this package.

:mod:`tempo_jax._schedule.isl_convert` converts the IR (domains, index expressions, edges,
first-match merge branches) to isl sets and maps.
"""
