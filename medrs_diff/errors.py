"""One error style for the whole toolkit: ``<where>: <problem>. Fix: <fix>``.

Every error a user can cause (a bad file, argument, recipe or checkpoint) is a :class:`MedrsError`:
the CLI prints its one line and exits 2, no traceback. ``DataError`` is for input files and
arguments, ``CheckpointError`` for checkpoints, ``RecipeError`` for recipes and ``ArgumentError``
for command-line / API arguments; all are ``ValueError`` subclasses so callers may catch either.
"""

from __future__ import annotations

import os
from pathlib import Path


class MedrsError(ValueError):
    """A user-fixable error that names where it happened, what is wrong and how to fix it."""

    def __init__(self, where: str | os.PathLike | object | None, problem: str, fix: str) -> None:
        self.path = Path(where) if isinstance(where, str | os.PathLike) else where
        self.where = None if where is None else str(where)
        self.problem = problem
        self.fix = fix
        prefix = f"{where}: " if where is not None else ""
        super().__init__(f"{prefix}{problem}. Fix: {fix}")


class DataError(MedrsError):
    """A bad input file or data argument."""


class CheckpointError(MedrsError):
    """A checkpoint that cannot be used."""


class RecipeError(MedrsError):
    """A recipe (LightningCLI YAML) that cannot be used."""


class ArgumentError(MedrsError):
    """A bad command-line or API argument (range, choice, combination)."""


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
