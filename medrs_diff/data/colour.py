"""RGB <-> YCbCr (ITU-R BT.601, full range, the JPEG / OpenCV convention) for fusing colour images on luminance.

Full range: for R, G, B in [0, 1], Y = 0.299 R + 0.587 G + 0.114 B lies in [0, 1] and
Cb = 0.5 + (B - Y) / 1.772, Cr = 0.5 + (R - Y) / 1.402 in [0, 1]. The inverse is the exact matrix
inverse, so a round trip returns the input to float rounding. scikit-image's ``rgb2ycbcr`` is the
same transform in studio range: Y_sk = 16 + 219 Y, Cb_sk = 128 + 224 (Cb - 0.5), Cr_sk likewise.

DDFM fuses grey images; a colour input (visible image, colour-coded PET / SPECT) is fused on its Y
channel and its Cb / Cr are put back (:func:`fuse_on_luminance`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
#: rows: Y, Cb, Cr as combinations of R, G, B (offsets 0, 0.5, 0.5 added after)
RGB_TO_YCBCR = torch.tensor(
    [
        [_KR, _KG, _KB],
        [-_KR / (2 * (1 - _KB)), -_KG / (2 * (1 - _KB)), 0.5],
        [0.5, -_KG / (2 * (1 - _KR)), -_KB / (2 * (1 - _KR))],
    ],
    dtype=torch.float64,
)
YCBCR_TO_RGB = torch.linalg.inv(RGB_TO_YCBCR)
_OFFSET = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)


def _check(x: Tensor, what: str) -> None:
    if x.ndim < 3 or x.shape[1] != 3:
        raise ValueError(f"{what} must have 3 channels on axis 1, shape (B, 3, ...); got {tuple(x.shape)}")


def _apply(m: Tensor, x: Tensor) -> Tensor:
    return torch.einsum("ij,bj...->bi...", m.to(x.device, x.dtype), x)


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """(B, 3, ...) RGB in [0, 1] -> full-range YCbCr in [0, 1] (BT.601)."""
    _check(rgb, "RGB image")
    off = _OFFSET.to(rgb.device, rgb.dtype).reshape(1, 3, *([1] * (rgb.ndim - 2)))
    return _apply(RGB_TO_YCBCR, rgb) + off


def ycbcr_to_rgb(ycc: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_ycbcr` (no clipping: a round trip is exact to float rounding)."""
    _check(ycc, "YCbCr image")
    off = _OFFSET.to(ycc.device, ycc.dtype).reshape(1, 3, *([1] * (ycc.ndim - 2)))
    return _apply(YCBCR_TO_RGB, ycc - off)


def fuse_on_luminance(colour: Tensor, grey: Tensor, fuse: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Fuse a colour image (B, 3, ...) in [0, 1] with a grey one (B, 1, ...) on luminance.

    ``fuse(y, grey)`` returns the fused luminance (B, 1, ...); the colour image's Cb / Cr are put back
    and the result is converted to RGB, clipped to [0, 1].
    """
    ycc = rgb_to_ycbcr(colour)
    if grey.shape[0] != colour.shape[0] or grey.shape[1] != 1 or grey.shape[2:] != colour.shape[2:]:
        raise ValueError(
            f"the grey image {tuple(grey.shape)} must be (B, 1, ...) on the colour image's grid {tuple(colour.shape)}"
        )
    y = fuse(ycc[:, :1], grey)
    if y.shape != grey.shape:
        raise ValueError(f"the fused luminance has shape {tuple(y.shape)}, expected {tuple(grey.shape)}")
    return ycbcr_to_rgb(torch.cat([y, ycc[:, 1:]], dim=1)).clamp(0.0, 1.0)
