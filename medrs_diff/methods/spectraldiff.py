"""SpectralDiff (Chen, Yue, Fang, Xia; TGRS 2023): an unconditional 3-D DDPM on hyperspectral patches used as a
feature extractor for per-pixel land-cover classification.

1. **Diffusion** (unlabelled): ``SpectralUNet3D`` learns eps on x0 = a patch as (B, 1, bands, h, w), T = 500,
   linear betas 1e-4 .. 0.02 (unscaled), L1 on eps (the paper's settings).
2. **Features**: x0 is noised to x_t at ``feature_timesteps`` (paper {5, 10, 50, 100, 200, 400}) and the
   decoder activations (the bottleneck and every decoder level) are kept. Each (C, bands', h, w) activation is
   average-pooled along the spectral axis to ``feature_bins`` bins and flattened per pixel (C x bins values;
   ``feature_bins=None`` keeps every spectral sample, the paper's full tensors, too big for a CPU).
3. **PCA** with whitening, fitted on the features of **training pixels only** (:meth:`fit_pca` takes the
   training rows; a test pixel never enters it), ``pca_components`` components (paper 600-1200; CPU 32-64).
4. **Classifier**: :class:`~medrs_diff.nets.patch_transformer.PatchCrossAttentionClassifier` over the
   ``patch_size`` x ``patch_size`` PCA-feature patch around each pixel (paper 13 x 13, dim 64, depth 2).

One ``fit`` runs the phases in turn by step count (as SRDiff does): ``diffusion_steps`` of diffusion, then
``pca_batches`` batches (more until there are more rows than components) whose centre-pixel features are
collected (the training loader's pixels only) and the PCA fitted, then the classifier with the diffusion net
frozen. ``predict`` on a (B, bands, H, W) tile returns
``prediction`` (the class **index** 0..K-1 per pixel; inference writes the data module's ``label_values``, the
label codes 1..K of :mod:`medrs_diff.data.hyperspectral`) and ``probability`` (K channels). Feature noise is drawn from
``generator``, else from a generator seeded with ``feature_seed`` (the same tile gives the same map).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.keys import IMAGE, LABEL, UNLABELLED
from ..diffusion.generators import GeneratorLike
from ..diffusion.process import DiffusionLoss, q_sample
from ..diffusion.schedules import make_schedule
from ..errors import ArgumentError, DataError
from ..nets.patch_transformer import PatchCrossAttentionClassifier
from ..nets.spectral_unet3d import SpectralUNet3D
from .base import IOSpec, Method

PAPER_TIMESTEPS = (5, 10, 50, 100, 200, 400)


class SpectralDiff(Method):
    """SpectralDiff: 3-D spectral DDPM features -> PCA (training pixels) -> cross-attention patch classifier."""

    name = "spectraldiff"
    task = "class"
    input_key = IMAGE
    target_key = LABEL
    outputs = ("prediction", "probability")

    def __init__(
        self,
        bands: int,
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        spatial_kernel: int = 5,
        timesteps: int = 500,
        feature_timesteps: Sequence[int] = PAPER_TIMESTEPS,
        feature_bins: int | None = 8,
        pca_components: int = 64,
        whiten: bool = True,
        patch_size: int = 13,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
        diffusion_steps: int = 1000,
        pca_batches: int = 20,
        feature_seed: int = 0,
    ) -> None:
        super().__init__()
        for arg, v, lo in (("bands", bands, 1), ("num_classes", num_classes, 2), ("pca_components", pca_components, 1),
                           ("timesteps", timesteps, 1), ("diffusion_steps", diffusion_steps, 0),
                           ("pca_batches", pca_batches, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ArgumentError(f"SpectralDiff.{arg}", f"must be an integer >= {lo}, got {v!r}",
                                    f"give an integer >= {lo}")
        if patch_size < 1 or patch_size % 2 == 0:
            raise ArgumentError("SpectralDiff.patch_size", f"must be odd and positive, got {patch_size}",
                                "use an odd patch size (paper 13)")
        taps = tuple(int(t) for t in feature_timesteps)
        if not taps or any(t < 0 or t >= timesteps for t in taps):
            raise ArgumentError("SpectralDiff.feature_timesteps", f"{taps} must lie in 0 .. {timesteps - 1}",
                                f"choose timesteps below T = {timesteps} (paper {list(PAPER_TIMESTEPS)})")
        if feature_bins is not None and feature_bins < 1:
            raise ArgumentError("SpectralDiff.feature_bins", f"must be >= 1 or null, got {feature_bins}",
                                "give a positive number of spectral bins (null keeps every sample)")
        self.in_channels = self.bands = bands
        self.num_classes = num_classes
        self.out_channels = 1
        self.feature_timesteps = taps
        self.feature_bins = feature_bins
        self.pca_components = pca_components
        self.whiten = whiten
        self.patch_size = patch_size
        self.diffusion_steps, self.pca_batches = diffusion_steps, pca_batches
        self.feature_seed = feature_seed
        self.net = SpectralUNet3D(tuple(channels), spatial_kernel)
        self.schedule = make_schedule("linear", timesteps, scale=False)
        self.objective = DiffusionLoss(self.schedule, prediction_type="eps", loss_type="l1")
        self.classifier = PatchCrossAttentionClassifier(pca_components, num_classes, patch_size, dim, depth, heads,
                                                        dropout)
        d = self.feature_dim
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("pca_mean", torch.zeros(d))
        self.register_buffer("pca_basis", torch.zeros(d, pca_components))
        self.register_buffer("pca_scale", torch.ones(pca_components))
        self.register_buffer("pca_fitted", torch.zeros((), dtype=torch.bool))
        self._pca_rows: list[Tensor] = []

    # -- sizes ---------------------------------------------------------------------------------------
    @property
    def denoiser(self) -> SpectralUNet3D:
        return self.net

    @property
    def io_spec(self) -> IOSpec:
        """The base spec, with ``prediction`` declared a label map (inference rounds it, never blends codes)."""
        spec = super().io_spec
        return IOSpec(spec.inputs, spec.outputs, spec.spatial_dims, spec.grid_factor, spec.task, spec.data_space,
                      {**spec.extra, "label_outputs": ("prediction",)})

    @property
    def feature_dim(self) -> int:
        """Per-pixel feature length: timesteps x sum over decoder taps of channels x spectral bins."""
        ch = self.net.channels
        taps = [ch[-1], *reversed(ch[:-1])]
        if self.feature_bins is not None:
            per_t = sum(c * self.feature_bins for c in taps)
        else:
            m = self.net.spectral_multiple
            padded = self.bands + (-self.bands) % m
            per_t = ch[-1] * padded // m + sum(c * padded // 2**i for i, c in enumerate(ch[:-1]))
        return len(self.feature_timesteps) * per_t

    @property
    def phase(self) -> str:
        s = int(self.steps_done)
        if s < self.diffusion_steps:
            return "diffusion"
        return "classifier" if bool(self.pca_fitted) else "pca"

    # -- inputs --------------------------------------------------------------------------------------
    def _image(self, batch: Mapping[str, Any]) -> Tensor:
        x = batch[self.input_key]
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise DataError("batch", f"SpectralDiff takes (B, bands, h, w) patches, got "
                            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}",
                            "feed hyperspectral cubes band-first")
        if x.shape[1] != self.bands:
            raise DataError("batch", f"the cube has {x.shape[1]} bands but this SpectralDiff model was built for "
                            f"{self.bands}", f"give a cube with {self.bands} bands (the checkpoint's) or retrain")
        if not torch.isfinite(x).all():
            raise DataError("batch", "the cube holds NaN / inf values", "fill or drop the NaN bands first")
        return x

    # -- diffusion and features ----------------------------------------------------------------------
    def diffusion_loss(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """L1 eps loss of the 3-D DDPM on (B, bands, h, w) patches (x0 = (B, 1, bands, h, w))."""
        return self.objective(lambda xt, t: self.net(xt, t), x[:, None], generator=generator)

    @torch.no_grad()
    def features(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, bands, H, W) -> (B, feature_dim, H, W): decoder activations at every feature timestep."""
        x0 = x[:, None].float()
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(int(self.feature_seed))
        out = []
        for t in self.feature_timesteps:
            noise = torch.randn(x0.shape, generator=generator, device=x.device, dtype=x0.dtype)
            index = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            xt = q_sample(self.schedule, x0, index, noise)
            _, taps = self.net(xt, index, return_features=True)
            for f in taps:
                if self.feature_bins is not None:
                    f = F.adaptive_avg_pool3d(f, (self.feature_bins, f.shape[-2], f.shape[-1]))
                out.append(f.flatten(1, 2))
        return torch.cat(out, 1)

    # -- PCA (training pixels only) ------------------------------------------------------------------
    @torch.no_grad()
    def fit_pca(self, rows: Tensor) -> None:
        """Fit the (whitened) PCA on ``rows`` (N, feature_dim): the features of training pixels only."""
        if rows.ndim != 2 or rows.shape[1] != self.feature_dim:
            raise DataError("SpectralDiff.fit_pca", f"rows {tuple(rows.shape)} are not (N, {self.feature_dim})",
                            "pass one feature row per training pixel")
        k = self.pca_components
        if rows.shape[0] <= k:
            raise DataError("SpectralDiff.fit_pca", f"{rows.shape[0]} training pixels cannot fit {k} components",
                            f"use more training pixels or pca_components < {rows.shape[0]}")
        r = rows.double()
        mean = r.mean(0)
        _, s, vh = torch.linalg.svd(r - mean, full_matrices=False)
        std = s[:k] / (r.shape[0] - 1) ** 0.5
        self.pca_mean.copy_(mean.float())
        self.pca_basis.copy_(vh[:k].T.float())
        self.pca_scale.copy_((std + 1e-6 * std[0]).float() if self.whiten else torch.ones_like(std).float())
        self.pca_fitted.fill_(True)

    def project(self, feats: Tensor) -> Tensor:
        """(B, feature_dim, H, W) -> (B, pca_components, H, W) through the fitted PCA."""
        if not bool(self.pca_fitted):
            raise ArgumentError("SpectralDiff", f"the PCA is not fitted yet (step {int(self.steps_done)}; the "
                                f"diffusion phase ends at {self.diffusion_steps})",
                                "train past diffusion_steps + pca_batches, or call fit_pca on training features")
        f = feats.movedim(1, -1)
        z = (f - self.pca_mean) @ self.pca_basis / self.pca_scale
        return z.movedim(-1, 1)

    # -- classifier ----------------------------------------------------------------------------------
    def centre_patches(self, z: Tensor, pixels: Tensor | None = None) -> Tensor:
        """(B, k, H, W) PCA maps -> (N, k, p, p) reflect-padded patches around ``pixels`` ((N, 3) rows of (b, y, x);
        default: every pixel, row-major per image)."""
        r = self.patch_size // 2
        zp = F.pad(z, (r, r, r, r), mode="reflect") if r else z
        if pixels is None:
            b, _, h, w = z.shape
            bb, yy, xx = torch.meshgrid(torch.arange(b), torch.arange(h), torch.arange(w), indexing="ij")
            pixels = torch.stack([bb.flatten(), yy.flatten(), xx.flatten()], 1).to(z.device)
        off = torch.arange(self.patch_size, device=z.device)
        ys = (pixels[:, 1, None] + off)[:, :, None]
        xs = (pixels[:, 2, None] + off)[:, None, :]
        return zp[pixels[:, 0, None, None], :, ys, xs].permute(0, 3, 1, 2)

    def classify(self, z: Tensor, chunk: int = 4096) -> Tensor:
        """(B, k, H, W) PCA maps -> (B, K, H, W) logits, every pixel classified from its patch."""
        b, _, h, w = z.shape
        bb, yy, xx = torch.meshgrid(torch.arange(b), torch.arange(h), torch.arange(w), indexing="ij")
        pix = torch.stack([bb.flatten(), yy.flatten(), xx.flatten()], 1).to(z.device)
        logits = torch.cat([self.classifier(self.centre_patches(z, pix[i : i + chunk]))
                            for i in range(0, len(pix), chunk)])
        return logits.reshape(b, h, w, -1).permute(0, 3, 1, 2)

    # -- contract ------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        x = self._image(batch)
        phase = self.phase
        if self.training:
            self.steps_done += 1
        if phase == "diffusion":  # unlabelled patches when the batch has them (the whole scene), else the labelled
            free = batch.get(UNLABELLED)
            return self.diffusion_loss(self._image({self.input_key: free}) if free is not None else x, generator)
        self.net.requires_grad_(False)
        r = self.patch_size // 2
        if x.shape[-1] < self.patch_size or x.shape[-2] < self.patch_size:
            raise DataError("batch", f"patches {tuple(x.shape[-2:])} are smaller than patch_size {self.patch_size}",
                            "train on patches of at least patch_size pixels")
        cy, cx = x.shape[-2] // 2, x.shape[-1] // 2
        feats = self.features(x, generator)
        zero = sum(p.sum() for p in self.classifier.parameters()) * 0.0
        if phase == "pca":
            self._pca_rows.append(feats[:, :, cy, cx].detach().cpu())
            n_rows = sum(len(r) for r in self._pca_rows)
            if len(self._pca_rows) >= self.pca_batches and n_rows > self.pca_components:
                self.fit_pca(torch.cat(self._pca_rows).to(feats.device))
                self._pca_rows = []
            return zero, {"pca_rows": torch.tensor(float(len(self._pca_rows)))}
        label = batch.get(self.target_key)
        if not isinstance(label, Tensor):
            raise DataError("batch", f"the classifier phase needs batch[{self.target_key!r}] (class indices)",
                            "use a labelled patch data module")
        label = label.reshape(-1).long()
        if label.min() < 0 or label.max() >= self.num_classes:
            raise DataError("batch", f"class indices {int(label.min())}..{int(label.max())} leave 0.."
                            f"{self.num_classes - 1}", "set num_classes to the data's class count")
        z = self.project(feats)[:, :, cy - r : cy + r + 1, cx - r : cx + r + 1]
        logits = self.classifier(z)
        ce = F.cross_entropy(logits, label)
        acc = (logits.argmax(1) == label).float().mean()
        return ce + zero, {"ce": ce.detach(), "accuracy": acc.detach()}

    @torch.no_grad()
    def predict(self, batch: dict[str, Any], *, sampler: str | None = None, steps: int | None = None,
                n_samples: int | None = None, generator: GeneratorLike = None, progress: bool = False,
                ) -> dict[str, Tensor]:
        x = self._image(batch)
        if not bool(self.pca_fitted):
            if int(self.steps_done) == 0:
                self.project(x)  # raises: an untrained model classifies nothing
            # mid-fit validation (diffusion / PCA phase): nothing to classify yet. -1 = not classified: validation
            # scores 0 and inference refuses it (not a class index)
            warnings.warn(f"SpectralDiff: step {int(self.steps_done)} is still in the {self.phase} phase (the "
                          f"classifier starts after step {self.diffusion_steps} + {self.pca_batches} PCA batches); "
                          "the class map is all -1 (not classified)", stacklevel=2)
            b, _, h, w = x.shape
            return {"prediction": x.new_full((b, 1, h, w), -1.0),
                    "probability": x.new_full((b, self.num_classes, h, w), 1.0 / self.num_classes)}
        gen = generator if isinstance(generator, torch.Generator) else None
        logits = self.classify(self.project(self.features(x, gen)))
        prob = logits.softmax(1)
        return {"prediction": prob.argmax(1, keepdim=True).float(), "probability": prob}

    def validation_metrics(self, batch: Mapping[str, Any], out: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Accuracy of the centre pixel of each patch (class indices)."""
        label = batch.get(self.target_key)
        if not isinstance(label, Tensor):
            return {}
        pred = out["prediction"]
        centre = pred[:, 0, pred.shape[-2] // 2, pred.shape[-1] // 2]
        return {"accuracy": (centre.long() == label.reshape(-1).long()).float().mean()}

    def panel_columns(self, batch: Mapping[str, Any], out: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], tuple]:
        """Training panels: the band mean of the input patch and the class map."""
        x = batch[self.input_key]
        return {"input (band mean)": x.mean(1, keepdim=True), "prediction": out["prediction"]}, ("prediction",)
