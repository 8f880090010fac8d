"""``medrs-diff generate`` on a diffusion-autoencoder checkpoint: images from the latent DDIM + DDIM decoding,
deterministic per seed (sample i depends on (seed, i) only), written as NIfTI with a manifest, resumable; a DiffAE
without (or before) its latent DDIM, and retinal-only options, are refused with one line naming the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medrs_diff.cli import main
from medrs_diff.diffusion.generators import SampleGenerators
from medrs_diff.errors import CheckpointError, DataError
from medrs_diff.inference.generate_diffae import generate_diffae, image_path
from medrs_diff.inference.seeding import window_seed
from medrs_diff.io.nifti import read_nifti
from medrs_diff.methods.diffae import DiffAE

TINY = dict(in_channels=1, z_dim=4, encoder_base=4, encoder_levels=2, base=8, t_dim=16, timesteps=50,
            sampling_steps=3, latent=True, latent_hidden=16, latent_layers=3, latent_t_dim=16, latent_timesteps=50,
            latent_start_step=0, latent_stats_batches=2, latent_sampling_steps=5)


def _ready(seed: int = 0, **kw) -> DiffAE:
    """A DiffAE whose latent stage has statistics and counts as trained (random weights: fast and enough here)."""
    torch.manual_seed(seed)
    m = DiffAE(**{**TINY, **kw})
    with torch.no_grad():
        m._accumulate(torch.randn(64, 4) * 2 + 1)
        m.latent_step.fill_(10)
    return m.eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, write_checkpoint) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diffae_ckpts")
    plain = DiffAE(**{k: v for k, v in TINY.items() if not k.startswith("latent")})
    untrained = DiffAE(**TINY)
    data = dict(phantoms=8, phantom_size=16)
    return {"ready": write_checkpoint(_ready(), root / "ready.ckpt", **data),
            "plain": write_checkpoint(plain, root / "plain.ckpt", **data),
            "untrained": write_checkpoint(untrained, root / "untrained.ckpt", **data)}


def _images(folder: Path, n: int) -> list[np.ndarray]:
    return [read_nifti(image_path(folder, i)).data for i in range(n)]


def test_deterministic_per_seed_and_index(ckpts, tmp_path):
    m = generate_diffae(ckpts["ready"], tmp_path / "a", 3, seed=0, batch=2)
    generate_diffae(ckpts["ready"], tmp_path / "b", 3, seed=0, batch=2)
    generate_diffae(ckpts["ready"], tmp_path / "c", 3, seed=1, batch=2)
    generate_diffae(ckpts["ready"], tmp_path / "d", 3, seed=0, batch=1)
    a, b, c, d = (_images(tmp_path / k, 3) for k in "abcd")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(not np.allclose(x, y) for x, y in zip(a, c)) and not np.allclose(a[0], a[1])
    # batch-free up to float rounding (an untrained decoder: values of order 1e3)
    assert all(np.allclose(x, y, rtol=1e-5, atol=1e-5 * np.abs(x).max()) for x, y in zip(a, d))
    assert a[0].shape == (16, 16) and all(np.isfinite(x).all() for x in a)
    # file i is the model's sample from generator window_seed(seed, "diffae", (i,)), x_T after the latent noise
    model = _ready()
    want = model.sample((1, 1, 16, 16), generator=SampleGenerators.from_seeds([window_seed(0, "diffae", (2,))]))
    assert np.allclose(a[2], want["prediction"][0, 0].numpy(), rtol=1e-6, atol=1e-6)
    on_disk = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert on_disk == m and m["complete"] and m["size"] == [16, 16] and m["method"] == "diffae"
    assert m["files"] == [f"images/synth_0000{i}.nii.gz" for i in range(3)] and len(m["checkpoint"]["sha256"]) == 64


def test_resume_and_settings_change(ckpts, tmp_path):
    out = tmp_path / "g"
    generate_diffae(ckpts["ready"], out, 2, seed=0)
    first = _images(out, 2)
    image_path(out, 1).unlink()  # a killed run: sample 1 missing
    generate_diffae(ckpts["ready"], out, 3, seed=0)
    again = _images(out, 3)
    assert np.array_equal(first[1], again[1]) and np.array_equal(first[0], again[0])
    with pytest.raises(DataError, match=r"other settings \(seed differ\)"):
        generate_diffae(ckpts["ready"], out, 3, seed=5)


def test_cli_and_refusals(ckpts, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["generate", "--checkpoint", str(ckpts["ready"]), "--n", "2", "--output", str(out), "--steps", "2",
               "--latent-steps", "4", "--no-progress"])
    assert rc == 0 and "2 images ->" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "images").iterdir()) == ["synth_00000.nii.gz", "synth_00001.nii.gz"]
    assert json.loads((out / "manifest.json").read_text())["latent_steps"] == 4
    for name, text in (("plain", "latent: true"), ("untrained", "never trained")):
        rc = main(["generate", "--checkpoint", str(ckpts[name]), "--n", "1", "--output", str(tmp_path / name)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and text in err[0] and str(ckpts[name]) in err[0], err
        assert not (tmp_path / name / "images").exists()
    rc = main(["generate", "--checkpoint", str(ckpts["ready"]), "--image-checkpoint", str(ckpts["ready"]), "--n", "1",
               "--output", str(tmp_path / "x")])
    assert rc == 2 and "omit --image-checkpoint" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="latent: true"):
        generate_diffae(ckpts["plain"], tmp_path / "y", 1)
