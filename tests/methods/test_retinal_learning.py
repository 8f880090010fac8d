"""Learning tests of the retinal dual model on 32 x 32 vessel-tree phantoms (tiny nets, one thread).

Mask DDPM: drawn masks have a vessel-pixel fraction within 30 % of the training set's and are trees (the largest
8-connected component holds >= 80 % of the vessel pixels, mean over masks). Image DDPM: images painted for held-out
masks are darker where the mask is (per-image correlation of darkness with the mask, mean >= 0.3; the phantoms'
own is about 0.63). Both sample with the paper's ancestral sampler, respaced to 100 steps.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from skimage.measure import label as cc_label

from medrs_diff.data.retina_phantoms import retina_case
from medrs_diff.diffusion.generators import SampleGenerators
from medrs_diff.methods import RetinalImageDDPM, RetinalMaskDDPM

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SIZE, N_TRAIN, N_DRAW = 32, 48, 16
#: the MONAI net (measured with these thresholds); the light UNet has its own unit tests (test_light_unet.py)
NET = dict(net="monai", channels=(16, 32, 32), attention_levels=(False, False, False), num_res_blocks=1,
           num_head_channels=16, norm_num_groups=8, timesteps=1000)


@pytest.fixture(scope="module")
def phantoms() -> dict[str, torch.Tensor]:
    cases = [retina_case(i, (SIZE, SIZE), width=2.5) for i in range(N_TRAIN + N_DRAW)]
    return {
        "label": torch.tensor(np.stack([c.vessels for c in cases]))[:, None].float(),
        "fov": torch.tensor(np.stack([c.fov for c in cases]))[:, None].float(),
        "image": torch.tensor(np.stack([c.rgb for c in cases])).permute(0, 3, 1, 2).float() / 127.5 - 1,
    }


def _train(method, data: dict[str, torch.Tensor], steps: int, lr: float = 2e-3, batch: int = 8, decay: float = 0.98):
    """Adam on random training batches; returns the EMA copy in eval mode."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ema = copy.deepcopy(method)
    opt = torch.optim.Adam(method.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, N_TRAIN, (batch,), generator=g)
        loss, _ = method.loss({k: v[idx] for k, v in data.items()}, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), method.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
    return ema.eval()


def test_drawn_masks_are_trees_with_the_training_vessel_density(phantoms):
    torch.manual_seed(0)
    model = _train(RetinalMaskDDPM(**NET), phantoms, steps=1200)
    shape = {"label": torch.zeros(N_DRAW, 1, SIZE, SIZE)}
    drawn = model.predict(shape, sampler="ddpm", steps=100, generator=SampleGenerators.from_seeds(range(N_DRAW)))
    masks = drawn["prediction"][:, 0].numpy() > 0.5
    fov = phantoms["fov"][0, 0].numpy() > 0.5
    want = phantoms["label"][:N_TRAIN, 0].numpy()[:, fov].mean()
    got = masks[:, fov].mean()
    assert abs(got - want) <= 0.3 * want, (got, want)
    largest = []
    for m in masks:
        sizes = np.bincount(cc_label(m, connectivity=2).ravel())[1:]
        largest.append(sizes.max() / m.sum() if m.any() else 0.0)
    assert np.mean(largest) >= 0.8, np.round(largest, 2)


def test_painted_images_are_dark_where_the_mask_is(phantoms):
    torch.manual_seed(0)
    model = _train(RetinalImageDDPM(**NET), phantoms, steps=400)
    held = slice(N_TRAIN, N_TRAIN + N_DRAW)
    masks, fov = phantoms["label"][held], phantoms["fov"][held]
    out = model.predict({"label": masks, "fov": fov}, sampler="ddpm", steps=100,
                        generator=SampleGenerators.from_seeds(range(N_DRAW)))["prediction"]
    corr = []
    for k in range(N_DRAW):
        inside = fov[k, 0] > 0.5
        darkness = -out[k].mean(0)[inside].numpy()
        corr.append(np.corrcoef(darkness, masks[k, 0][inside].numpy())[0, 1])
    assert np.mean(corr) >= 0.3, np.round(corr, 2)
    assert (out[:, :, fov[0, 0] < 0.5] == -1).all()  # black outside the field of view
