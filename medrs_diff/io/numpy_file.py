"""NumPy files: ``.npy`` (one array) and ``.npz`` (read one array by ``key``, or the single one).

Pickled objects are never loaded (``allow_pickle=False``), so a file cannot run code. NumPy files
carry no geometry: the geometry is ``Geometry("numpy")`` with an empty layout; writing keeps only
the values (``.npy``; ``.npz`` stores the array under the key ``data``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, require_file
from . import registry
from .atomic import atomic_output
from .types import ArrayFile, Geometry

PathLike = str | os.PathLike
#: Key under which :func:`write_numpy` stores the array of an ``.npz``.
NPZ_KEY = "data"


def read_numpy(path: PathLike, key: str | None = None, mmap: bool = False) -> ArrayFile:
    """Read a ``.npy`` (memory-mapped with ``mmap``) or one array of an ``.npz`` (``key``, or its only one)."""
    p = require_file(path, "NumPy file")
    npz = registry.suffix_of(p) == ".npz"
    with open(p, "rb") as fh:
        magic = fh.read(6)
    if magic[: 4 if npz else 6] != (b"PK\x03\x04" if npz else b"\x93NUMPY"):
        raise DataError(p, f"cannot be read as {'.npz' if npz else '.npy'} (it does not start like one)",
                        "re-save it with numpy.save / numpy.savez")
    try:
        if not npz:
            data = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
        else:
            with np.load(p, allow_pickle=False) as z:
                names = list(z.files)
                if key is None and len(names) != 1:
                    raise DataError(p, f"holds {len(names)} arrays {names}", "pass `key=` to choose one")
                if key is not None and key not in names:
                    raise DataError(p, f"has no array '{key}' (it has {names})", "pass one of those as `key`")
                key = key if key is not None else names[0]
                data = z[key]
    except DataError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(p, "holds pickled Python objects, which are never loaded (they can run code)",
                            "re-save plain numeric arrays with numpy.save / numpy.savez") from exc
        raise DataError(p, f"cannot be read as {'.npz' if npz else '.npy'} ({exc})",
                        "re-save it with numpy.save / numpy.savez") from exc
    except Exception as exc:
        raise DataError(p, f"cannot be read as {'.npz' if npz else '.npy'} ({type(exc).__name__}: {exc})",
                        "re-save it with numpy.save / numpy.savez") from exc
    if data.dtype == object:
        raise DataError(p, "holds an object array", "re-save plain numeric arrays")
    extra = {"key": key} if npz else {}
    return ArrayFile(p, data, Geometry(kind="numpy", extra=extra))


def write_numpy(path: PathLike, data: Any, geometry: Geometry | None = None, *,
                inputs: Iterable[PathLike] = ()) -> Path:
    """Write an array as ``.npy`` (or ``.npz`` under the key ``data``), atomically. Geometry is not stored."""
    arr = data.detach().cpu().numpy() if hasattr(data, "detach") else np.asarray(data)
    if arr.dtype == object:
        raise DataError(path, "data is an object array", "pass a numeric array")
    npz = registry.suffix_of(path) == ".npz"
    with atomic_output(path, inputs) as tmp, open(tmp, "wb") as f:
        if npz:
            np.savez_compressed(f, **{NPZ_KEY: arr})
        else:
            np.save(f, arr, allow_pickle=False)
    return Path(path)


registry.register(registry.FileFormat(
    name="numpy", suffixes=(".npy", ".npz"), reader=read_numpy, writer=write_numpy,
    description="NumPy array (.npy; .npz read by key), no geometry, never unpickled"))
