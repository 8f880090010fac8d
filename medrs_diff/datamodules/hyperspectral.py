"""Labelled hyperspectral patches for per-pixel classifiers (SpectralDiff): one scene, one split.

Scene: ``path`` to an unmixing scene (Jasper Ridge / Samson ``.mat``, classes = the dominant endmember where
its abundance >= ``min_abundance``, :mod:`medrs_diff.data.hsi_classes`), or ``phantom: true``: a procedural
cube mixed from smooth synthetic endmembers (``phantom_classes`` x ``phantom_bands``, ``phantom_size`` pixels)
or, with ``path`` also set, from that scene's endmembers. Split: ``disjoint`` (whole blocks; patches of the two
sets never share a pixel) or ``random`` pixels, then ``train_per_class`` labelled training pixels.

Training items (drawn with replacement, ``samples_per_epoch`` per epoch, seeded by (seed, epoch, index)):
``image`` (bands, p + 2 context, p + 2 context) around a labelled training pixel (the extra ``context`` pixels
let the diffusion features of the centre p x p see their neighbourhood, as they do at inference), ``label``
(class index 0..K-1) and ``unlabelled_image`` (bands, p, p) anywhere in the scene (``diffusion_region: scene``,
the paper's unlabelled diffusion data) or in the training region (``train``). Validation: ``val_pixels`` fixed
test pixels. Cubes are reflectance, mapped with ``scaling`` (default ``unit``: [0, 1] onto [-1, 1], fitted on
nothing). ``label_values`` ([1, ..., K]) is what ``infer`` writes for the class indices 0..K-1 (without it: the
indices).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.hsi_classes import (
    LabelledScene,
    load_unmixing_scene,
    mixed_cube,
    random_split,
    sample_per_class,
    smooth_endmembers,
)
from ..data.hyperspectral import disjoint_split
from ..data.keys import IMAGE, LABEL, UNLABELLED
from ..data.scaling import resolve
from ..data.seeding import EpochAware
from ..errors import ArgumentError, DataError
from .base import DictDataModule


class _Patches(EpochAware, Dataset):
    def __init__(self, x: np.ndarray, labels: np.ndarray, pixels: np.ndarray, free: np.ndarray, patch: int,
                 length: int, seed: int, fixed: bool, context: int = 0) -> None:
        self.r = r = patch // 2 + context
        self.x = np.pad(x, ((0, 0), (r, r), (r, r)), mode="reflect")
        self.labels, self.pixels, self.free = labels, pixels, free
        self.patch, self.context, self.length, self.seed, self.fixed = patch, context, int(length), int(seed), fixed

    def __len__(self) -> int:
        return self.length

    def _at(self, y: int, x: int, margin: int = 0) -> torch.Tensor:
        """The patch centred on (y, x), ``margin`` extra pixels each side."""
        p, o = self.patch + 2 * margin, self.context - margin
        return torch.from_numpy(np.ascontiguousarray(self.x[:, y + o : y + o + p, x + o : x + o + p],
                                                     dtype=np.float32))

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = self.item_rng(i, self.fixed)
        y, x = self.pixels[i % len(self.pixels)] if self.fixed else self.pixels[rng.integers(len(self.pixels))]
        fy, fx = self.free[rng.integers(len(self.free))]
        return {IMAGE: self._at(y, x, self.context), LABEL: int(self.labels[y, x]) - 1, UNLABELLED: self._at(fy, fx)}


class HyperspectralPatchDataModule(DictDataModule):
    """One labelled hyperspectral scene as patches (see the module notes)."""

    def __init__(
        self,
        path: str | None = None,
        phantom: bool = False,
        phantom_size: int = 48,
        phantom_bands: int = 32,
        phantom_classes: int = 4,
        phantom_noise: float = 0.3,
        min_abundance: float = 0.5,
        split: str = "disjoint",
        test_fraction: float = 0.5,
        block_size: int | None = None,
        train_per_class: int | None = 30,
        patch_size: int = 9,
        context: int = 4,
        diffusion_region: str = "scene",
        scaling: str = "unit",
        samples_per_epoch: int = 256,
        val_pixels: int = 64,
        label_values: list[int] | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters(logger=False)
        if path is None and not phantom:
            raise ArgumentError("data.path", "no scene given",
                                "set path to a Jasper Ridge / Samson .mat or phantom: true")
        if split not in ("disjoint", "random"):
            raise ArgumentError("data.split", f"unknown split {split!r}", "use 'disjoint' or 'random'")
        if diffusion_region not in ("scene", "train"):
            raise ArgumentError("data.diffusion_region", f"unknown region {diffusion_region!r}",
                                "use 'scene' (paper) or 'train'")
        if patch_size < 1 or patch_size % 2 == 0:
            raise ArgumentError("data.patch_size", f"must be odd and positive, got {patch_size}", "use e.g. 9 or 13")
        if context < 0:
            raise ArgumentError("data.context", f"must be >= 0, got {context}", "use e.g. 4")
        if samples_per_epoch < 1 or val_pixels < 1:
            raise ArgumentError("data.samples_per_epoch / val_pixels", "must be >= 1", "set them to 1 or more")
        if label_values is not None and list(label_values) != list(range(1, len(label_values) + 1)):
            raise ArgumentError("data.label_values", f"{label_values} are not the label codes 1..K",
                                "list the codes of the K classes, [1, 2, ..., K] (0 = unlabelled)")
        self.path, self.phantom = path, phantom
        self.scene: LabelledScene | None = None

    def load_scene(self) -> LabelledScene:
        h = self.hparams
        if self.phantom:
            ends = (load_unmixing_scene(self.path, h.min_abundance).endmembers if self.path is not None
                    else smooth_endmembers(h.phantom_classes, h.phantom_bands, h.seed))
            return mixed_cube(ends, (h.phantom_size, h.phantom_size), seed=h.seed, noise=h.phantom_noise)
        return load_unmixing_scene(Path(self.path), h.min_abundance)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        h = self.hparams
        self.scene = sc = self.load_scene()
        if h.split == "disjoint":
            region, test = disjoint_split(sc.labels, h.patch_size, h.test_fraction, h.block_size, h.seed)
        else:
            region, test = random_split(sc.labels, h.test_fraction, h.seed)
        train = sample_per_class(region, sc.labels, h.train_per_class, h.seed)
        k = int(sc.labels.max())
        if h.label_values is not None and len(h.label_values) != k:
            raise DataError(self.path or "phantom", f"has {k} classes but label_values lists {len(h.label_values)}",
                            f"set data.init_args.label_values to {list(range(1, k + 1))}")
        where = self.path if self.path is not None else "phantom"
        for name, m in (("training", train), ("test", test)):
            if not m.any():
                raise DataError(where, f"the {h.split} split leaves no {name} pixel ({sc.labels.shape[0]} x "
                                f"{sc.labels.shape[1]} px, patch {h.patch_size}, block {h.block_size})",
                                "use a smaller block_size (default 4 x patch_size) or patch_size, or a larger scene")
        x = resolve(h.scaling).forward(sc.cube.astype(np.float32))
        free = np.argwhere(np.ones(sc.labels.shape, bool) if h.diffusion_region == "scene" else region)
        common = dict(x=np.asarray(x, np.float32), labels=sc.labels, free=free, patch=h.patch_size, context=h.context)
        self.train_dataset = _Patches(pixels=np.argwhere(train), length=h.samples_per_epoch, seed=h.seed, fixed=False,
                                      **common)
        te = np.argwhere(test)
        te = te[np.random.default_rng(h.seed).permutation(len(te))[: h.val_pixels]]
        self.val_dataset = _Patches(pixels=te, length=len(te), seed=h.seed + 1, fixed=True, **common)
        self.test_dataset = self.val_dataset
