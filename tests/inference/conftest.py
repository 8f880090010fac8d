"""Fixtures of the inference tests: a synthetic SR pair and a folder listing helper."""

from __future__ import annotations

from pathlib import Path

import pytest

from medrs_diff.data import synthetic as S


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("synthetic")
    return {"sr": S.make_sr_pairs(root / "sr", n=2, hr_size=32, scale=4, bands=4, seed=3)}


@pytest.fixture
def listing():
    """Function listing every file name under a folder (to assert that nothing half-written was left)."""

    def _listing(folder: Path) -> list[str]:
        return sorted(p.name for p in Path(folder).rglob("*") if p.is_file())

    return _listing
