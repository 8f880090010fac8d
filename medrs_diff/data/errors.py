"""One error type for bad inputs: it names the file, the problem and the fix."""

from __future__ import annotations

import os
from pathlib import Path


class DataError(ValueError):
    """A bad input file or argument. The message reads ``<file>: <problem>. Fix: <fix>``."""

    def __init__(self, path: str | os.PathLike | object | None, problem: str, fix: str) -> None:
        self.path = Path(path) if isinstance(path, str | os.PathLike) else path
        self.problem = problem
        self.fix = fix
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}{problem}. Fix: {fix}")


def require_file(path: str | os.PathLike, what: str = "input file") -> Path:
    """Return ``path`` as a Path if it is a readable file, else raise ``DataError``."""
    p = Path(path)
    if not p.exists():
        raise DataError(p, f"{what} does not exist", "check the path (and the working directory)")
    if not p.is_file():
        raise DataError(p, f"{what} is not a regular file", "pass the file itself, not a folder")
    if not os.access(p, os.R_OK):
        raise DataError(p, f"{what} is not readable (permission denied)", "fix the file permissions")
    return p
