"""Safe output files: written under a temporary name in the same folder, renamed when complete.

An output that resolves to one of the inputs is refused, so an input is never overwritten, and a
failure (exception, Ctrl-C) leaves no half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from ..errors import DataError

PathLike = str | os.PathLike


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(out_path: PathLike, inputs: Iterable[PathLike] = ()) -> Path:
    """Refuse an output path equal to an input; create the output folder. Returns the Path."""
    out = Path(out_path)
    for inp in inputs:
        if inp is not None and _same_file(out, Path(inp)):
            raise DataError(out, "output path is the same file as an input", "choose a different output path")
    if out.exists() and out.is_dir():
        raise DataError(out, "output path is an existing folder", "give a file name, not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


#: Prefix of every temporary file the toolkit writes; input listings skip such files.
TMP_PREFIX = ".tmp-"


def is_temporary(path: PathLike) -> bool:
    """True for a temporary file left by an interrupted atomic write (``.tmp-*``)."""
    return Path(path).name.startswith(TMP_PREFIX)


def temp_path_for(out: Path) -> Path:
    """Hidden temporary name beside ``out`` that keeps its full extension (``.nii.gz``, ``.tif``)."""
    return out.parent / f"{TMP_PREFIX}{secrets.token_hex(4)}-{out.name}"


@contextlib.contextmanager
def atomic_outputs(out_paths: Sequence[PathLike], inputs: Iterable[PathLike] = ()) -> Iterator[list[Path]]:
    """Yield temporary paths for ``out_paths``; rename them all into place only if the block succeeds."""
    inputs = list(inputs)
    outs = [check_output_path(p, inputs) for p in out_paths]
    if len({o.resolve() for o in outs}) != len(outs):
        raise DataError(outs[0], "two outputs share one path", "give each output its own path")
    tmps = [temp_path_for(o) for o in outs]
    try:
        yield tmps
    except BaseException:
        for t in tmps:
            with contextlib.suppress(OSError):
                t.unlink()
        raise
    for t, o in zip(tmps, outs, strict=True):
        os.replace(t, o)


@contextlib.contextmanager
def atomic_output(out_path: PathLike, inputs: Iterable[PathLike] = ()) -> Iterator[Path]:
    """Single-file form of :func:`atomic_outputs`."""
    with atomic_outputs([out_path], inputs) as (tmp,):
        yield tmp


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # make a rename durable (POSIX; best effort elsewhere)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(out_path: PathLike, data: bytes, inputs: Iterable[PathLike] = ()) -> Path:
    """Write ``data`` to a temporary file beside ``out_path``, fsync, rename; returns the path."""
    with atomic_output(out_path, inputs) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    _fsync_dir(Path(out_path).parent)
    return Path(out_path)


def atomic_write_text(out_path: PathLike, text: str, inputs: Iterable[PathLike] = ()) -> Path:
    """UTF-8 text form of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(out_path, text.encode("utf-8"), inputs)


def atomic_save(out_path: PathLike, save: Callable[[Path], None], inputs: Iterable[PathLike] = ()) -> Path:
    """Call ``save(tmp)`` to write a temporary file beside ``out_path``, fsync it, rename it into place."""
    with atomic_output(out_path, inputs) as tmp:
        save(tmp)
        with contextlib.suppress(OSError), open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    _fsync_dir(Path(out_path).parent)
    return Path(out_path)
