"""Back-compatible home of :class:`DataError` (the toolkit's errors live in :mod:`medrs_diff.errors`)."""

from ..errors import DataError, MedrsError, require_file

__all__ = ["DataError", "MedrsError", "require_file"]
