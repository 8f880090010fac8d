"""UIQI (Wang-Bovik blocks) and Q2ⁿ (hypercomplex): hand cases and independent reference formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrs_diff.metrics import q2n, uiqi
from medrs_diff.metrics.quality_index import cayley_dickson_mult


def _q_block(x: np.ndarray, y: np.ndarray) -> float:
    """Textbook UIQI of one block with numpy statistics (independent of the implementation)."""
    mx, my = x.mean(), y.mean()
    sxy = ((x - mx) * (y - my)).mean()
    return 4 * sxy * mx * my / ((x.var() + y.var()) * (mx**2 + my**2))


def test_uiqi_hand_worked_single_block():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    y = 2 * x
    # mx 2.5, my 5, var 1.25 and 5, cov 2.5 -> 4·2.5·2.5·5 / (6.25·31.25) = 0.64
    assert uiqi(x[None, None], y[None, None], block_size=2).item() == pytest.approx(0.64)


def test_uiqi_sliding_blocks_against_loop(rng):
    x, y = rng.random((2, 10, 11)) + 0.2, rng.random((2, 10, 11)) + 0.2
    expected = np.mean([_q_block(x[c, i:i + 8, j:j + 8], y[c, i:i + 8, j:j + 8])
                        for c in range(2) for i in range(3) for j in range(4)])
    assert uiqi(x[None], y[None]).item() == pytest.approx(expected, rel=1e-9)


def test_uiqi_degenerate_blocks():
    a, b = np.full((1, 1, 8, 8), 2.0), np.full((1, 1, 8, 8), 4.0)
    assert uiqi(a, b).item() == pytest.approx(2 * 2 * 4 / (4 + 16))  # constant blocks: luminance term only
    z = np.zeros((1, 1, 8, 8))
    assert uiqi(z, z).item() == 1.0


def test_cayley_dickson_gives_complex_and_quaternion_products():
    c = cayley_dickson_mult(torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0]))
    assert c.tolist() == [5.0, 5.0]  # (1+2i)(3-i) = 5+5i
    i, j, k = torch.eye(4)[1], torch.eye(4)[2], torch.eye(4)[3]
    assert cayley_dickson_mult(i, j).tolist() == k.tolist()  # ij = k
    assert cayley_dickson_mult(j, i).tolist() == (-k).tolist()  # ji = -k
    assert cayley_dickson_mult(i, i).tolist() == [-1.0, 0.0, 0.0, 0.0]


def _hamilton(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Quaternion product, written out component by component."""
    a1, b1, c1, d1 = a
    a2, b2, c2, d2 = b
    return np.array([a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2, a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
                     a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2, a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2])


def _q4_block(x: np.ndarray, y: np.ndarray) -> float:
    """Q4 of one block (x, y: (4, N)) from quaternion algebra."""
    mx, my = x.mean(1), y.mean(1)
    dx, dy = x - mx[:, None], y - my[:, None]
    conj = np.array([1, -1, -1, -1])[:, None]
    cov = _hamilton(dx, dy * conj).mean(1)
    vx, vy = (dx**2).sum(0).mean(), (dy**2).sum(0).mean()
    nx, ny = np.linalg.norm(mx), np.linalg.norm(my)
    return 4 * np.linalg.norm(cov) * nx * ny / ((vx + vy) * (nx**2 + ny**2))


def test_q4_matches_quaternion_formula(rng):
    x = rng.random((4, 16, 16)) + 0.1
    y = 0.7 * x + 0.3 * rng.random((4, 16, 16))
    expected = np.mean([_q4_block(x[:, i:i + 8, j:j + 8].reshape(4, -1), y[:, i:i + 8, j:j + 8].reshape(4, -1))
                        for i in (0, 8) for j in (0, 8)])
    assert q2n(x[None], y[None], block_size=8).item() == pytest.approx(expected, rel=1e-9)


def test_q2_matches_complex_formula(rng):
    x, y = rng.random((2, 8, 8)) + 0.1, rng.random((2, 8, 8)) + 0.1
    zx, zy = x[0] + 1j * x[1], y[0] + 1j * y[1]
    cov = np.mean((zx - zx.mean()) * np.conj(zy - zy.mean()))
    vx, vy = np.mean(np.abs(zx - zx.mean()) ** 2), np.mean(np.abs(zy - zy.mean()) ** 2)
    mx, my = abs(zx.mean()), abs(zy.mean())
    expected = 4 * abs(cov) * mx * my / ((vx + vy) * (mx**2 + my**2))
    assert q2n(x[None], y[None], block_size=8).item() == pytest.approx(expected, rel=1e-9)


def test_q2n_identity_padding_and_single_band(rng):
    x = rng.random((1, 3, 16, 16)) + 0.1
    y = rng.random((1, 3, 16, 16)) + 0.1
    assert q2n(x, x, block_size=8).item() == pytest.approx(1.0)
    padded = np.concatenate([x, np.zeros((1, 1, 16, 16))], 1), np.concatenate([y, np.zeros((1, 1, 16, 16))], 1)
    assert q2n(x, y, 8).item() == pytest.approx(q2n(*padded, 8).item())  # 3 bands are zero-padded to 4
    a = np.array([[1.0, 2.0], [3.0, 4.0]])[None, None]
    assert q2n(a, 2 * a, block_size=2).item() == pytest.approx(0.64)  # one band: |UIQI| of the block
    with pytest.raises(ValueError, match="block_size"):
        q2n(x, y, block_size=32)
