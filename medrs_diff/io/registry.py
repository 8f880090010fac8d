"""One registry from file type to reader and writer (nnU-Net's reader/writer registry is the model).

``format_for(path)`` finds the format by suffix (``.nii.gz`` before ``.gz``); ``read(path)`` returns an
:class:`~medrs_diff.io.types.ArrayFile`; ``write(path, data, geometry)`` writes atomically, keeping the
geometry. An unknown suffix names the known ones. ``list_inputs(folder)`` lists readable files of a
folder, skipping hidden and temporary (``.tmp-*``) files left by an interrupted run. The built-in
formats register themselves when :mod:`medrs_diff.io` is imported (this module imports none of them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .atomic import check_folder_writable
from .types import ArrayFile, Geometry

PathLike = str | os.PathLike
Reader = Callable[..., ArrayFile]
Writer = Callable[..., Path]


@dataclass(frozen=True)
class FileFormat:
    """A file type: its name, suffixes (lower case, with the dot), reader and optional writer."""

    name: str
    suffixes: tuple[str, ...]
    reader: Reader
    writer: Writer | None = None
    description: str = ""
    #: the Python package the reader needs, named in the error when it is missing
    requires: str | None = None


_FORMATS: dict[str, FileFormat] = {}


def register(fmt: FileFormat) -> FileFormat:
    """Add (or replace) a format; its suffixes must not belong to another format."""
    for other in _FORMATS.values():
        if other.name != fmt.name and set(other.suffixes) & set(fmt.suffixes):
            raise ValueError(f"suffixes {sorted(set(other.suffixes) & set(fmt.suffixes))} already belong to "
                             f"the {other.name} format")
    _FORMATS[fmt.name] = fmt
    return fmt


def registered_formats() -> dict[str, FileFormat]:
    """The registered formats by name."""
    return dict(_FORMATS)


def known_suffixes() -> tuple[str, ...]:
    return tuple(sorted({s for f in _FORMATS.values() for s in f.suffixes}, key=lambda s: (-len(s), s)))


def suffix_of(path: PathLike) -> str:
    """The registered suffix a path ends with (longest match, case-insensitive), else its last suffix."""
    name = Path(path).name.lower()
    for s in known_suffixes():
        if name.endswith(s):
            return s
    return Path(name).suffix


def stem_of(path: PathLike) -> str:
    """File name without its registered suffix (``case.nii.gz`` -> ``case``)."""
    name = Path(path).name
    s = suffix_of(path)
    return name[: len(name) - len(s)] if s and name.lower().endswith(s) else Path(name).stem


def format_for(path: PathLike, allowed: Iterable[str] | None = None) -> FileFormat:
    """The format of ``path`` by suffix; ``DataError`` naming the known suffixes otherwise."""
    s = suffix_of(path)
    names = set(allowed) if allowed is not None else None
    for fmt in _FORMATS.values():
        if s in fmt.suffixes and (names is None or fmt.name in names):
            return fmt
    pool = [f for f in _FORMATS.values() if names is None or f.name in names]
    known = ", ".join(sorted({x for f in pool for x in f.suffixes}))
    raise DataError(path, f"has an unknown file type {s or '(no suffix)'!r}", f"use one of {known}")


def is_readable_input(path: PathLike, allowed: Iterable[str] | None = None) -> bool:
    """A regular, non-hidden, non-temporary file of a registered (or allowed) format."""
    p = Path(path)
    if p.name.startswith(".") or not p.is_file():
        return False
    try:
        format_for(p, allowed)
    except DataError:
        return False
    return True


def list_inputs(folder: PathLike, allowed: Iterable[str] | None = None, what: str = "input") -> list[Path]:
    """Sorted readable files of ``folder`` (hidden / ``.tmp-*`` files skipped); ``DataError`` if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, f"{what} folder does not exist", "check the path")
    allowed = list(allowed) if allowed is not None else None
    files = sorted(p for p in folder.iterdir() if is_readable_input(p, allowed))
    if not files:
        pool = [f for f in registered_formats().values() if allowed is None or f.name in allowed]
        known = ", ".join(sorted({x for f in pool for x in f.suffixes}))
        raise DataError(folder, f"{what} folder holds no readable file", f"put {known} files in it")
    return files


def read(path: PathLike, allowed: Iterable[str] | None = None, **kwargs: Any) -> ArrayFile:
    """Read any registered file into an :class:`ArrayFile` (array + geometry)."""
    fmt = format_for(path, allowed)
    return fmt.reader(path, **kwargs)


def write(path: PathLike, data: Any, geometry: Geometry | None = None, *, inputs: Sequence[PathLike] = (),
          **kwargs: Any) -> Path:
    """Write ``data`` with ``geometry`` in the format of ``path``'s suffix, atomically."""
    fmt = format_for(path)
    if fmt.writer is None:
        writable = ", ".join(sorted(s for f in _FORMATS.values() if f.writer for s in f.suffixes))
        raise DataError(path, f"{fmt.name} files can be read but not written", f"write one of {writable}")
    return fmt.writer(path, np.asarray(data) if not hasattr(data, "detach") else data.detach().cpu().numpy(),
                      geometry, inputs=inputs, **kwargs)


def check_writable(path: PathLike, allowed: Iterable[str] | None = None) -> FileFormat:
    """Before any compute: the output suffix has a writer and the output folder can be created / written."""
    fmt = format_for(path, allowed)
    if fmt.writer is None:
        raise DataError(path, f"{fmt.name} files cannot be written", "choose an output suffix with a writer")
    p = Path(path)
    if p.is_dir():
        raise DataError(p, "output path is an existing folder", "give a file name, not a folder")
    check_folder_writable(p.parent)
    return fmt
