"""FF-Parser (MedSegDiff, Wu et al. 2022, arXiv 2211.00611): a learnable filter in the Fourier domain.

``y = irfftn(W(shape) * rfftn(x))`` over the spatial axes of B×C×spatial features (2-D: ``rfft2``,
3-D: ``rfftn`` over three axes, ``norm="ortho"``), with one complex filter per channel. It lets the
network damp the high-frequency noise that the noisy mask x_t carries into the condition branch.

Resolution-agnostic: the official code hard-codes a 256-pixel C×H×(W/2+1) weight, so it runs at one
input size only. Here the filter is stored at a fixed base size (``base_size``; real and imaginary
parts as two real parameters of shape C×b0[×b1]×(b_last/2+1), the rfft grid of a ``base_size``
input) and evaluated at the frequencies of the actual input's rfft grid by separable linear
interpolation (bilinear in 2-D, trilinear in 3-D) of the real and imaginary parts **in normalised
frequency** (cycles per pixel):

- full axes are periodic in frequency: stored index j sits at j/b (mod 1), the FFT order, and an
  input of size n puts its bin k at k/n, i.e. at fractional stored index k·b/n; the interpolation
  wraps around (the bin just below DC blends the last stored bin and DC; +Nyquist ≡ -Nyquist);
- the half (last, rfft) axis runs from DC to Nyquist: bin k of an n-sized input sits at stored index
  k·b/n, clamped to the last stored bin. DC maps onto DC and Nyquist onto Nyquist, the
  ``align_corners=True`` convention.

Why this way rather than ``F.interpolate`` of the FFT-ordered weight: the FFT order is not monotonic
in frequency (positive then negative frequencies), so plain image resampling would blend unrelated
frequencies near the wrap; interpolating in normalised frequency keeps each bin's meaning (a filter
that zeroes |f| > 1/4 cycles/px does so at every input size). At the base size the stored values are
used exactly (integer indices, no blending). The filter starts as the identity (all ones + 0j), so
the layer is the identity at any size until it learns otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import ArgumentError, DataError

__all__ = ["FFParser"]


def _sizes(base_size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    sizes = (base_size,) * spatial_dims if isinstance(base_size, int) else tuple(base_size)
    if len(sizes) != spatial_dims or any(isinstance(s, bool) or not isinstance(s, int) or s < 2 for s in sizes):
        raise ArgumentError("base_size", f"must be an integer >= 2 or {spatial_dims} of them, got {base_size!r}",
                            "pass e.g. base_size=32 (the filter is resampled to any input size)")
    return sizes


class FFParser(nn.Module):
    """Learnable complex filter in the Fourier domain, resampled to any input size (see the module doc).

    ``forward(x)``: x (B, ``channels``, *spatial) with ``spatial_dims`` spatial axes -> same shape and dtype
    (the FFT runs in float32, or float64 for float64 inputs).
    """

    def __init__(self, channels: int, spatial_dims: int = 2, base_size: int | Sequence[int] = 32) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ArgumentError("spatial_dims", f"FFParser works in 2-D or 3-D, got {spatial_dims}", "use 2 or 3")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ArgumentError("channels", f"must be a positive integer, got {channels!r}", "pass the feature width")
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.base_size = _sizes(base_size, spatial_dims)
        shape = (channels, *self.base_size[:-1], self.base_size[-1] // 2 + 1)
        self.weight_real = nn.Parameter(torch.ones(shape))
        self.weight_imag = nn.Parameter(torch.zeros(shape))

    def filter(self, spatial: Sequence[int]) -> Tensor:
        """The complex filter (C, *rfft grid) for an input of spatial size ``spatial`` (the base size: exact)."""
        w = torch.stack([self.weight_real, self.weight_imag], 0)  # (2, C, *stored)
        if tuple(spatial) != self.base_size:
            last = len(spatial) - 1
            for axis, (n, b) in enumerate(zip(spatial, self.base_size)):
                w = _resample_axis(w, axis + 2, n, b, half=axis == last)
        return torch.complex(w[0], w[1])

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.channels:
            raise DataError("FFParser", f"expected features (B, {self.channels}, {self.spatial_dims} spatial axes), "
                            f"got shape {tuple(x.shape)}", "pass features of the width and dimension it was built for")
        dims = tuple(range(2, x.ndim))
        work = x if x.dtype == torch.float64 else x.float()
        spectrum = torch.fft.rfftn(work, dim=dims, norm="ortho")
        w = self.filter(x.shape[2:]).to(spectrum.dtype)
        out = torch.fft.irfftn(spectrum * w, s=x.shape[2:], dim=dims, norm="ortho")
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, spatial_dims={self.spatial_dims}, base_size={self.base_size}"


def _resample_axis(w: Tensor, axis: int, n: int, b: int, *, half: bool) -> Tensor:
    """Linear interpolation of ``w`` along ``axis`` from the stored grid of a size-``b`` input to a size-``n`` one.

    Full axes (``half=False``) hold b bins in FFT order and wrap around; the half (rfft) axis holds b//2+1
    bins from DC to Nyquist and is clamped at its last bin.
    """
    if half:
        k = torch.arange(n // 2 + 1, device=w.device, dtype=torch.float64)
        pos = (k * b / n).clamp(max=b // 2)
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=b // 2)
    else:
        k = torch.arange(n, device=w.device, dtype=torch.float64)
        pos = k * b / n  # in [0, b): bin k of the input sits at k/n cycles/px = stored index k*b/n
        lo = pos.floor().long()
        hi = (lo + 1) % b
    frac = (pos - lo.to(pos.dtype)).to(w.dtype)
    view = [1] * w.ndim
    view[axis] = -1
    frac = frac.reshape(view)
    return w.index_select(axis, lo) * (1 - frac) + w.index_select(axis, hi) * frac
