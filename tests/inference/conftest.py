"""Fixtures of the inference tests: a synthetic SR pair, a folder listing helper, one intra-op thread, and the
tiny live SegDiff / hand-written checkpoint / NIfTI loading helpers that the NIfTI inference tests share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from medrs_diff.data import synthetic as S

#: a SegDiff small enough to run every test's windows in milliseconds
TINY_SEGDIFF = dict(channels=[8, 8], attention_levels=[False, False], num_res_blocks=1, num_head_channels=8,
                    norm_num_groups=8, rrdb_blocks=1, rrdb_features=8, rrdb_growth=4, timesteps=10)


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



@pytest.fixture(scope="session")
def tiny_segdiff() -> Callable[..., Any]:
    """``tiny_segdiff(seed, **kw)`` -> a tiny SegDiff in eval mode with every weight perturbed: a fresh SegDiff's
    output convolution is zero (eps = 0 whatever the image), which would make outputs blind to the input and
    comparisons of outputs vacuous."""
    from medrs_diff.methods import SegDiff

    def make(seed: int, **kw: Any) -> SegDiff:
        torch.manual_seed(seed)
        method = SegDiff(**{**TINY_SEGDIFF, **kw})
        g = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for w in method.parameters():
                w.add_(0.1 * torch.randn(w.shape, generator=g))
        return method.eval()

    return make


@pytest.fixture(scope="session")
def write_checkpoint() -> Callable[..., Path]:
    """``write_checkpoint(method, path, **data)``: a minimal checkpoint of ``method`` whose data module recorded
    ``scaling: zscore``, no patch size and ``data`` (e.g. ``slices=True``, ``modalities=[...]``)."""
    from medrs_diff.train.checkpoint import method_config

    def write(method: torch.nn.Module, path: Path, **data: Any) -> Path:
        torch.save({"state_dict": {f"method.{k}": v for k, v in method.state_dict().items()},
                    "hyper_parameters": {"method": method_config(method)},
                    "datamodule_hyper_parameters": {"scaling": "zscore", "patch_size": None, **data}}, path)
        return path

    return write


@pytest.fixture(scope="session")
def load_niftis() -> Callable[[Mapping[str, Path]], dict[str, np.ndarray]]:
    """``load_niftis({key: path})`` -> ``{key: stored array}`` (nibabel's dataobj order)."""

    def load(paths: Mapping[str, Path]) -> dict[str, np.ndarray]:
        return {k: np.asarray(nib.load(str(p)).dataobj) for k, p in paths.items()}

    return load
