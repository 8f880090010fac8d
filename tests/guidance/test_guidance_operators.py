"""Matrix-free SVD operators: orthogonality, H = U S V^T, reference implementations, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _guidance_testlib import (
    dense,
    gen,
    single_thread,  # noqa: F401 - autouse fixture
)

from medrs_diff.diffusion.guidance import Colorization, Denoising, GaussianDeblur, Inpainting, SuperResolution
from medrs_diff.diffusion.guidance.operators import block_basis, gaussian_blur_matrix


def _mask(shape, seed=0):
    return (torch.rand((1, *shape), generator=gen(seed)) > 0.4).float()


OPERATORS = {
    "denoise-2d": lambda: Denoising((2, 4, 6)),
    "inpaint-2d": lambda: Inpainting(_mask((2, 4, 6))),
    "inpaint-3d": lambda: Inpainting(_mask((1, 4, 2, 6))),
    "sr-2d": lambda: SuperResolution((2, 4, 6), 2),
    "sr-3d": lambda: SuperResolution((1, 4, 2, 6), 2),
    "colour-2d": lambda: Colorization((3, 4, 5)),
    "deblur-2d": lambda: GaussianDeblur((1, 6, 5), 1.0),
    "deblur-3d": lambda: GaussianDeblur((1, 4, 5, 3), 0.7),
}


@pytest.mark.parametrize("name", OPERATORS)
def test_svd_is_consistent(name):
    op = OPERATORS[name]()
    d = op.dim
    v = dense(op.V, d, (d,))
    # V orthogonal, and Vt is its transpose.
    torch.testing.assert_close(v.T @ v, torch.eye(d, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(dense(op.Vt, d, op.x_shape), v.T, atol=1e-10, rtol=0)
    # U is orthogonal on the measured coordinates: U(Ut(y)) = y.
    y = torch.randn((3, *op.y_shape), generator=gen(1), dtype=torch.float64)
    torch.testing.assert_close(op.U(op.Ut(y)), y, atol=1e-10, rtol=0)
    # H = U diag(s) V^T reproduces the direct forward model, Ht is its adjoint, H H^+ H = H.
    x = torch.randn((3, *op.x_shape), generator=gen(2), dtype=torch.float64)
    s = op.singulars(x)
    svd_h = op.U(s * op.Vt(x))
    torch.testing.assert_close(op.H(x), svd_h, atol=1e-10, rtol=0)
    lhs = (op.H(x) * y).sum()
    rhs = (x * op.Ht(y)).sum()
    torch.testing.assert_close(lhs, rhs, atol=1e-9, rtol=0)
    torch.testing.assert_close(op.H(op.H_pinv(op.H(x))), op.H(x), atol=1e-9, rtol=0)


def test_forward_models_match_reference_implementations():
    x2 = torch.randn(2, 3, 8, 12, generator=gen(3), dtype=torch.float64)
    x3 = torch.randn(2, 1, 4, 8, 8, generator=gen(4), dtype=torch.float64)
    torch.testing.assert_close(SuperResolution((3, 8, 12), 4).H(x2), F.avg_pool2d(x2, 4))
    torch.testing.assert_close(SuperResolution((1, 4, 8, 8), 2).H(x3), F.avg_pool3d(x3, 2))
    torch.testing.assert_close(Colorization((3, 8, 12)).H(x2), x2.mean(1, keepdim=True))
    m = _mask((1, 8, 12))
    torch.testing.assert_close(Inpainting(m, channels=3).H(x2), x2 * m)
    # Separable blur with zero padding = 2-D convolution with the outer-product kernel.
    sigma, r = 1.2, 4
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    k = k / k.sum()
    ref = F.conv2d(x2.reshape(6, 1, 8, 12), (k[:, None] * k[None, :])[None, None], padding=r).reshape(x2.shape)
    torch.testing.assert_close(GaussianDeblur((3, 8, 12), sigma, min_singular=0.0).H(x2), ref)


def test_singular_values_are_the_known_ones():
    # Average pooling by f over n axes: one singular value 1/sqrt(f^n) per block.
    s = SuperResolution((1, 4, 4), 2).singulars(torch.zeros(1))
    assert int((s > 0).sum()) == 4 and torch.allclose(s[s > 0], torch.tensor(0.5))
    s = Colorization((3, 2, 2)).singulars(torch.zeros(1))
    assert int((s > 0).sum()) == 4 and torch.allclose(s[s > 0], torch.tensor(1 / math.sqrt(3)))
    # The blur's singular values are those of the Kronecker product of its 1-D matrices.
    op = GaussianDeblur((1, 5, 6), 1.0, min_singular=0.0)
    full = torch.kron(gaussian_blur_matrix(5, 1.0), gaussian_blur_matrix(6, 1.0))
    ref = torch.linalg.svdvals(full).sort().values
    torch.testing.assert_close(op.singulars(torch.zeros(1, dtype=torch.float64))[0].sort().values, ref)
    q = block_basis(8)
    torch.testing.assert_close(q @ q.T, torch.eye(8, dtype=torch.float64))
    torch.testing.assert_close(q[0], torch.full((8,), 1 / math.sqrt(8), dtype=torch.float64))


def test_deblur_threshold_marks_weak_directions_unmeasured():
    op = GaussianDeblur((1, 8, 8), 1.5, min_singular=0.05)
    s = op.singulars(torch.zeros(1, dtype=torch.float64))
    assert (s == 0).any() and (s[s > 0] >= 0.05).all()


def test_per_sample_masks():
    m = torch.zeros(2, 1, 2, 2)
    m[0, :, 0] = 1
    m[1, :, :, 0] = 1
    op = Inpainting(m)
    x = torch.randn(2, 1, 2, 2, generator=gen(0))
    torch.testing.assert_close(op.H(x), x * m)
    assert op.singulars(x).shape == (2, 4)


def test_bad_operator_input():
    with pytest.raises(ValueError, match="does not divide"):
        SuperResolution((1, 6, 6), 4)
    with pytest.raises(ValueError, match="positive integer"):
        SuperResolution((1, 6, 6), 0)
    with pytest.raises(ValueError, match="expects images of shape"):
        SuperResolution((1, 8, 8), 2).H(torch.zeros(1, 1, 6, 8))
    with pytest.raises(ValueError, match="produces measurements"):
        SuperResolution((1, 8, 8), 2).H_pinv(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="only 0"):
        Inpainting(torch.full((1, 1, 4, 4), 0.5))
    with pytest.raises(ValueError, match="channels"):
        Inpainting(torch.ones(1, 2, 4, 4), channels=3)
    with pytest.raises(ValueError, match="x_shape"):
        Denoising((4, 4))
    with pytest.raises(ValueError, match="sigma"):
        GaussianDeblur((1, 4, 4), 0.0)
