"""Keep global state that Lightning changes (deterministic algorithms, seed env vars, RNG) local to each test."""

from __future__ import annotations

import os

import pytest
import torch

_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG")


@pytest.fixture(autouse=True)
def _restore_global_state():
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    env = {k: os.environ.get(k) for k in _ENV}
    rng = torch.get_rng_state()
    yield
    torch.use_deterministic_algorithms(det, warn_only=warn_only)
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    torch.set_rng_state(rng)
