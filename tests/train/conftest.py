"""Every test here trains with Lightning: its global state stays local to the test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _restore_global_state(restore_global_state):
    yield
