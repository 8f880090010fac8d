"""Linear measurement operators y = H x given by their SVD H = U diag(s) V^T, without dense matrices.

DDRM works in the spectral basis: x_bar = V^T x and y_bar = diag(s)^+ U^T y. Every operator here
exposes that basis matrix-free for batches of (B, C, *spatial) images (2-D or 3-D):

* ``Vt(x) -> (B, d)`` and ``V(z) -> x``: the orthogonal right basis (d = C * prod(spatial));
* ``singulars(batch) -> (1 or B, d)``: singular values aligned with the spectral coordinates, 0 where
  a coordinate is not measured;
* ``Ut(y) -> (B, d)``: U^T y placed at the measured coordinates (0 elsewhere), ``U(w) -> y``;
* ``H``, ``Ht`` (adjoint) and ``H_pinv`` (pseudo-inverse) built from them; ``op(x)`` is ``H(x)``, so
  an operator also serves as the differentiable forward model of DPS.

Operators: :class:`Denoising`, :class:`Inpainting` (mask), :class:`SuperResolution` (average
pooling), :class:`Colorization` (channel mean), :class:`GaussianDeblur` (separable Gaussian blur).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import check_binary_mask


def _check_x_shape(x_shape: tuple[int, ...]) -> tuple[int, ...]:
    x_shape = tuple(int(s) for s in x_shape)
    if len(x_shape) not in (3, 4) or any(s < 1 for s in x_shape):
        raise ValueError(
            f"x_shape must be (C, H, W) or (C, D, H, W) without the batch axis, got {x_shape}"
        )
    return x_shape


def block_basis(p: int) -> Tensor:
    """A p x p orthogonal matrix (float64) whose first row is the constant 1/sqrt(p).

    Row 0 spans the block mean (the measured direction of an averaging operator); the remaining
    rows span its null space.
    """
    a = torch.eye(p, dtype=torch.float64)
    a[:, 0] = 1.0
    q, _ = torch.linalg.qr(a)
    q = q * torch.sign(q[0, 0])  # make the first column +1/sqrt(p)
    return q.T.contiguous()


class LinearOperator:
    """Base class: an operator defined by its matrix-free SVD (see the module docstring)."""

    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, torch.dtype], Tensor] = {}

    # -- to override ---------------------------------------------------------------------------
    def Vt(self, x: Tensor) -> Tensor:  # noqa: N802 - the paper's name
        raise NotImplementedError

    def V(self, z: Tensor) -> Tensor:  # noqa: N802
        raise NotImplementedError

    def Ut(self, y: Tensor) -> Tensor:  # noqa: N802
        raise NotImplementedError

    def U(self, w: Tensor) -> Tensor:  # noqa: N802
        raise NotImplementedError

    def _singulars(self) -> Tensor:
        """(1 or B, d) float64 singular values aligned with ``Vt``'s coordinates."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return math.prod(self.x_shape)

    def _on(self, name: str, value: Tensor, like: Tensor) -> Tensor:
        key = (name, str(like.device), like.dtype)
        if key not in self._cache:
            self._cache[key] = value.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def singulars(self, like: Tensor) -> Tensor:
        """Singular values (1 or B, d) on ``like``'s device and dtype, 0 for unmeasured coordinates."""
        return self._on("singulars", self._singulars(), like)

    def check_x(self, x: Tensor, name: str = "x") -> None:
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.x_shape:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__} expects images of shape (B, {', '.join(map(str, self.x_shape))}) "
                f"but {name} has shape {shape}; build the operator for this image size"
            )

    def check_y(self, y: Tensor, name: str = "y") -> None:
        if not isinstance(y, Tensor) or tuple(y.shape[1:]) != self.y_shape:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(
                f"{type(self).__name__} produces measurements of shape (B, {', '.join(map(str, self.y_shape))}) "
                f"but {name} has shape {shape}; build the operator for the measured image's size"
            )

    def H(self, x: Tensor) -> Tensor:  # noqa: N802
        """The forward model y = H x."""
        self.check_x(x)
        return self.U(self.singulars(x) * self.Vt(x))

    def Ht(self, y: Tensor) -> Tensor:  # noqa: N802
        """The adjoint H^T y."""
        self.check_y(y)
        return self.V(self.singulars(y) * self.Ut(y))

    def H_pinv(self, y: Tensor) -> Tensor:  # noqa: N802
        """The pseudo-inverse H^+ y = V diag(s)^+ U^T y."""
        self.check_y(y)
        s = self.singulars(y)
        return self.V(torch.where(s > 0, self.Ut(y) / torch.where(s > 0, s, 1), 0))

    def __call__(self, x: Tensor) -> Tensor:
        return self.H(x)


