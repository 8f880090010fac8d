"""Blind super-resolution degradations (BlindSRSNF / DASR style): Gaussian blur, downsampling, noise, JPEG.

``LR = JPEG_q( downsample_s( HR * k ) + n )``, in that order (DASR's pipeline, which BlindSRSNF trains on):

- **blur** ``k``: a 21 x 21 Gaussian kernel, isotropic (``sigma``) or anisotropic (``sigma_x`` = lambda1,
  ``sigma_y`` = lambda2 along the principal axes, the x axis rotated by ``theta`` degrees counter-clockwise),
  normalised to sum 1, applied per band with reflect padding;
- **downsampling** by ``scale`` (x4 / x8): ``bicubic`` (torch's antialiased bicubic, the MATLAB
  ``imresize`` behaviour) or ``direct`` (every ``scale``-th pixel of the blurred image: the s-fold
  downsampler of the classical degradation model);
- **noise** ``n``: additive white Gaussian noise whose ``noise`` level is given **on the 8-bit scale**
  (0..25 in training): std = ``noise / 255`` of the data range. For images in [0, 1] that is
  ``noise / 255``; in model space [-1, 1] (range 2) ``2 * noise / 255``; for 16-bit reflectance stored as
  DN x 1e4 (Sentinel-2 L2A, range 0..1e4 under the ``reflectance`` scaling) ``noise / 255 * 1e4`` DN, so
  noise 25 is std 980 DN (0.098 reflectance): the same fraction of the range in every band, whatever
  its bit depth. :func:`degrade` takes ``data_range`` for this;
- **JPEG** (optional, ``jpeg_quality``): torchvision's libjpeg codec (``torchvision.io.encode_jpeg`` /
  ``decode_jpeg``), for 1- or 3-band images, quantised to 8 bits over ``data_range`` first.

:data:`TEST_GRID` holds the paper's test settings by name: lambda pairs (1.2, 2.4), (2.4, 1.2), (3.6, 2.4)
x angles 0 and 45 degrees x noise 0, 5, 10 (18 anisotropic settings, x4), e.g. ``aniso_1.2_2.4_t45_n5``;
``x8`` variants are made with :meth:`Degradation.at_scale`. :func:`sample_degradation` draws training
degradations (sigma / lambdas uniform in [0.2, 4], theta uniform in [0, 180), noise uniform in [0, 25])
from a NumPy generator, so a data item's degradation is a pure function of its seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ArgumentError, DataError

KERNEL_SIZE = 21
SIGMA_RANGE = (0.2, 4.0)
NOISE_MAX = 25.0
DOWNSAMPLERS = ("bicubic", "direct")
MODES = ("iso", "aniso", "mixed")


def gaussian_kernel(sigma_x: float, sigma_y: float | None = None, theta: float = 0.0,
                    size: int = KERNEL_SIZE) -> np.ndarray:
    """A ``size`` x ``size`` Gaussian kernel (float64, sums to 1), rows = y, columns = x.

    ``k(v) ~ exp(-v^T S^-1 v / 2)`` with ``S = R diag(sigma_x^2, sigma_y^2) R^T``, ``R`` the rotation by
    ``theta`` degrees; ``sigma_y=None`` is isotropic. ``size`` must be odd."""
    sy = sigma_x if sigma_y is None else sigma_y
    for name, v in (("sigma_x", sigma_x), ("sigma_y", sy)):
        if not np.isfinite(v) or v <= 0:
            raise ArgumentError(name, f"must be a finite number > 0, got {v!r}", "use a blur width such as 1.2")
    if size < 1 or size % 2 == 0:
        raise ArgumentError("size", f"must be an odd number >= 1, got {size}", f"use {KERNEL_SIZE}")
    c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([sigma_x**2, sy**2]) @ rot.T
    inv = np.linalg.inv(cov)
    r = np.arange(size) - size // 2
    xx, yy = np.meshgrid(r, r)  # xx varies along columns
    v = np.stack([xx, yy], -1).astype(np.float64)
    k = np.exp(-0.5 * np.einsum("...i,ij,...j->...", v, inv, v))
    return k / k.sum()


@dataclass(frozen=True)
class Degradation:
    """One degradation: blur ``sigma_x`` / ``sigma_y`` (None: isotropic; ``sigma_x=0``: no blur) rotated by
    ``theta`` degrees, downsampling ``scale`` with ``downsample``, noise level ``noise`` on the 8-bit
    scale, optional ``jpeg_quality`` (1..100)."""

    sigma_x: float = 0.0
    sigma_y: float | None = None
    theta: float = 0.0
    noise: float = 0.0
    scale: int = 4
    downsample: str = "bicubic"
    jpeg_quality: int | None = None
    kernel_size: int = KERNEL_SIZE

    def __post_init__(self) -> None:
        if not isinstance(self.scale, int | np.integer) or self.scale < 1:
            raise ArgumentError("scale", f"must be an integer >= 1, got {self.scale!r}", "use 4 or 8")
        if self.downsample not in DOWNSAMPLERS:
            raise ArgumentError("downsample", f"unknown downsampler {self.downsample!r}",
                                f"choose one of {', '.join(DOWNSAMPLERS)}")
        if not np.isfinite(self.noise) or self.noise < 0:
            raise ArgumentError("noise", f"must be a finite level >= 0 (8-bit scale), got {self.noise!r}",
                                "use 0 .. 25")
        if not np.isfinite(self.sigma_x) or self.sigma_x < 0:
            raise ArgumentError("sigma_x", f"must be >= 0 (0: no blur), got {self.sigma_x!r}", "use 0.2 .. 4")
        if self.jpeg_quality is not None and not 1 <= int(self.jpeg_quality) <= 100:
            raise ArgumentError("jpeg_quality", f"must lie in 1..100, got {self.jpeg_quality}", "use e.g. 75 or None")

    @property
    def blurred(self) -> bool:
        return self.sigma_x > 0

    def kernel(self) -> np.ndarray | None:
        """The blur kernel (None without blur)."""
        if not self.blurred:
            return None
        return gaussian_kernel(self.sigma_x, self.sigma_y, self.theta, self.kernel_size)

    def at_scale(self, scale: int) -> Degradation:
        """The same blur and noise at another downsampling factor."""
        return replace(self, scale=int(scale))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _grid() -> dict[str, Degradation]:
    grid = {"bicubic": Degradation()}
    for l1, l2 in ((1.2, 2.4), (2.4, 1.2), (3.6, 2.4)):
        for theta in (0, 45):
            for noise in (0, 5, 10):
                grid[f"aniso_{l1}_{l2}_t{theta}_n{noise}"] = Degradation(l1, l2, float(theta), float(noise))
    return grid


#: The paper's x4 test grid by name (plus ``bicubic``: no blur, no noise).
TEST_GRID: dict[str, Degradation] = _grid()


def setting(name: str, scale: int | None = None) -> Degradation:
    """A named test setting of :data:`TEST_GRID`, at ``scale`` when given."""
    if name not in TEST_GRID:
        raise ArgumentError("degradation", f"unknown setting {name!r}",
                            f"choose one of {', '.join(TEST_GRID)}")
    d = TEST_GRID[name]
    return d if scale is None else d.at_scale(scale)


def sample_degradation(rng: np.random.Generator, scale: int = 4, mode: str = "aniso",
                       sigma_range: tuple[float, float] = SIGMA_RANGE, noise_max: float = NOISE_MAX,
                       downsample: str = "bicubic", jpeg_quality: int | None = None) -> Degradation:
    """A random training degradation: ``iso`` (sigma uniform in ``sigma_range``), ``aniso`` (lambda1, lambda2
    uniform in ``sigma_range``, theta uniform in [0, 180) degrees) or ``mixed`` (half each), noise uniform in
    [0, ``noise_max``] (8-bit scale)."""
    if mode not in MODES:
        raise ArgumentError("mode", f"unknown degradation mode {mode!r}", f"choose one of {', '.join(MODES)}")
    lo, hi = float(sigma_range[0]), float(sigma_range[1])
    if not 0 < lo <= hi:
        raise ArgumentError("sigma_range", f"must satisfy 0 < low <= high, got {sigma_range}", "use [0.2, 4.0]")
    if mode == "mixed":
        mode = "iso" if rng.random() < 0.5 else "aniso"
    if mode == "iso":
        s = float(rng.uniform(lo, hi))
        sx, sy, theta = s, None, 0.0
    else:
        sx, sy, theta = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), float(rng.uniform(0.0, 180.0))
    noise = float(rng.uniform(0.0, noise_max)) if noise_max > 0 else 0.0
    return Degradation(sx, sy, theta, noise, int(scale), downsample, jpeg_quality)


def blur(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Convolve every band of ``x`` (B, C, H, W) with ``kernel`` (reflect padding; replicate where the image is
    smaller than the kernel's half width)."""
    k = torch.as_tensor(kernel, dtype=x.dtype, device=x.device)
    p = k.shape[-1] // 2
    b, c, h, w = x.shape
    mode = "reflect" if min(h, w) > p else "replicate"
    xp = F.pad(x.reshape(b * c, 1, h, w), (p, p, p, p), mode=mode)
    # conv2d is a correlation: flip the kernel to convolve (the Gaussian is centro-symmetric anyway)
    return F.conv2d(xp, k.flip(-1, -2)[None, None]).reshape(b, c, h, w)


