"""2-D images (``.png``, ``.jpg`` / ``.jpeg``, ``.gif``, ``.bmp``) via Pillow, as (channel, y, x).

Reading (every Pillow mode is handled explicitly; the original mode is kept in ``geometry.extra["mode"]``):

- ``L`` -> 1 channel uint8; ``I;16*`` -> 1 channel uint16; ``I`` -> int32; ``F`` -> float32;
  ``1`` (bilevel) -> 1 channel uint8 with values 0 / 1.
- ``RGB`` -> 3 channels; ``CMYK`` / ``YCbCr`` / ``LAB`` / ``HSV`` are converted to RGB.
- ``P`` (palette): ``palette="auto"`` gives 1 grey channel when the palette used is grey (DRIVE's GIF
  masks), else 3 RGB channels; ``palette="index"`` gives the palette indices (label PNGs such as
  Pascal VOC), with the palette in ``extra["palette"]``.
- ``LA`` / ``RGBA`` (and ``P`` with transparency): ``alpha="drop"`` (default) removes the alpha
  channel (``extra["alpha_dropped"] = True``), ``alpha="keep"`` returns it as the last channel.
- Multi-frame GIFs: the first frame (``extra["n_frames"]`` tells how many there are). Pixels are in
  stored order; an EXIF orientation is not applied (it is recorded in ``extra["exif_orientation"]``).

Writing (PNG, GIF, BMP, and TIFF through :func:`write_image2d`; in the registry ``.tif`` belongs to
the GeoTIFF format): values are kept exactly or the write is refused. uint8 and uint16 are written
as they are (16 bit: one channel, PNG / TIFF only); bool becomes uint8 0 / 1; other integer arrays
and exactly integral float arrays (label maps) become uint8, or uint16 when a value exceeds 255;
any other float array is refused (scale it to integers first). **JPEG is read-only**: it is lossy,
so writing it would change the values; write PNG instead. RGB GIFs are refused too (GIF quantises
colours to a 256-entry palette).
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
READ_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")
_PIL_FORMAT = {".png": "PNG", ".gif": "GIF", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
               ".jpg": "JPEG", ".jpeg": "JPEG"}
_LOSSY = (".jpg", ".jpeg")


def _pil() -> Any:
    from PIL import Image

    return Image


def _palette_is_grey(im: Any) -> bool:
    used = np.unique(np.asarray(im))
    pal = np.asarray(im.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    used = used[used < len(pal)]
    return bool(np.all(pal[used, 0] == pal[used, 1]) and np.all(pal[used, 1] == pal[used, 2]))


def _to_array(im: Any, palette: str, alpha: str, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    mode = im.mode
    extra: dict[str, Any] = {"mode": mode}
    if mode == "P" and palette == "index":
        extra["palette"] = list(im.getpalette() or [])
        return np.asarray(im)[None], extra
    if mode == "P":
        has_alpha = "transparency" in im.info
        if _palette_is_grey(im) and not (has_alpha and alpha == "keep"):
            im, mode = im.convert("L"), "L"
            extra["alpha_dropped"] = has_alpha
        else:
            im = im.convert("RGBA" if has_alpha else "RGB")
            mode = im.mode
    if mode in ("PA", "La"):
        im, mode = im.convert("LA" if mode == "La" else "RGBA"), ("LA" if mode == "La" else "RGBA")
    if mode == "RGBa":
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im, mode = im.convert("RGB"), "RGB"
    if mode in ("LA", "RGBA"):
        arr = np.asarray(im)
        if alpha == "drop":
            extra["alpha_dropped"] = True
            arr = arr[..., :-1]
        return np.moveaxis(arr, -1, 0), extra
    if mode == "RGB":
        return np.moveaxis(np.asarray(im), -1, 0), extra
    if mode == "1":
        return np.asarray(im).astype(np.uint8)[None], extra
    if mode in ("L", "I", "F") or mode.startswith("I;16"):
        arr = np.asarray(im)
        if mode.startswith("I;16"):
            arr = arr.astype(np.uint16)
        return arr[None], extra
    raise DataError(path, f"has the unsupported image mode {mode!r}", "re-save it as an RGB or grey PNG")


def read_image2d(path: PathLike, palette: str = "auto", alpha: str = "drop") -> ArrayFile:
    """Read a PNG / JPEG / GIF / BMP as (C, H, W); see the module notes for modes, palettes and alpha."""
    if palette not in ("auto", "index"):
        raise DataError(path, f"palette={palette!r}", "use 'auto' or 'index'")
    if alpha not in ("drop", "keep"):
        raise DataError(path, f"alpha={alpha!r}", "use 'drop' or 'keep'")
    p = require_file(path, "image file")
    Image = _pil()
    try:
        with Image.open(p) as im:
            im.load()
            n_frames = int(getattr(im, "n_frames", 1))
            exif = im.getexif().get(0x0112) if hasattr(im, "getexif") else None
            fmt = im.format
            data, extra = _to_array(im, palette, alpha, p)
    except DataError:
        raise
    except Exception as exc:  # PIL.UnidentifiedImageError, OSError (truncated), ...
        raise DataError(p, f"cannot be read as an image ({type(exc).__name__}: {exc})",
                        "check that it is a complete, uncorrupted image file (re-export it)") from exc
    extra["format"] = fmt
    if n_frames > 1:
        extra["n_frames"] = n_frames
    if exif not in (None, 1):
        extra["exif_orientation"] = int(exif)
    return ArrayFile(p, np.ascontiguousarray(data), Geometry(kind="image2d", layout=("channel", "y", "x"),
                                                             extra=extra))


def _integer_image(arr: np.ndarray, path: PathLike) -> np.ndarray:
    """``arr`` as uint8 / uint16 with the same values, else ``DataError``."""
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise DataError(path, f"2D image data is a {arr.dtype} array with non-integer values (a PNG stores "
                            "integers only)", "scale it to integers first (e.g. np.round(x * 255).astype(np.uint8)) "
                            "or write a float GeoTIFF (.tif) / .npy")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise DataError(path, f"2D image data has dtype {arr.dtype}", "convert to uint8 or uint16 first")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0 or hi > 65535:
        raise DataError(path, f"2D image values span {lo:g}..{hi:g}, outside 0..65535",
                        "shift / scale them into 0..255 (uint8) or 0..65535 (uint16), or write a .tif / .npy")
    return arr.astype(np.uint8 if hi <= 255 else np.uint16)


def write_image2d(data: Any, out_path: PathLike, inputs: Iterable[PathLike] = ()) -> Path:
    """Write (C, H, W) / (H, W) data (C = 1, 3 or 4) as PNG / GIF / BMP / TIFF, atomically, values kept
    exactly (see the module notes: JPEG and RGB GIF are refused as lossy, non-integral floats too)."""
    arr = data.detach().cpu().numpy() if hasattr(data, "detach") else np.asarray(data)
    suffix = registry.suffix_of(out_path)
    if suffix in _LOSSY:
        raise DataError(out_path, "JPEG output is refused: JPEG is lossy, so the written values would differ",
                        "write a .png (lossless) instead")
    if suffix not in _PIL_FORMAT:
        raise DataError(out_path, f"cannot write a 2D image as {suffix or '(no suffix)'!r}",
                        "use .png, .gif, .bmp or .tif")
    if arr.ndim == 3:
        if arr.shape[0] not in (1, 3, 4):
            raise DataError(out_path, f"2D image data has {arr.shape[0]} channels (shape {arr.shape})",
                            "pass (1, H, W) grey, (3, H, W) RGB or (4, H, W) RGBA data")
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    if arr.ndim != 2 and arr.ndim != 3:
        raise DataError(out_path, f"2D image data has shape {arr.shape}", "pass (C, H, W) or (H, W)")
    arr = np.ascontiguousarray(_integer_image(arr, out_path))
    if arr.dtype == np.uint16 and (arr.ndim == 3 or suffix in (".gif", ".bmp")):
        raise DataError(out_path, f"16-bit {'colour' if arr.ndim == 3 else 'grey'} data cannot be written as "
                        f"{suffix}", "write 16-bit grey as .png, colour as a GeoTIFF (.tif), or convert to uint8")
    if suffix == ".gif" and arr.ndim == 3:
        raise DataError(out_path, "colour GIF output is refused: GIF quantises colours to a 256-entry palette",
                        "write a .png instead")
    Image = _pil()
    im = Image.fromarray(arr)
    with atomic_output(out_path, inputs) as tmp:
        im.save(tmp, format=_PIL_FORMAT[suffix])
    return Path(out_path)


def _write(path: PathLike, data: np.ndarray, geometry: Geometry | None, *, inputs: Iterable[PathLike] = (),
           **kwargs: Any) -> Path:
    """Registry writer (2-D images carry no geometry beyond their shape)."""
    if kwargs:
        raise DataError(path, f"unknown options {sorted(kwargs)} for a 2D image", "drop them")
    return write_image2d(data, path, inputs=inputs)


registry.register(registry.FileFormat(
    name="image2d", suffixes=READ_SUFFIXES, reader=read_image2d, writer=_write,
    description="PNG / GIF / BMP (read and write) and JPEG (read only), (channel, y, x)", requires="Pillow"))
