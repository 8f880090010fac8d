"""Per-pixel hyperspectral classification on one scene and one split: SpectralDiff against an SVM on raw spectra
(scikit-learn, RBF, C chosen by 3-fold CV on the training pixels) and a small 2-D CNN on the same patches.

Protocol (every model sees the same pixels): the split gives a **training region** and test pixels
(:func:`~medrs_diff.data.hyperspectral.disjoint_split`: whole blocks; or the random-pixel split); the labelled
training pixels are ``train_per_class`` pixels per class drawn from the region (paper-like few labels). Band
scaling and SpectralDiff's PCA are fitted on training-region pixels only. SpectralDiff's diffusion model is
trained without labels on patches of the whole scene (``diffusion_region="scene"``, the paper's setup) or of the
training region only (``"train"``). Scores: OA, AA, kappa, per-class recall on the test pixels.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics as M
from ..data.hsi_classes import random_split, sample_per_class
from ..data.hyperspectral import band_scaling, disjoint_split
from ..methods.spectraldiff import SpectralDiff

MODELS = ("spectraldiff", "svm", "cnn2d")


@dataclass
class ExperimentConfig:
    """Sizes of one run (CPU defaults; the paper's in comments)."""

    split: str = "disjoint"            # or "random"
    test_fraction: float = 0.5
    block_size: int | None = None      # disjoint blocks (default 4 x patch)
    train_per_class: int | None = 30   # labelled training pixels per class (paper's splits: about 30)
    patch_size: int = 9                # classifier / CNN patch (paper 13)
    seed: int = 0
    # SpectralDiff
    channels: tuple[int, ...] = (8, 16)
    spatial_kernel: int = 3            # paper 5
    timesteps: int = 500
    feature_timesteps: tuple[int, ...] = (5, 10, 50, 100, 200, 400)
    feature_bins: int | None = 4
    pca_components: int = 32           # paper 600-1200
    diffusion_steps: int = 300
    diffusion_batch: int = 8           # paper 20
    diffusion_patch: int = 9           # paper 64
    diffusion_region: str = "scene"
    diffusion_lr: float = 1e-3         # paper 1e-4 (many more steps)
    classifier_epochs: int = 60
    classifier_lr: float = 1e-3
    dim: int = 64
    heads: int = 4
    # 2-D CNN
    cnn_epochs: int = 60
    models: tuple[str, ...] = MODELS
    extra: dict[str, Any] = field(default_factory=dict)


def make_split(labels: np.ndarray, cfg: ExperimentConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training region, labelled training pixels, test pixels) masks."""
    if cfg.split == "disjoint":
        region, test = disjoint_split(labels, cfg.patch_size, cfg.test_fraction, cfg.block_size, cfg.seed)
    elif cfg.split == "random":
        region, test = random_split(labels, cfg.test_fraction, cfg.seed)
    else:
        raise ValueError(f"split must be 'disjoint' or 'random', not {cfg.split!r}")
    return region, sample_per_class(region, labels, cfg.train_per_class, cfg.seed), test


def scores(pred: np.ndarray, ref: np.ndarray, k: int) -> dict[str, float]:
    """OA / AA / kappa / per-class recall of class indices 0..k-1."""
    return M.classification_scores(M.confusion_matrix(np.asarray(pred, float), np.asarray(ref, float), k))


def _patches(x: torch.Tensor, coords: np.ndarray, p: int) -> torch.Tensor:
    r = p // 2
    xp = F.pad(x[None], (r, r, r, r), mode="reflect")[0]
    return torch.stack([xp[:, y : y + p, xx : xx + p] for y, xx in coords])


def run_svm(x: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int = 0) -> np.ndarray:
    """RBF SVM on the raw (scaled) spectra; C and gamma by 3-fold CV on the training pixels."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    xs = x.reshape(x.shape[0], -1).T
    y = labels.ravel()
    tr = train.ravel()
    folds = min(3, int(np.unique(y[tr], return_counts=True)[1].min()))
    model = make_pipeline(StandardScaler(), SVC(kernel="rbf"))
    if folds >= 2:
        grid = {"svc__C": [1, 10, 100, 1000], "svc__gamma": ["scale", 0.1, 0.01]}
        model = GridSearchCV(model, grid, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    model.fit(xs[tr], y[tr])
    return model.predict(xs[test.ravel()])


class _CNN2D(nn.Module):
    def __init__(self, bands: int, k: int, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(bands, width, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(width, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _train_classifier(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, epochs: int, lr: float,
                      seed: int, batch: int = 32) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=g)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            loss = F.cross_entropy(net(inputs[idx]), targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()


def run_cnn2d(x: torch.Tensor, labels: np.ndarray, train: np.ndarray, test: np.ndarray, k: int,
              cfg: ExperimentConfig) -> np.ndarray:
    """Small 2-D CNN (1x1 spectral mixing, two 3x3 convs, pooling) on ``patch_size`` patches of the scaled cube."""
    torch.manual_seed(cfg.seed)
    net = _CNN2D(x.shape[0], k)
    tr = np.argwhere(train)
    _train_classifier(net, _patches(x, tr, cfg.patch_size), torch.as_tensor(labels[train] - 1),
                      cfg.cnn_epochs, 1e-3, cfg.seed)
    with torch.no_grad():
        te = np.argwhere(test)
        return torch.cat([net(_patches(x, te[i : i + 1024], cfg.patch_size)).argmax(1)
                          for i in range(0, len(te), 1024)]).numpy()


def train_diffusion(x: torch.Tensor, k: int, cfg: ExperimentConfig, allowed: np.ndarray | None = None,
                    ) -> tuple[SpectralDiff, torch.Tensor]:
    """Train SpectralDiff's DDPM without labels on random ``diffusion_patch`` windows lying in ``allowed`` (None:
    the whole scene); returns the model and the scene's (D, H, W) features."""
    from scipy import ndimage

    torch.manual_seed(cfg.seed)
    m = SpectralDiff(bands=x.shape[0], num_classes=k, channels=cfg.channels, spatial_kernel=cfg.spatial_kernel,
                     timesteps=cfg.timesteps, feature_timesteps=cfg.feature_timesteps, feature_bins=cfg.feature_bins,
                     pca_components=cfg.pca_components, patch_size=cfg.patch_size, dim=cfg.dim, heads=cfg.heads,
                     diffusion_steps=cfg.diffusion_steps, feature_seed=cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    dp = cfg.diffusion_patch
    allowed = np.ones(x.shape[1:], bool) if allowed is None else allowed
    inside = ndimage.minimum_filter(allowed.astype(np.uint8), size=dp, mode="constant", cval=0).astype(bool)
    starts = np.argwhere(inside) - dp // 2  # windows of dp pixels lying wholly in the allowed pixels
    opt = torch.optim.Adam(m.net.parameters(), lr=cfg.diffusion_lr)
    m.train()
    for _ in range(cfg.diffusion_steps):
        pick = starts[torch.randint(len(starts), (cfg.diffusion_batch,), generator=g).numpy()]
        batch = torch.stack([x[:, y : y + dp, xx : xx + dp] for y, xx in pick])
        loss, _ = m.diffusion_loss(batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.steps_done.fill_(cfg.diffusion_steps)
    m.eval()
    m.net.requires_grad_(False)
    m._classifier_init = copy.deepcopy(m.classifier.state_dict())  # every split's classifier starts here
    return m, m.features(x[None])[0]


def fit_head(m: SpectralDiff, feats: torch.Tensor, labels: np.ndarray, region: np.ndarray, train: np.ndarray,
             cfg: ExperimentConfig) -> torch.Tensor:
    """PCA on the training-region pixels' features, then the classifier on the labelled training pixels;
    returns the (K, H, W) logits of every pixel."""
    torch.manual_seed(cfg.seed)
    m.classifier.load_state_dict(m._classifier_init)
    m.fit_pca(feats[:, torch.from_numpy(region)].T)  # training-region pixels only
    z = m.project(feats[None])
    coords = torch.from_numpy(np.argwhere(train))
    pix = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords], 1)
    _train_classifier(m.classifier, m.centre_patches(z, pix), torch.as_tensor(labels[train] - 1),
                      cfg.classifier_epochs, cfg.classifier_lr, cfg.seed)
    with torch.no_grad():
        return m.classify(z)[0]


def model_space(cube: np.ndarray, region: np.ndarray, scaling: str) -> torch.Tensor:
    """``reflectance``: [0, 1] -> [-1, 1], fitted on nothing; ``band_percentile``: per-band 1-99 % of the region."""
    if scaling == "reflectance":
        x = 2.0 * cube - 1.0
    elif scaling == "band_percentile":
        x = band_scaling(cube, mask=region).forward(cube)
    else:
        raise ValueError(f"scaling must be 'reflectance' or 'band_percentile', not {scaling!r}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def run_experiment(cube: np.ndarray, labels: np.ndarray, cfg: ExperimentConfig,
                   splits: tuple[str, ...] | None = None, scaling: str = "reflectance") -> dict[str, Any]:
    """Train and score ``cfg.models`` on one (bands, H, W) cube (labels 0..K, 0 = unlabelled) for each split in
    ``splits`` (default ``cfg.split``). With ``reflectance`` scaling and ``diffusion_region="scene"`` nothing
    before the PCA depends on the split, so the diffusion model and features are computed once."""
    import dataclasses

    k = int(labels.max())
    shared = None
    results: dict[str, Any] = {}
    for split in splits or (cfg.split,):
        c = dataclasses.replace(cfg, split=split)
        region, train, test = make_split(labels, c)
        x = model_space(cube, region, scaling)
        ref = labels[test] - 1
        out: dict[str, Any] = {"config": {kk: v for kk, v in asdict(c).items() if kk != "extra"},
                               "scaling": scaling, "n_train": int(train.sum()), "n_test": int(test.sum()),
                               "n_region": int(region.sum()), "models": {}}
        for name in c.models:
            t0 = time.perf_counter()
            if name == "svm":
                pred = run_svm(x.numpy(), labels, train, test, c.seed) - 1
            elif name == "cnn2d":
                pred = run_cnn2d(x, labels, train, test, k, c)
            elif name == "spectraldiff":
                reuse = scaling == "reflectance" and c.diffusion_region == "scene"
                if shared is None or not reuse:
                    shared = train_diffusion(x, k, c, None if c.diffusion_region == "scene" else region)
                pred = fit_head(*shared, labels, region, train, c).argmax(0).numpy()[test]
            else:
                raise ValueError(f"unknown model {name!r}; choose from {MODELS}")
            out["models"][name] = {**scores(pred, ref, k), "seconds": round(time.perf_counter() - t0, 1)}
        results[split] = out
    return results
