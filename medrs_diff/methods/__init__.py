"""Published methods, each a small composition of a net, a condition encoder and an engine config."""

from .base import DiffusionMethod
from .segdiff import SegDiff
from .srdiff import SRDiff

METHODS: dict[str, type[DiffusionMethod]] = {"segdiff": SegDiff, "srdiff": SRDiff}

__all__ = ["METHODS", "DiffusionMethod", "SRDiff", "SegDiff"]
