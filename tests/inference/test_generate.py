"""``medrs-diff generate``: deterministic per seed, pairs read back through the clinical 2-D data module, a killed
run leaves complete pairs only (and is resumed), every bad argument is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medrs_diff.cli import main
from medrs_diff.errors import ArgumentError, CheckpointError, DataError
from medrs_diff.inference import generate as G
from medrs_diff.inference.generate import generate_pairs, pair_paths
from medrs_diff.methods import RetinalImageDDPM, RetinalMaskDDPM

TINY = dict(channels=[8, 8], attention_levels=[False, False], num_res_blocks=1, num_head_channels=8,
            norm_num_groups=8, timesteps=10)


def _perturbed(cls, seed: int):
    torch.manual_seed(seed)
    m = cls(**TINY)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # a fresh MONAI UNet outputs eps = 0 (zero output conv): make the nets see their inputs
        for w in m.parameters():
            w.add_(0.1 * torch.randn(w.shape, generator=g))
    return m.eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, write_checkpoint) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    mask = write_checkpoint(_perturbed(RetinalMaskDDPM, 0), root / "mask.ckpt", resize=[16, 16], scaling="dn8")
    image = write_checkpoint(_perturbed(RetinalImageDDPM, 1), root / "image.ckpt", resize=[16, 16], scaling="dn8")
    return {"mask": mask, "image": image}


def _run(ckpts, out: Path, n: int = 3, seed: int = 0, **kw):
    return generate_pairs(ckpts["mask"], out, n, image_checkpoint=ckpts["image"], seed=seed, sampler="ddim",
                          steps=3, **kw)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_same_seed_same_files_other_seed_other_files_and_batch_free(ckpts, tmp_path):
    m = _run(ckpts, tmp_path / "a", batch=2)
    _run(ckpts, tmp_path / "b", batch=2)
    _run(ckpts, tmp_path / "c", seed=1, batch=2)
    _run(ckpts, tmp_path / "d", batch=1)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 9 and a == b
    assert a.keys() == c.keys() and a["manual1/synth_00000.png"] != c["manual1/synth_00000.png"]
    assert a["images/synth_00001.png"] != c["images/synth_00001.png"]
    # pair i depends on (seed, i) only: the masks agree at batch 1 (images to 8-bit rounding of float noise)
    d = _files(tmp_path / "d")
    assert all(a[k] == d[k] for k in a if k.startswith("manual1"))
    assert m["complete"] and m["seed"] == 0 and m["sampler"] == "ddim" and m["steps"] == 3 and m["size"] == [16, 16]
    on_disk = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert on_disk["mask_checkpoint"]["sha256"] == m["mask_checkpoint"]["sha256"] and len(on_disk["files"]) == 3


def test_output_reads_back_through_the_clinical_data_module(ckpts, tmp_path):
    from medrs_diff.datamodules.clinical2d import Clinical2DSegmentationDataModule
    from medrs_diff.io.image2d import read_image2d

    out = tmp_path / "gen"
    _run(ckpts, out, n=4)
    dm = Clinical2DSegmentationDataModule(str(out), layout="hrf", val_fraction=0.25, batch_size=2)
    dm.setup("fit")
    assert len(dm.train_dataset) == 3
    item = dm.train_dataset[0]
    assert item["image"].shape == (3, 16, 16) and item["label"].shape == (1, 16, 16) and "fov" in item
    mask = read_image2d(pair_paths(out, 0)["mask"]).data
    fov = read_image2d(pair_paths(out, 0)["fov"]).data > 0
    image = read_image2d(pair_paths(out, 0)["image"]).data
    assert set(np.unique(mask)) <= {0, 255} and not mask[~fov].any()  # binary, inside the FOV
    assert (image[:, ~fov[0]] == 0).all()  # black outside the FOV
    assert np.array_equal(item["label"][0].numpy() > 0.5, mask[0] > 0)


def test_a_killed_run_leaves_complete_pairs_and_is_resumed(ckpts, tmp_path, monkeypatch):
    out = tmp_path / "k"
    real = G.write_image2d
    calls = {"n": 0}

    def dying(data, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # pair 0 (3 files) done, pair 1's mask written, its image not yet
            raise KeyboardInterrupt
        return real(data, path, *a, **k)

    monkeypatch.setattr(G, "write_image2d", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(ckpts, out, batch=3)
    images = sorted(p.name for p in (out / "images").iterdir())
    assert images == ["synth_00000.png"] and not [p for p in out.rglob("*") if p.name.startswith(".tmp")]
    monkeypatch.setattr(G, "write_image2d", real)
    _run(ckpts, out, batch=3)  # resumes: the orphan mask of pair 1 is redrawn, the rest written
    _run(ckpts, tmp_path / "ref", batch=3)
    assert _files(out) == _files(tmp_path / "ref")


def test_bad_arguments_are_one_clear_error_each(ckpts, tmp_path):
    with pytest.raises(ArgumentError, match="n: must be an integer >= 1, got 0"):
        _run(ckpts, tmp_path / "x", n=0)
    with pytest.raises(ArgumentError, match="sampler: unknown sampler 'euler'"):
        generate_pairs(ckpts["mask"], tmp_path / "x", 1, sampler="euler")
    with pytest.raises(ArgumentError, match="size: .* not a multiple of 2"):
        _run(ckpts, tmp_path / "x", size=(17, 16))
    with pytest.raises(DataError, match="checkpoint file does not exist"):
        generate_pairs(tmp_path / "none.ckpt", tmp_path / "x", 1)
    with pytest.raises(CheckpointError, match="but retinal_mask_ddpm was expected"):
        generate_pairs(ckpts["image"], tmp_path / "x", 1)
    with pytest.raises(CheckpointError, match="but retinal_image_ddpm was expected"):
        generate_pairs(ckpts["mask"], tmp_path / "x", 1, image_checkpoint=ckpts["mask"])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty and holds no generation manifest"):
        _run(ckpts, busy)
    _run(ckpts, tmp_path / "done", n=1)
    with pytest.raises(DataError, match=r"other settings \(seed differ\)"):
        _run(ckpts, tmp_path / "done", n=1, seed=5)


def test_cli_writes_pairs_and_reports_errors_in_one_line(ckpts, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["generate", "--checkpoint", str(ckpts["mask"]), "--image-checkpoint", str(ckpts["image"]), "--n", "2",
               "--output", str(out), "--seed", "3", "--sampler", "ddim", "--steps", "2", "--no-progress"])
    assert rc == 0 and "2 image / mask pairs ->" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "images").iterdir()) == ["synth_00000.png", "synth_00001.png"]
    rc = main(["generate", "--checkpoint", str(ckpts["image"]), "--n", "1", "--output", str(tmp_path / "y")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("medrs-diff generate: error:")
    with pytest.raises(SystemExit):
        main(["generate", "--checkpoint", str(ckpts["mask"]), "--n", "0", "--output", str(tmp_path / "z")])
    assert "argument --n: must be an integer >= 1, got 0" in capsys.readouterr().err
    rc = main(["generate", "--checkpoint", str(ckpts["mask"]), "--n", "2", "--output", str(tmp_path / "m"),
               "--sampler", "ddim", "--steps", "2", "--no-progress"])
    assert rc == 0 and len(list((tmp_path / "m" / "manual1").iterdir())) == 2
    assert not (tmp_path / "m" / "images").exists() or not any((tmp_path / "m" / "images").iterdir())
