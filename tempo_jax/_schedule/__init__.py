"""Scheduling: all islpy use lives here; later stages see only the typed schedule tree.

- :mod:`.isl_convert`: the one converter from the SDG to isl (domains, access maps,
  first-match branch conditions, dependences).
- :mod:`.domains`: the defined points of each op (an isl fixpoint) and compile-time checks
  of reads of undefined or out-of-bounds points.
- :mod:`.scheduler`: isl scheduling of the dependences, and the AST converted to a tree.
- :mod:`.stopped`: the split of a program ``p.stop_when`` ends around one loop over its dim.
- :mod:`.tree`: the typed schedule tree (loops, sequences, guards, op executions).
"""
