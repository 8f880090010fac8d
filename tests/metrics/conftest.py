"""Fixtures for the metric tests: a seeded random generator and a smooth-blob mask maker."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import ndimage


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def blobs(rng: np.random.Generator) -> Callable[..., np.ndarray]:
    """``blobs(shape, fill=0.5, sigma=2.0)``: smooth random binary masks (realistic surfaces)."""

    def make(shape: tuple[int, ...], fill: float = 0.5, sigma: float = 2.0) -> np.ndarray:
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
        return field > np.quantile(field, 1 - fill)

    return make
