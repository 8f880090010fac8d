"""Fixtures for the io tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def listing():
    """Function listing every file name (hidden ones included) under a folder."""

    def _listing(folder: Path) -> list[str]:
        return sorted(p.name for p in Path(folder).rglob("*") if p.is_file())

    return _listing