class _PixelBasis(LinearOperator):
    """Operators whose SVD bases are the pixels themselves (diagonal H): V = U = I, flattened."""

    def Vt(self, x: Tensor) -> Tensor:  # noqa: N802
        return x.reshape(x.shape[0], -1)

    def V(self, z: Tensor) -> Tensor:  # noqa: N802
        return z.reshape(z.shape[0], *self.x_shape)

    Ut, U = Vt, V


class Denoising(_PixelBasis):
    """H = I: y is the image plus noise."""

    def __init__(self, x_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.x_shape = self.y_shape = _check_x_shape(x_shape)

    def _singulars(self) -> Tensor:
        return torch.ones(1, self.dim, dtype=torch.float64)

    def H(self, x: Tensor) -> Tensor:  # noqa: N802
        self.check_x(x)
        return x


class Inpainting(_PixelBasis):
    """H = diag(mask): y is the image with unknown pixels set to 0 (same shape as x).

    ``mask`` is {0, 1} (1 = observed), shaped (1 or B, 1 or C, *spatial); ``channels`` sets C when
    the mask has one channel for a multi-channel image. U = V = I and the singular values are the
    mask itself, so a per-sample mask is supported.
    """

    def __init__(self, mask: Tensor, channels: int | None = None) -> None:
        super().__init__()
        m = check_binary_mask(mask)
        if m.ndim not in (4, 5):
            raise ValueError(
                f"mask must be (B or 1, C or 1, H, W) or (B or 1, C or 1, D, H, W), got shape {tuple(m.shape)}; "
                "add the batch and channel axes (mask[None, None])"
            )
        c = m.shape[1] if channels is None else int(channels)
        if m.shape[1] not in (1, c):
            raise ValueError(f"mask has {m.shape[1]} channels but the image has {c}; use 1 or {c} mask channels")
        self.x_shape = self.y_shape = _check_x_shape((c, *m.shape[2:]))
        self.mask = m.expand(m.shape[0], *self.x_shape).detach().to(torch.float64).cpu()

    def _singulars(self) -> Tensor:
        return self.mask.reshape(self.mask.shape[0], -1)

    def H(self, x: Tensor) -> Tensor:  # noqa: N802
        self.check_x(x)
        return x * self._on("mask", self.mask, x)


class _GroupMean(LinearOperator):
    """Average over groups of p entries, each group rotated by an orthogonal basis whose first row
    is the group mean direction: singular value 1/sqrt(p) on that coordinate, 0 on the other p - 1."""

    p: int

    def _groups(self, x: Tensor) -> Tensor:
        """x (B, *x_shape) -> (B, G, p)."""
        raise NotImplementedError

    def _ungroup(self, g: Tensor) -> Tensor:
        """(B, G, p) -> (B, *x_shape)."""
        raise NotImplementedError

    def _basis(self, like: Tensor) -> Tensor:
        return self._on("basis", block_basis(self.p), like)

    def Vt(self, x: Tensor) -> Tensor:  # noqa: N802
        g = self._groups(x)
        return (g @ self._basis(x).T).reshape(x.shape[0], -1)

    def V(self, z: Tensor) -> Tensor:  # noqa: N802
        g = z.reshape(z.shape[0], -1, self.p) @ self._basis(z)
        return self._ungroup(g)

    def Ut(self, y: Tensor) -> Tensor:  # noqa: N802
        w = y.reshape(y.shape[0], -1, 1)
        return torch.cat([w, w.new_zeros(w.shape[0], w.shape[1], self.p - 1)], dim=2).reshape(y.shape[0], -1)

    def U(self, w: Tensor) -> Tensor:  # noqa: N802
        return w.reshape(w.shape[0], -1, self.p)[..., 0].reshape(w.shape[0], *self.y_shape)

    def _singulars(self) -> Tensor:
        s = torch.zeros(1, self.dim // self.p, self.p, dtype=torch.float64)
        s[..., 0] = 1.0 / math.sqrt(self.p)
        return s.reshape(1, -1)


class SuperResolution(_GroupMean):
    """H = average pooling by ``factor`` along every spatial axis (2-D or 3-D): y is the low-res image."""

    def __init__(self, x_shape: tuple[int, ...], factor: int) -> None:
        super().__init__()
        self.x_shape = _check_x_shape(x_shape)
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"super-resolution factor must be a positive integer, got {factor!r}")
        spatial = self.x_shape[1:]
        if any(s % factor for s in spatial):
            raise ValueError(
                f"factor {factor} does not divide the image size {spatial}; crop or pad the image to a multiple of it"
            )
        self.factor = factor
        self.p = factor ** len(spatial)
        self.y_shape = (self.x_shape[0], *(s // factor for s in spatial))

    def _groups(self, x: Tensor) -> Tensor:
        f, n = self.factor, len(self.y_shape) - 1
        split = [x.shape[0], self.x_shape[0]]
        for s in self.y_shape[1:]:
            split += [s, f]
        perm = [0, 1, *range(2, 2 + 2 * n, 2), *range(3, 3 + 2 * n, 2)]
        return x.reshape(split).permute(perm).reshape(x.shape[0], -1, self.p)

    def _ungroup(self, g: Tensor) -> Tensor:
        f, n = self.factor, len(self.y_shape) - 1
        b = g.shape[0]
        g = g.reshape(b, *self.y_shape, *([f] * n))
        perm = [0, 1]
        for k in range(n):
            perm += [2 + k, 2 + n + k]
        return g.permute(perm).reshape(b, *self.x_shape)

    def H(self, x: Tensor) -> Tensor:  # noqa: N802
        self.check_x(x)
        return self._groups(x).mean(-1).reshape(x.shape[0], *self.y_shape)


class Colorization(_GroupMean):
    """H = mean over channels: y is the (B, 1, *spatial) grey image of a C-channel image."""

    def __init__(self, x_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.x_shape = _check_x_shape(x_shape)
        self.p = self.x_shape[0]
        self.y_shape = (1, *self.x_shape[1:])

    def _groups(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], self.p, -1).transpose(1, 2)

    def _ungroup(self, g: Tensor) -> Tensor:
        return g.transpose(1, 2).reshape(g.shape[0], *self.x_shape)

    def H(self, x: Tensor) -> Tensor:  # noqa: N802
        self.check_x(x)
        return x.mean(1, keepdim=True)


def gaussian_blur_matrix(n: int, sigma: float, radius: int | None = None) -> Tensor:
    """Dense n x n matrix (float64) of a 1-D Gaussian blur with zero boundary, weights summing to 1."""
    r = int(math.ceil(3 * sigma)) if radius is None else int(radius)
    k = torch.arange(-r, r + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (k / sigma) ** 2)
    w = w / w.sum()
    i = torch.arange(n)
    off = i[None, :] - i[:, None]  # column - row
    a = torch.zeros(n, n, dtype=torch.float64)
    inside = off.abs() <= r
    a[inside] = w[(off[inside] + r)]
    return a


class GaussianDeblur(LinearOperator):
    """H = separable Gaussian blur (std ``sigma`` pixels, zero boundary) along every spatial axis.

    Each axis's n x n blur matrix is small; its SVD gives H = (U_1 x U_2 ...) diag(s_1 x s_2 ...)
    (V_1 x V_2 ...)^T applied axis by axis, never as a d x d matrix. Singular values below
    ``min_singular`` are treated as 0 (DDRM's convention: those directions count as unmeasured, and
    this operator's H is the blur restricted to the remaining ones); ``min_singular=0`` keeps the
    exact blur.
    """

    def __init__(self, x_shape: tuple[int, ...], sigma: float, min_singular: float = 3e-2) -> None:
        super().__init__()
        self.x_shape = self.y_shape = _check_x_shape(x_shape)
        if not sigma > 0:
            raise ValueError(f"blur sigma must be > 0 pixels, got {sigma}")
        if min_singular < 0:
            raise ValueError(f"min_singular must be >= 0, got {min_singular}")
        self.sigma = float(sigma)
        self.min_singular = float(min_singular)
        self.u_axes: list[Tensor] = []
        self.v_axes: list[Tensor] = []
        svals = []
        for n in self.x_shape[1:]:
            u, s, vh = torch.linalg.svd(gaussian_blur_matrix(n, self.sigma))
            self.u_axes.append(u)
            self.v_axes.append(vh.T.contiguous())
            svals.append(s)
        s = svals[0]
        for extra in svals[1:]:
            s = s[..., None] * extra
        s = torch.where(s >= self.min_singular, s, torch.zeros_like(s))
        self._s = s.expand(self.x_shape[0], *s.shape).reshape(1, -1).contiguous()

    def _apply(self, x: Tensor, mats: list[Tensor], name: str, transpose: bool) -> Tensor:
        """Multiply every spatial axis k of x (B, C, *spatial) by mats[k] (or its transpose)."""
        out = x
        for k, m in enumerate(mats):
            mk = self._on(f"{name}{k}", m, x)
            mk = mk.T if transpose else mk
            axis = 2 + k
            out = torch.movedim(torch.movedim(out, axis, -1) @ mk.T, -1, axis)
        return out

    def Vt(self, x: Tensor) -> Tensor:  # noqa: N802
        return self._apply(x, self.v_axes, "v", transpose=True).reshape(x.shape[0], -1)

    def V(self, z: Tensor) -> Tensor:  # noqa: N802
        return self._apply(z.reshape(z.shape[0], *self.x_shape), self.v_axes, "v", transpose=False)

    def Ut(self, y: Tensor) -> Tensor:  # noqa: N802
        return self._apply(y, self.u_axes, "u", transpose=True).reshape(y.shape[0], -1)

    def U(self, w: Tensor) -> Tensor:  # noqa: N802
        return self._apply(w.reshape(w.shape[0], *self.y_shape), self.u_axes, "u", transpose=False)

    def _singulars(self) -> Tensor:
        return self._s
