"""Latent diffusion end to end: ``fit`` stage 1 (autoencoder_kl_phantom2d), ``fit`` stage 2 (latent_ddpm_phantom2d)
on its checkpoint, then ``infer`` on the latent checkpoint alone (the autoencoder file deleted): the output is a
decoded image of the input's shape."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from test_recipes import run_lightning, smoke_args

from medrs_diff.cli import main
from medrs_diff.train.recipe import recipe_dir


def test_latent_checkpoint_infers_without_the_autoencoder_file(tmp_path):
    assert run_lightning(smoke_args(recipe_dir() / "autoencoder_kl_phantom2d.yaml", tmp_path / "ae")) == 0
    ae = sorted((tmp_path / "ae" / "run").rglob("last.ckpt"))[0]
    args = smoke_args(recipe_dir() / "latent_ddpm_phantom2d.yaml", tmp_path / "ld")
    assert run_lightning([*args, "--model.init_args.method.init_args.autoencoder", str(ae)]) == 0
    latent = sorted((tmp_path / "ld" / "run").rglob("last.ckpt"))[0]
    record = torch.load(latent, map_location="cpu", weights_only=True)["medrs_diff"]["method"]["init_args"]
    assert record["autoencoder_config"]["channels"] == [32, 64, 64]  # the architecture travels in the checkpoint
    scale = torch.load(latent, map_location="cpu", weights_only=True)["state_dict"]["method.scale_bits"]
    assert float(scale.view(torch.float32)) > 0  # estimated on the first batch, stored
    ae.unlink()
    image = sorted((tmp_path / "ld" / "data").rglob("*_image.nii*"))[0]
    out = tmp_path / "out"
    assert main(["infer", "--checkpoint", str(latent), "--input", str(image), "--output", str(out),
                 "--steps", "2"]) in (0, None)
    written = nib.load(out / image.name)
    assert written.shape == nib.load(image).shape
    assert np.isfinite(np.asarray(written.dataobj)).all()
