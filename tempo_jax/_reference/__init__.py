"""The reference interpreter (``tj.reference.run``): the point-by-point oracle."""

from .interpreter import run as run

__all__ = ["run"]
