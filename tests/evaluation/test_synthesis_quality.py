"""FID / KID / MS-SSIM diversity of generated images: cross-checked against the closed forms computed by hand,
and the two offline feature networks (torchvision Inception v3 from a local file, a medrs-diff segmenter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.evaluation.synthesis import (
    EncoderFeatures,
    InceptionFeatures,
    feature_network,
    ms_ssim_diversity,
    synthesis_scores,
)


class QuadrantMeans(nn.Module):
    """12 features: the mean of each channel over each image quadrant."""

    num_features = 12

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x.float(), 2).flatten(1)


def _fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def _kid(a: np.ndarray, b: np.ndarray) -> float:
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    m = len(a)
    kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def test_fid_and_kid_match_their_closed_forms():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(40, 3, 16, 16, generator=g)
    fake = torch.rand(40, 3, 16, 16, generator=g) * 0.5 + 0.3
    out = synthesis_scores(real, fake, QuadrantMeans(), kid_subsets=1, kid_subset_size=40)
    fr, ff = QuadrantMeans()(real).double().numpy(), QuadrantMeans()(fake).double().numpy()
    assert out["fid"] == pytest.approx(_fid(fr, ff), rel=1e-4, abs=1e-6)
    assert out["kid_mean"] == pytest.approx(_kid(fr, ff), rel=1e-3)  # one subset of all: no sampling
    same = synthesis_scores(real, real, QuadrantMeans(), kid_subsets=1, kid_subset_size=40)
    assert abs(same["fid"]) < 1e-6 and same["fid"] < out["fid"]
    assert set(out["definitions"]) == {"fid", "kid_mean", "kid_std", "ms_ssim_diversity"}


def test_ms_ssim_diversity():
    g = torch.Generator().manual_seed(1)
    one = torch.rand(1, 3, 48, 48, generator=g)
    assert ms_ssim_diversity(one.repeat(4, 1, 1, 1)) == pytest.approx(1.0, abs=1e-5)  # all alike
    assert ms_ssim_diversity(torch.rand(4, 3, 48, 48, generator=g)) < 0.2  # independent noise: diverse
    with pytest.raises(DataError, match="in \\[0, 1\\]"):
        ms_ssim_diversity(torch.full((2, 3, 48, 48), 2.0))


def test_offline_feature_networks(tmp_path):
    from torchvision.models import inception_v3

    from medrs_diff.methods import SMPUNet
    from medrs_diff.train.checkpoint import method_config

    torch.manual_seed(0)
    path = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=False, init_weights=False).state_dict(), path)
    net = feature_network(f"inception:{path}")
    assert isinstance(net, InceptionFeatures) and net(torch.rand(2, 3, 40, 40)).shape == (2, 2048)
    seg = SMPUNet(in_channels=3, encoder_depth=3, decoder_channels=(16, 8, 8))
    ckpt = tmp_path / "seg.ckpt"
    torch.save({"state_dict": {f"method.{k}": v for k, v in seg.state_dict().items()},
                "hyper_parameters": {"method": method_config(seg)}}, ckpt)
    enc = feature_network(f"smp:{ckpt}")
    assert isinstance(enc, EncoderFeatures) and enc(torch.rand(2, 3, 32, 32)).shape == (2, enc.num_features)
    with pytest.raises(ArgumentError, match="features: unknown feature network 'vgg'"):
        feature_network("vgg")
    with pytest.raises(DataError, match="weights file does not exist"):
        feature_network(f"inception:{tmp_path / 'none.pth'}")


def test_the_script_scores_two_folders(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    from medrs_diff.data.retina_phantoms import retina_case
    from medrs_diff.io.image2d import write_image2d
    from medrs_diff.methods import SMPUNet
    from medrs_diff.train.checkpoint import method_config

    for folder, seeds, size in (("real", range(6), (48, 48)), ("synth", range(10, 16), (32, 32))):
        for s in seeds:
            write_image2d(np.moveaxis(retina_case(s, size).rgb, -1, 0), tmp_path / folder / f"{s:02d}.png")
    torch.manual_seed(0)
    seg = SMPUNet(in_channels=3, encoder_depth=3, decoder_channels=(16, 8, 8))
    ckpt = tmp_path / "seg.ckpt"
    torch.save({"state_dict": {f"method.{k}": v for k, v in seg.state_dict().items()},
                "hyper_parameters": {"method": method_config(seg)}}, ckpt)
    script = Path(__file__).resolve().parents[2] / "evaluation" / "synthesis_quality.py"
    spec = importlib.util.spec_from_file_location("synthesis_quality", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main([str(tmp_path / "real"), str(tmp_path / "synth"), "--features", f"smp:{ckpt}", "--kid-subsets",
                    "5", "--json", str(tmp_path / "q.json")])
    saved = json.loads((tmp_path / "q.json").read_text())
    assert saved["fid"] == pytest.approx(out["fid"]) and saved["n_real"] == 6 and saved["n_generated"] == 6
    assert np.isfinite(saved["fid"]) and saved["fid"] >= -1e-6 and 0 < saved["ms_ssim_diversity"] < 1
