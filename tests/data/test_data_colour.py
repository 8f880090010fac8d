"""YCbCr for fusion on luminance: exact round trip, scikit-image's BT.601 studio range, hand values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr

from medrs_diff.data.colour import fuse_on_luminance, rgb_to_ycbcr, ycbcr_to_rgb


def _rgb(dtype=torch.float64):
    return torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0), dtype=dtype)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_round_trip_is_exact(dtype, tol):
    rgb = _rgb(dtype)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=tol, rtol=0)
    ycc = rgb_to_ycbcr(rgb)
    torch.testing.assert_close(rgb_to_ycbcr(ycbcr_to_rgb(ycc)), ycc, atol=tol, rtol=0)


def test_matches_skimage_bt601_in_studio_range():
    rgb = _rgb()
    ours = rgb_to_ycbcr(rgb).numpy()
    sk = np.stack([rgb2ycbcr(img.transpose(1, 2, 0)).transpose(2, 0, 1) for img in rgb.numpy()])
    scale = np.array([219.0, 224.0, 224.0]).reshape(1, 3, 1, 1)
    offset = np.array([16.0, 128.0, 128.0]).reshape(1, 3, 1, 1)
    centre = np.array([0.0, 0.5, 0.5]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose((sk - offset) / scale + centre, ours, atol=1e-3)  # skimage's 3-decimal matrix


def test_hand_values():
    """White -> (1, .5, .5); pure red -> Y = .299, Cr = 1; pure blue -> Y = .114, Cb = 1."""
    rgb = torch.tensor([[1.0, 1, 1], [1, 0, 0], [0, 0, 1]], dtype=torch.float64).T.reshape(1, 3, 3, 1)
    ycc = rgb_to_ycbcr(rgb)[0, :, :, 0].T
    torch.testing.assert_close(ycc[0], torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(ycc[1], torch.tensor([0.299, 0.5 - 0.299 / 1.772, 1.0], dtype=torch.float64))
    torch.testing.assert_close(ycc[2], torch.tensor([0.114, 1.0, 0.5 - 0.114 / 1.402], dtype=torch.float64))


def test_fuse_on_luminance_keeps_chroma_and_puts_the_fused_y():
    rgb = _rgb() * 0.6 + 0.2  # stays in gamut after a small change of Y
    grey = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = fuse_on_luminance(rgb, grey, lambda y, g: 0.9 * y + 0.1 * g)
    ycc_in, ycc_out = rgb_to_ycbcr(rgb), rgb_to_ycbcr(out)
    torch.testing.assert_close(ycc_out[:, 1:], ycc_in[:, 1:])
    torch.testing.assert_close(ycc_out[:, :1], 0.9 * ycc_in[:, :1] + 0.1 * grey)
    # the identity fusion returns the colour image itself
    torch.testing.assert_close(fuse_on_luminance(rgb, grey, lambda y, g: y), rgb)


def test_refusals():
    with pytest.raises(ValueError, match="3 channels"):
        rgb_to_ycbcr(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="grid"):
        fuse_on_luminance(torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 5), lambda y, g: y)
