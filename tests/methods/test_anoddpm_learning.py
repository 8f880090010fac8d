"""AnoDDPM learns healthy brain phantoms and flags inserted lesions (pixel AUROC on unseen anatomies)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from medrs_diff.data.brain_phantoms import brain_phantom_arrays
from medrs_diff.metrics import anomaly_scores

# the training loop and scaling of the lambda-table script (evaluation/anoddpm_table.py), so the test and the
# table train the same way
_SPEC = importlib.util.spec_from_file_location(
    "anoddpm_table", Path(__file__).resolve().parents[2] / "evaluation" / "anoddpm_table.py")
_TABLE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_TABLE)
to_model_space, train_anoddpm = _TABLE.to_model_space, _TABLE.train_anoddpm

NET = dict(channels=[16, 32, 64], attention_levels=[False, False, False], num_res_blocks=1, num_head_channels=16,
           norm_num_groups=8)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_simplex_anoddpm_detects_phantom_lesions():
    healthy, _ = brain_phantom_arrays(64, 32, seed=0)
    lesion, masks = brain_phantom_arrays(8, 32, seed=1, lesions=True)  # other anatomies than the training ones
    # simplex noise with the paper's cycles per image at 32 px (start 4 cycles per image, top octave at Nyquist)
    method = train_anoddpm(to_model_space(healthy), noise="simplex", frequency=0.125, octaves=3, steps=500, batch=8,
                           lr=3e-3, net=NET, lam=100)
    out = method.predict({"image": to_model_space(lesion)}, generator=torch.Generator().manual_seed(0))
    scores = anomaly_scores(out["anomaly_map"][:, 0].numpy(), masks)
    print(f"AnoDDPM phantom learning test: {scores}")
    assert scores["auroc"] >= 0.9, scores
