"""A tiny conditioned diffusion method and data set for the training-layer tests (importable as ``train_toy``).

Restoration of 16x16 Gaussian blobs from noisy copies: ``cond`` (noisy) -> ``image`` (clean). The
denoiser is two convolutions with dropout (so the global torch RNG matters for exact resume) and the
method keeps an integer step-counter buffer like SRDiff's, so EMA copies integer buffers.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from medrs_diff.diffusion.process import DiffusionLoss
from medrs_diff.diffusion.samplers import SAMPLERS
from medrs_diff.diffusion.schedules import make_schedule
from medrs_diff.methods.base import DiffusionMethod, check_sampler


class BlobDataset(Dataset):
    """``n`` blob images in [-1, 1] with noisy conditions; items are batch dicts with an ``index`` and a ``path``."""

    def __init__(self, n: int = 32, size: int = 16, seed: int = 0, noise: float = 0.3) -> None:
        g = torch.Generator().manual_seed(seed)
        centers = torch.rand(n, 2, generator=g) * (size - 6) + 3
        yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
        d2 = (yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2
        self.image = (torch.exp(-d2 / 8.0) * 2 - 1)[:, None]
        self.cond = self.image + noise * torch.randn(self.image.shape, generator=g)

    def __len__(self) -> int:
        return self.image.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.image[i], "cond": self.cond[i], "index": torch.tensor(i), "path": f"blob_{i:03d}"}


class ToyDenoiser(nn.Module):
    def __init__(self, channels: int, timesteps: int, dropout: float) -> None:
        super().__init__()
        self.timesteps = timesteps
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 1, 3, padding=1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        tt = (t.to(x.dtype) / self.timesteps).view(-1, 1, 1, 1).expand_as(x)
        h = F.silu(self.conv1(torch.cat([x, cond.to(x.dtype), tt], 1)))
        return self.conv2(self.drop(h))


class ToyMethod(DiffusionMethod):
    name = "toy"
    input_key = "cond"
    target_key = "image"
    in_channels = 1
    out_channels = 1
    spatial_dims = 2

    def __init__(self, channels: int = 16, timesteps: int = 50, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = ToyDenoiser(channels, timesteps, dropout)
        self.schedule = make_schedule("linear", timesteps)
        self.objective = DiffusionLoss(self.schedule)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.seen: list[int] = []  # sample indices trained on, in order

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        if self.training:
            self.steps_done += 1
            if "index" in batch:
                self.seen.extend(int(i) for i in batch["index"])
        cond = batch["cond"]
        return self.objective(lambda x, t: self.net(x, t, cond), batch["image"], generator=generator)

    @torch.no_grad()
    def predict(self, batch, *, sampler=None, steps=None, n_samples=None, generator=None, progress=False):
        sampler = sampler or "ddim"
        check_sampler(sampler)
        cond = batch["cond"]
        n = n_samples or 1
        x_T = torch.randn((n * cond.shape[0], *cond.shape[1:]), generator=generator, device=cond.device)
        cond_n = cond.repeat(n, 1, 1, 1)
        out = SAMPLERS[sampler](lambda x, t: self.net(x, t, cond_n), x_T, self.schedule, steps=steps or 10,
                                generator=generator)
        samples = out.reshape(n, *cond.shape)
        return {"prediction": samples.mean(0), "uncertainty": samples.var(0, unbiased=False), "samples": samples}


class OtherToyMethod(ToyMethod):
    """Same weights layout, different method: resuming or loading it from a ToyMethod checkpoint must fail."""

    name = "other_toy"


def trainer(tmp_path, **kwargs: Any) -> L.Trainer:
    """A quiet single-process CPU trainer for tests."""
    opts: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(tmp_path),
    }
    opts.update(kwargs)
    return L.Trainer(**opts)
