"""NIfTI image pairs for fusion (DDFM): two registered modalities per case, no labels.

Flat layout ``<case>_<a>.nii.gz`` + ``<case>_<b>.nii.gz`` in ``root`` (the multi-modal case layout that
``infer`` stacks, see :mod:`medrs_diff.inference.cases`); the modalities are stacked as the channels of
``image``, each scaled on its own, in the order of ``modalities`` (a: the intensity source, e.g. PET /
SPECT / CT / infrared; b: the gradient source, e.g. MRI / visible). The method decides which channels its
prior trains on. With ``phantoms`` set, an empty ``root`` is first filled with synthetic PET / MRI-like
pairs (:mod:`medrs_diff.data.fusion_phantoms`).

Prior-only training (``prior_modality`` set, e.g. ``mri``): each case is one ``<case>_<prior_modality>``
file (no partner needed: the DDFM prior is unconditional) and ``image`` holds it twice, as channels a and
b, so validation fuses an image with itself (a smoke check of the chain). With a single volume (the shared
example MR) training and validation read the same case; ``modalities`` still names what ``infer`` stacks.
"""

from __future__ import annotations

from pathlib import Path

from ..data import keys as K
from ..errors import DataError
from .base import split_train_val
from .nifti import CASE, NiftiSegmentationDataModule, _SegItems


class NiftiFusionDataModule(NiftiSegmentationDataModule):
    """Registered modality pairs for a fusion prior; ``image`` is (2, *spatial), channel order = ``modalities``."""

    def __init__(
        self,
        root: str,
        modalities: list[str] | None = None,
        spatial_dims: int = 2,
        scaling: str = "mri",
        patch_size: list[int] | None = None,
        val_fraction: float = 0.25,
        slices: bool = False,
        prior_modality: str | None = None,
        phantoms: int = 0,
        phantom_size: list[int] | None = None,
        phantom_seed: int = 0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        mods = list(modalities) if modalities is not None else ["pet", "mri"]
        super().__init__(
            root=root, spatial_dims=spatial_dims, scaling=scaling, patch_size=patch_size, val_fraction=val_fraction,
            modalities=mods, layout="flat", slices=slices, phantoms=phantoms, phantom_size=phantom_size,
            phantom_seed=phantom_seed, batch_size=batch_size, val_batch_size=val_batch_size,
            num_workers=num_workers, seed=seed, check_files=False,
        )
        self.hparams["modalities"] = list(self.modalities)  # what infer stacks (the default when None was given)
        if len(self.modalities) != 2:
            raise DataError("modalities", f"fusion takes exactly two modalities, got {self.modalities}",
                            "list the intensity source then the gradient source, e.g. [pet, mri]")
        self.prior_modality = None if prior_modality is None else str(prior_modality)
        if self.prior_modality == "":
            raise DataError("prior_modality", "is empty", "name the modality tag the prior trains on, or null")

    def prepare_data(self) -> None:
        if not self.phantoms or any(self.root.glob(f"*_{self.modalities[0]}.nii*")):
            return
        from ..data.fusion_phantoms import make_fusion_phantoms

        if self.spatial_dims != 2 or self.slices:
            raise DataError("phantoms", "fusion phantoms are 2-D images", "use spatial_dims: 2 and slices: false")
        size = self.phantom_size if self.phantom_size is not None else [32, 32]
        make_fusion_phantoms(self.root, n=self.phantoms, size=size, modalities=self.modalities, seed=self.phantom_seed)

    def records(self) -> list[dict[str, str]]:
        """``{<a>: path, <b>: path, case: name}`` per case; a case missing a modality is refused by name."""
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder does not exist (or is a file)",
                            "check data.init_args.root, or set `phantoms` to generate synthetic pairs there")
        a, b = self.modalities
        if self.prior_modality is not None:
            return self._prior_records(self.prior_modality)
        out = []
        for fa in sorted(self.root.glob(f"*_{a}.nii*")):
            if fa.name.startswith("."):
                continue
            case = fa.name[: fa.name.index(f"_{a}.nii")]
            suffix = fa.name[len(case) + len(a) + 1:]
            fb = fa.with_name(f"{case}_{b}{suffix}")
            if not fb.exists():
                raise DataError(fb, f"case {case} has no {b} file", f"add it, or remove {fa.name} (every case needs "
                                f"{a} and {b}, registered on one grid)")
            out.append({a: str(fa), b: str(fb), CASE: case})
        if not out:
            raise DataError(self.root, f"holds no fusion pairs <case>_{a}.nii.gz + <case>_{b}.nii.gz",
                            "put registered pairs there, check `modalities`, or set `phantoms`")
        return out

    def _prior_records(self, tag: str) -> list[dict[str, str]]:
        files = [f for f in sorted(self.root.glob(f"*_{tag}.nii*")) if not f.name.startswith(".")]
        if not files:
            raise DataError(self.root, f"holds no <case>_{tag}.nii.gz file for the prior",
                            "put the prior's images there, or check `prior_modality`")
        return [{tag: str(f), CASE: f.name[: f.name.index(f"_{tag}.nii")]} for f in files]

    @property
    def image_keys(self) -> tuple[str, ...]:
        return (self.prior_modality,) * 2 if self.prior_modality is not None else tuple(self.modalities)

    def transforms(self, train: bool):
        from ..data.medical import medical_transforms

        images = tuple(dict.fromkeys(self.image_keys))
        return medical_transforms(
            images, (), scaling=self.scaling, stack=self.image_keys,
            orientation="RAS" if self.spatial_dims == 3 or self.slices else None,
            patch_size=self.patch_size if (train or self.slices) else None, seed=self.seed, slices_2d=self.slices,
        )

    def _items(self, records: list[dict[str, str]], train: bool) -> _SegItems:
        from ..data.medical import medical_dataset

        base = medical_dataset(records, self.transforms(train), seed=self.seed)
        return _SegItems(base, (K.IMAGE,), [r[CASE] for r in records])

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        records = self.records()
        if self.prior_modality is not None and len(records) == 1:
            train, val = records, records  # one volume: validation only checks that the chain runs
        else:
            train, val = split_train_val(records, self.val_fraction, "fusion pairs", Path(self.root))
        self.train_dataset = self._items(train, True)
        self.val_dataset = self._items(val, False)
        self.test_dataset = self.val_dataset
