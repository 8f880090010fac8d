"""Session fixtures for the data-layer tests: every synthetic phantom, generated once (small and fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medrs_diff.data import synthetic as S


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("synthetic")
    return {
        "root": root,
        "seg2d": S.make_segmentation_phantoms(root / "seg2d", n=3, size=(48, 48), seed=1),
        "seg3d": S.make_segmentation_phantoms(root / "seg3d", n=2, size=(24, 24, 20), spatial_dims=3, seed=2),
        "sr": S.make_sr_pairs(root / "sr", n=2, hr_size=32, scale=4, bands=4, seed=3),
        "brats": S.make_brats_phantoms(root / "brats", n=1, size=(32, 32, 24), seed=4),
        "pet": S.make_pet_pairs(root / "pet", n=1, size=(24, 24, 24), seed=5),
        "sar": S.make_sar_speckle(root / "sar", n=1, size=48, seed=6),
        "cloud": S.make_cloud_pairs(root / "cloud", n=1, size=48, seed=7),
        "rain": S.make_rain_sequence(root / "rain", n_frames=10, size=48, seed=8),
        "hsi": {fmt: S.make_hyperspectral_cube(root / f"hsi_{fmt}", size=(40, 40), bands=16, seed=9, fmt=fmt)
                for fmt in ("npy", "mat", "tif")},
        "fundus": S.make_fundus_phantoms(root / "drive" / "training", n=2, size=64, seed=10, mask_ext=".gif"),
    }


@pytest.fixture
def listing():
    """Function listing every file name under a folder (to assert that nothing half-written was left)."""

    def _listing(folder: Path) -> list[str]:
        return sorted(p.name for p in Path(folder).rglob("*") if p.is_file())

    return _listing
