"""Synthesis quality of generated images: FID, KID (torchmetrics) on features of an offline network, and MS-SSIM
diversity.

Definitions (as stated in the output of :func:`synthesis_scores`):

- **FID** (Heusel et al. 2017): ``|mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))`` between Gaussians fitted
  to the real and generated feature sets (torchmetrics ``FrechetInceptionDistance``, unbiased covariances).
- **KID** (Binkowski et al. 2018): the unbiased MMD^2 between the feature sets with the polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, mean and std over ``subsets`` random subsets of ``subset_size`` per set
  (torchmetrics ``KernelInceptionDistance``).
- **MS-SSIM diversity**: the mean multi-scale SSIM over pairs of generated images (torchmetrics, images in [0, 1],
  as many scales as the image size allows); lower means more diverse (1: all alike).

Feature networks (nothing is downloaded; ``--features`` in the script):

- ``inception:PATH``: torchvision's Inception v3 architecture with the state dict in ``PATH`` (torchvision's
  ``inception_v3`` key names), images resized to 299 x 299 and ImageNet-normalised, the 2048-d pooled features.
  This is not the TensorFlow FID Inception: scores are comparable between runs here, not with published FIDs.
- ``smp:CKPT``: the encoder of a segmenter trained by ``medrs-diff fit`` (an ``SMPUNet`` checkpoint, e.g. the
  ``smp_unet_fundus`` baseline on real fundus images), its deepest feature map average-pooled.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ArgumentError, DataError

__all__ = ["DEFINITIONS", "EncoderFeatures", "InceptionFeatures", "feature_network", "ms_ssim_diversity",
           "synthesis_scores"]

DEFINITIONS = {
    "fid": "|mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) of Gaussians fitted to real / generated features "
           "(torchmetrics FrechetInceptionDistance)",
    "kid_mean": "unbiased MMD^2 with the kernel (x.y / d + 1)^3, mean over random subsets (torchmetrics "
                "KernelInceptionDistance)",
    "kid_std": "standard deviation of the KID over the subsets",
    "ms_ssim_diversity": "mean MS-SSIM over pairs of generated images in [0, 1] (lower: more diverse)",
}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class InceptionFeatures(nn.Module):
    """2048-d pooled features of torchvision's Inception v3 loaded from a local state dict; inputs (B, 3, H, W) in
    [0, 1]."""

    num_features = 2048

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        path = Path(weights_path)
        if not path.is_file():
            raise DataError(path, "Inception v3 weights file does not exist", "pass a torchvision inception_v3 "
                            "state dict saved with torch.save (nothing is downloaded)")
        net = inception_v3(weights=None, aux_logits=True, init_weights=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        try:
            net.load_state_dict(state, strict=not _aux_only_missing(net, state))
        except (RuntimeError, TypeError) as err:
            raise DataError(path, f"is not a torchvision inception_v3 state dict ({str(err).splitlines()[0]})",
                            "save torchvision.models.inception_v3(...).state_dict()") from err
        net.fc = nn.Identity()
        net.aux_logits, net.AuxLogits = False, None
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
        return self.net((x - self.mean) / self.std)


def _aux_only_missing(net: nn.Module, state: dict[str, Any]) -> bool:
    """True when ``state`` lacks only the auxiliary classifier (a state dict saved with ``aux_logits=False``)."""
    missing = set(net.state_dict()) - set(state)
    return bool(missing) and all(k.startswith("AuxLogits.") for k in missing)


class EncoderFeatures(nn.Module):
    """Average-pooled deepest features of a medrs-diff ``SMPUNet`` segmenter's encoder; inputs (B, C, H, W) in [0, 1]
    (mapped to the model space [-1, 1] the segmenter trained in)."""

    def __init__(self, encoder: nn.Module, num_features: int) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.num_features = int(num_features)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> EncoderFeatures:
        from ..train.checkpoint import load_method_from_checkpoint

        method = load_method_from_checkpoint(path, expected="smp_unet")
        encoder = method.net.encoder
        return cls(encoder, int(encoder.out_channels[-1]))

    def forward(self, x: Tensor) -> Tensor:
        feats = self.encoder(x.float() * 2 - 1)
        return feats[-1].mean(dim=(-2, -1))


def feature_network(spec: str) -> nn.Module:
    """``inception:PATH`` or ``smp:CKPT`` (see the module notes) -> a feature module with ``num_features``."""
    kind, _, path = str(spec).partition(":")
    if kind == "inception" and path:
        return InceptionFeatures(path)
    if kind == "smp" and path:
        return EncoderFeatures.from_checkpoint(path)
    raise ArgumentError("features", f"unknown feature network {spec!r}",
                        "pass inception:WEIGHTS.pth (torchvision Inception v3 state dict) or smp:SEGMENTER.ckpt")


def _check_images(x: Tensor, what: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise DataError(what, f"expected a (N, C, H, W) image batch, got {getattr(x, 'shape', type(x))}",
                        "stack the images along a new first axis")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise DataError(what, "images must be finite and in [0, 1]", "scale 8-bit images by 1 / 255")
    return x.float()


def synthesis_scores(real: Tensor, fake: Tensor, features: nn.Module, *, kid_subsets: int = 50,
                     kid_subset_size: int | None = None, batch: int = 16, seed: int = 0) -> dict[str, Any]:
    """FID, KID (mean, std) and the MS-SSIM diversity of ``fake`` against ``real`` (both (N, C, H, W) in [0, 1]),
    with the definitions; ``kid_subset_size`` defaults to the smaller set's size."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _check_images(real, "real images"), _check_images(fake, "generated images")
    if min(len(real), len(fake)) < 2:
        raise DataError("images", "FID / KID need at least 2 real and 2 generated images",
                        "generate more images (100 or more for stable scores)")
    size = min(len(real), len(fake)) if kid_subset_size is None else int(kid_subset_size)
    if not 2 <= size <= min(len(real), len(fake)):
        raise ArgumentError("kid_subset_size", f"must lie in [2, {min(len(real), len(fake))}], got {size}",
                            "use at most the smaller set's size")
    fid = FrechetInceptionDistance(feature=features, normalize=True).double()
    kid = KernelInceptionDistance(feature=features, subsets=kid_subsets, subset_size=size, normalize=True)
    for imgs, is_real in ((real, True), (fake, False)):
        for i in range(0, len(imgs), batch):
            fid.update(imgs[i:i + batch], real=is_real)
            kid.update(imgs[i:i + batch], real=is_real)
    torch.manual_seed(seed)  # torchmetrics draws the KID subsets from the global generator
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
            "ms_ssim_diversity": ms_ssim_diversity(fake), "n_real": len(real), "n_generated": len(fake),
            "definitions": dict(DEFINITIONS)}


