"""The error hierarchy: every user-facing failure is a :class:`TempoError` subclass.

Messages say what is wrong, where (tensor, index, the user's source line) and how to fix it.
"""

from __future__ import annotations


class TempoError(Exception):
    """Base class of every error tempo_jax raises for bad user input."""


class IndexExprError(TempoError):
    """An index expression is malformed (unsupported operation, non-integer constant...)."""


class IndexingError(TempoError):
    """A recurrent tensor is indexed in a way the indexing rules do not allow."""


class SliceStepError(IndexingError):
    """A slice over a domain dim has a step other than 1."""


class ForeignSymbolError(TempoError):
    """A symbol or tensor of one program is used in another."""


class DefinitionError(TempoError):
    """A branch definition `x[...] = value` is malformed."""


class BranchMismatchError(DefinitionError):
    """Two branches of one tensor have different shapes or dtypes."""


class ShapeError(TempoError):
    """A spatial shape cannot be inferred or does not fit."""


class UndefinedPointError(TempoError):
    """A point of a tensor is read but no branch of its definition covers it."""


class OutOfBoundsError(TempoError):
    """A read addresses a point outside `[0, bound)` of some domain dim."""


class DependenceCycleError(TempoError):
    """A point depends on itself, directly or through other tensors."""


class MissingBoundError(TempoError):
    """A bound needed to run the program was not given."""


class InputError(TempoError):
    """An input is missing, unknown, or of the wrong shape or dtype."""


class OutputError(TempoError):
    """An output is badly declared (duplicate name, shape varying over its domain...)."""


class VerificationError(TempoError):
    """The dependence graph breaks one of its structural invariants."""


class ScheduleInfeasibleError(DependenceCycleError):
    """No schedule respects every dependence: the compiler's :class:`DependenceCycleError`.

    ``except tj.DependenceCycleError`` catches it, as it catches the reference interpreter's.
    """


class UnsupportedError(TempoError):
    """The program uses a feature the compiler does not lower yet."""


class MemoryBudgetWarning(UserWarning):
    """``compile(..., memory_budget=...)`` left the planned device peak over the budget: the
    message names the step where the peak is and the values held there."""