def _jpeg(x: torch.Tensor, quality: int, data_range: float, low: float) -> torch.Tensor:
    from torchvision.io import decode_jpeg, encode_jpeg

    b, c = x.shape[:2]
    if c not in (1, 3):
        raise DataError("jpeg_quality", f"JPEG needs 1 or 3 bands, the image has {c}",
                        "set jpeg_quality to None for multispectral images")
    out = []
    for img in x:
        q = ((img - low) / data_range * 255).round().clamp(0, 255).to(torch.uint8).cpu()
        out.append(decode_jpeg(encode_jpeg(q, quality=int(quality))).to(x.dtype) / 255 * data_range + low)
    return torch.stack(out).to(x.device)


def degrade(hr: torch.Tensor | np.ndarray, deg: Degradation, rng: np.random.Generator | int | None = None,
            data_range: float = 1.0, low: float = 0.0) -> torch.Tensor:
    """Degrade HR images (C, H, W) or (B, C, H, W) in units whose range is ``data_range`` (lowest value
    ``low``, used by JPEG only): blur, downsample by ``deg.scale``, add noise of std
    ``deg.noise / 255 * data_range`` drawn from ``rng``, then JPEG. H and W must be multiples of the scale."""
    x = torch.as_tensor(np.asarray(hr) if isinstance(hr, np.ndarray) else hr)
    x = x.float() if not x.is_floating_point() else x
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4:
        raise DataError("hr", f"expected (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}", "pass 2-D images")
    if not torch.isfinite(x).all():
        raise DataError("hr", "holds NaN or inf", "fill or mask non-finite pixels before degrading")
    s = deg.scale
    h, w = x.shape[-2:]
    if h % s or w % s:
        raise DataError("hr", f"size {h}x{w} is not a multiple of the scale {s}", f"crop to multiples of {s}")
    k = deg.kernel()
    if k is not None:
        x = blur(x, k)
    if s > 1:
        if deg.downsample == "direct":
            x = x[..., s // 2::s, s // 2::s]
        else:
            x = F.interpolate(x, size=(h // s, w // s), mode="bicubic", align_corners=False, antialias=True)
    if deg.noise > 0:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        n = gen.standard_normal(tuple(x.shape)).astype(np.float32)
        x = x + torch.from_numpy(n).to(x) * (deg.noise / 255.0 * data_range)
    if deg.jpeg_quality is not None:
        x = _jpeg(x, deg.jpeg_quality, data_range, low)
    return x[0] if single else x
