"""Safe output files: written under a temporary name in the same folder, renamed when complete.

An output that resolves to one of the inputs is refused, so an input is never overwritten, and a
failure (exception, Ctrl-C) leaves no half-written file behind. A killed process (``kill -9``, power
loss) cannot clean up: its temporary files (``.tmp-<pid>-<host>-<token>-<name>``) name their writer,
so :func:`clean_stale_temporaries` removes them once that process is gone (or the file is old).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import time
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


def check_folder_writable(folder: PathLike) -> Path:
    """Before any compute: ``folder`` exists as a writable folder or can be created (its nearest
    existing ancestor is a writable folder, not a file). Creates nothing; returns the Path."""
    folder = Path(folder)
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise DataError(folder, f"output folder cannot be created: {parent} is a file, not a folder",
                        "choose another output path (or move that file away)")
    if not os.access(parent, os.W_OK | os.X_OK):
        what = "output folder is not writable" if parent == folder else f"output folder cannot be created in {parent}"
        raise DataError(folder, f"{what} (permission denied)", "choose a writable output path")
    return folder


def check_output_path(out_path: PathLike, inputs: Iterable[PathLike] = (), create: bool = True) -> Path:
    """Refuse an output path equal to an input or naming a folder; create the output folder (with
    ``create=False`` only check that it can be created and written, for checks before any compute)."""
    out = Path(out_path)
    for inp in inputs:
        if inp is not None and _same_file(out, Path(inp)):
            raise DataError(out, "output path is the same file as an input", "choose a different output path")
    if out.exists() and out.is_dir():
        raise DataError(out, "output path is an existing folder", "give a file name, not a folder")
    if not create:
        check_folder_writable(out.parent)
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file where a folder is needed, permissions, read-only file system
        raise DataError(out.parent, f"output folder cannot be created ({err.strerror or err})",
                        "choose an output path whose folders can be created and written") from err
    return out


#: Prefix of every temporary file the toolkit writes; input listings skip such files.
TMP_PREFIX = ".tmp-"


def is_temporary(path: PathLike) -> bool:
    """True for a temporary file left by an interrupted atomic write (``.tmp-*``)."""
    return Path(path).name.startswith(TMP_PREFIX)


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


#: ``.tmp-<pid>-<host>-<token>-<name>``: the writer's process id and a short hash of its host name.
_OWNED = re.compile(rf"^{re.escape(TMP_PREFIX)}(\d+)-([0-9a-f]{{6}})-[0-9a-f]{{8}}-.")
#: A temporary file whose writer is unknown (older names) and untouched for this long is stale.
STALE_TMP_SECONDS = 300.0


def temp_path_for(out: Path) -> Path:
    """Hidden temporary name beside ``out`` that keeps its full extension (``.nii.gz``, ``.tif``) and
    names its writer (process id, host), so a later run can tell a killed writer's leftover."""
    return out.parent / f"{TMP_PREFIX}{os.getpid()}-{_host_tag()}-{secrets.token_hex(4)}-{out.name}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process (or unknowable): keep its file
    return True


def is_stale_temporary(path: PathLike, min_age_s: float = STALE_TMP_SECONDS) -> bool:
    """A temporary file of ours that no live writer will finish: written on this host by a process
    that is gone, or (writer unknown or on another host) not modified for ``min_age_s`` seconds."""
    p = Path(path)
    if not is_temporary(p) or not p.is_file():
        return False
    m = _OWNED.match(p.name)
    if m and m.group(2) == _host_tag():
        pid = int(m.group(1))
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        return time.time() - p.stat().st_mtime >= min_age_s
    except OSError:
        return False


def clean_stale_temporaries(folder: PathLike, min_age_s: float = STALE_TMP_SECONDS) -> list[Path]:
    """Delete the stale temporary files (:func:`is_stale_temporary`) directly in ``folder``; returns them.
    A missing folder, or a file that vanishes or cannot be deleted, is left alone."""
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for f in sorted(root.iterdir()):
        try:
            if is_stale_temporary(f, min_age_s):
                f.unlink()
                removed.append(f)
        except OSError:
            continue
    return removed


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
