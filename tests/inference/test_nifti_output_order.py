"""infer_nifti writes each output to its own file whatever order the stitched outputs come back in (MONAI
returns dict outputs in its own key order; the main output's path is listed first)."""

import nibabel as nib
import numpy as np
import torch

from medrs_diff.inference.tiling import infer_nifti


def test_each_output_lands_in_its_own_file_whatever_the_key_order(tmp_path):
    src = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), str(src))

    def predictor(x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, *size = x.shape
        # keys that sort before the main one, each with its own channel count and constant value
        return {"alpha": torch.full((b, 3, *size), 3.0), "prediction": torch.full((b, 1, *size), 1.0),
                "beta": torch.full((b, 2, *size), 2.0)}

    paths = infer_nifti(predictor, src, tmp_path / "out.nii.gz", (8, 8, 4), in_scaling=None, data_space=())
    got = {k: np.asarray(nib.load(str(p)).dataobj) for k, p in paths.items()}
    assert {k: v.shape for k, v in got.items()} == {"prediction": (8, 8, 4), "alpha": (8, 8, 4, 3),
                                                   "beta": (8, 8, 4, 2)}
    assert {k: float(v.mean()) for k, v in got.items()} == {"prediction": 1.0, "alpha": 3.0, "beta": 2.0}