def ms_ssim_diversity(images: Tensor, max_pairs: int = 200) -> float:
    """Mean MS-SSIM over (up to ``max_pairs``) pairs of ``images`` (N, C, H, W) in [0, 1]; the number of scales is
    the largest of 5 .. 1 the smaller side allows with the 11-px Gaussian window (side > 10 * 2^(scales - 1))."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    x = _check_images(images, "generated images")
    if len(x) < 2:
        raise DataError("generated images", "MS-SSIM diversity needs at least 2 images", "generate more images")
    betas = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    side = min(x.shape[-2:])
    scales = max(s for s in range(1, 6) if side > 10 * 2 ** (s - 1)) if side > 10 else 0
    if scales == 0:
        raise DataError("generated images", f"{side} px is too small for MS-SSIM (11-px window)",
                        "use images of at least 11 x 11 pixels")
    w = torch.tensor(betas[:scales])
    w = tuple((w / w.sum()).tolist())
    pairs = list(itertools.combinations(range(len(x)), 2))[:max_pairs]
    a = torch.stack([x[i] for i, _ in pairs])
    b = torch.stack([x[j] for _, j in pairs])
    return float(ms_ssim(a, b, data_range=1.0, betas=w, reduction="elementwise_mean"))


def load_png_folder(folder: str | Path, names: Sequence[str] | None = None) -> Tensor:
    """Every PNG / JPEG of ``folder`` (sorted; or ``names``) as a (N, C, H, W) float tensor in [0, 1]; one size."""
    from ..io.image2d import read_image2d

    root = Path(folder)
    if not root.is_dir():
        raise DataError(root, "image folder does not exist", "pass a folder of PNG / JPEG images")
    files = [root / n for n in names] if names is not None else sorted(
        p for p in root.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg") and not p.name.startswith("."))
    if not files:
        raise DataError(root, "holds no PNG / JPEG images", "pass the images/ folder of a dataset")
    arrays = [torch.from_numpy(read_image2d(p).data.astype("float32") / 255.0) for p in files]
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) != 1:
        raise DataError(root, f"images differ in shape {sorted(shapes)}", "resize them to one size first")
    return torch.stack(arrays)
