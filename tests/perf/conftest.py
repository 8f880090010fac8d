"""tests/perf run tiny models: one intra-op thread is fastest and immune to oversubscription on shared cores."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every perf test runs with the root conftest's ``one_thread``."""
    yield
