"""HyperLDM: the unmixing decoder (exact with the true abundances and gain 1), the spectral-angle loss, the frozen
library / latent scale, the two stages, bad inputs, predict / infer outputs (several seeds, several files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrs_diff.data.hsi_synthesis import mixed_cube, render_rgb, synthetic_endmembers
from medrs_diff.errors import CheckpointError, DataError
from medrs_diff.methods import METHODS, HyperLDM
from medrs_diff.metrics.spectral import sam
from medrs_diff.nets.hyperldm import FrozenFloat, UnmixingHead, spectral_angle, unmix

BANDS, K = 24, 5
RGB = [18, 10, 3]
TINY = dict(bands=BANDS, num_endmembers=K, latent_channels=4, codebook_size=32, ae_channels=8, cond_channels=8,
            channels=(8, 16), num_head_channels=8, norm_num_groups=8, timesteps=20, pretrain_steps=1, n_samples=2)


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def _batch(n: int = 2, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    lib = synthetic_endmembers(BANDS, K, 0)
    cubes = [mixed_cube(lib, size, seed + i)[0] for i in range(n)]
    return {"image": torch.tensor(np.stack(cubes)), "cond": torch.tensor(np.stack([render_rgb(c, RGB) for c in cubes])),
            "endmembers": torch.tensor(lib)}


def test_registered_and_declares_its_outputs():
    m = HyperLDM(**TINY)
    assert METHODS["hyperldm"] is HyperLDM
    spec = m.io_spec
    assert spec.inputs == {"cond": 3} and spec.task == "spectral" and spec.data_space == ()
    assert spec.outputs == ("prediction", "uncertainty", "sample_0", "sample_1")
    assert spec.extra["size_multiple"] == 8 and spec.extra["bands"] == BANDS  # 1/4 latent, 2 UNet levels


def test_unmixing_decoder_reproduces_the_cube_with_true_abundances_and_gain_one():
    lib = synthetic_endmembers(BANDS, K, 3)
    cube, ab = mixed_cube(lib, 16, 7)
    head = UnmixingHead(BANDS, K)
    head.library.set(torch.tensor(lib))
    assert torch.equal(head.gain.data, torch.ones(BANDS))
    # softmax(log a) = a for abundances on the simplex: the decoder's output is exactly M a
    out, a = head(torch.log(torch.tensor(ab))[None])
    torch.testing.assert_close(a[0], torch.tensor(ab), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[0], torch.tensor(cube), atol=1e-6, rtol=1e-5)
    # the per-band gain multiplies each band
    g = torch.linspace(0.5, 2.0, BANDS)
    torch.testing.assert_close(unmix(torch.tensor(ab)[None], torch.tensor(lib), g)[0],
                               torch.tensor(cube) * g[:, None, None], atol=1e-6, rtol=1e-5)


def test_spectral_angle_loss_is_zero_for_scaled_spectra_and_matches_sam():
    x = torch.rand(2, BANDS, 8, 8) + 0.05
    assert spectral_angle(x, 3.7 * x).abs().max() < 1e-6
    m = HyperLDM(**TINY)
    for form in ("cosine", "angle"):
        m.sam_loss = form
        assert float(m.spectral_loss(0.2 * x, x)) < 1e-6
        assert float(m.spectral_loss(torch.rand_like(x), x)) > 1e-3
    # the angle is the SAM metric's (degrees, arccos form) on random spectra
    y = torch.rand(2, BANDS, 8, 8) + 0.05
    torch.testing.assert_close(torch.rad2deg(spectral_angle(x, y)).flatten(1).mean(1), sam(x, y).float(), atol=1e-3,
                               rtol=1e-4)
    # orthogonal spectra: 90 degrees
    a, b = torch.zeros(1, 4, 1, 1), torch.zeros(1, 4, 1, 1)
    a[:, 0], b[:, 1] = 1.0, 2.0
    assert float(spectral_angle(a, b)) == pytest.approx(np.pi / 2, abs=1e-6)


def test_library_and_latent_scale_are_set_once_and_never_averaged():
    f = FrozenFloat(3)
    assert not f.is_set
    f.set(torch.tensor([0.25, -1.5, 3.0]))
    assert f.is_set and torch.equal(f.value, torch.tensor([0.25, -1.5, 3.0]))
    assert not f.bits.is_floating_point()  # EMA copies integer buffers instead of averaging them
    m = HyperLDM(**TINY)
    b = _batch()
    m.train()
    m.loss(b)  # autoencoder step: the library comes from the batch
    assert torch.equal(m.library, b["endmembers"]) and not m.latent_std.is_set and int(m.steps_done) == 1
    loss, logs = m.loss(b)  # diffusion step: the latent scale is estimated and the autoencoder frozen
    assert "loss_simple" in logs and m.latent_std.is_set and float(m.latent_std.value) > 0
    assert not any(p.requires_grad for p in m.autoencoder.parameters())
    state = m.state_dict()
    again = HyperLDM(**TINY)
    again.load_state_dict(state)
    assert torch.equal(again.library, m.library) and torch.equal(again.latent_std.value, m.latent_std.value)


def test_predict_gives_several_distinct_cubes_and_their_mean():
    m = HyperLDM(**TINY)
    b = _batch()
    m.loss(b)
    m.eval()
    out = m.predict({"cond": b["cond"]}, steps=3, n_samples=3, generator=torch.Generator().manual_seed(0))
    assert out["samples"].shape == (2, 3, BANDS, 16, 16) and out["sample_1"].shape == (2, BANDS, 16, 16)
    torch.testing.assert_close(out["prediction"], out["samples"].mean(1))
    assert not torch.equal(out["sample_0"], out["sample_1"])
    assert (out["samples"] >= 0).all()  # non-negative library x softmax abundances x gain 1
    again = m.predict({"cond": b["cond"]}, steps=3, n_samples=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["samples"], out["samples"])


def test_bad_inputs_stop_with_one_clear_error():
    m = HyperLDM(**TINY)
    b = _batch()
    wrong = dict(b, image=b["image"][:, :-1])
    with pytest.raises(DataError, match=f"23 bands but the model \\(checkpoint\\) has {BANDS}"):
        m.loss(wrong)
    nan = b["image"].clone()
    nan[:, 5] = float("nan")
    with pytest.raises(DataError, match=r"NaN / inf in 1 band\(s\) \(0-based: \[5\]\)"):
        m.loss(dict(b, image=nan))
    with pytest.raises(DataError, match="library of shape"):
        m.loss(dict(b, endmembers=b["endmembers"][:-1]))
    with pytest.raises(DataError, match="not a multiple of 8"):
        m.predict({"cond": b["cond"][..., :12], "endmembers": b["endmembers"]})
    with pytest.raises(CheckpointError, match="no endmember library"):
        m.predict({"cond": b["cond"]})
    assert int(m.steps_done) == 0  # nothing ran


@pytest.mark.slow
def test_two_stage_training_on_procedural_cubes_beats_linear_regression():
    """Learning test: cubes mixed from 6 synthetic endmembers (near-pure regions), RGB = 3 of 32 bands. HyperLDM
    (AE then latent DDPM) is scored on held-out cubes: SAM <= 8 degrees and mPSNR above the per-pixel linear
    regression RGB -> HSI fitted on the training cubes (both over the bands not given as RGB)."""
    from medrs_diff.data.hsi_synthesis import LinearRGBToHSI
    from medrs_diff.metrics.spectral import spectral_scores

    torch.manual_seed(0)
    bands, k, rgb_bands = 32, 6, [24, 14, 5]
    lib = synthetic_endmembers(bands, k, 0)
    cubes = [mixed_cube(lib, 32, s, sharpness=12.0)[0] for s in range(36)]
    train, test = cubes[:32], cubes[32:]
    hsi = torch.tensor(np.stack(train))
    rgb = torch.tensor(np.stack([render_rgb(c, rgb_bands) for c in train]))
    m = HyperLDM(bands=bands, num_endmembers=k, latent_channels=4, codebook_size=64, ae_channels=16,
                 cond_channels=16, channels=(16, 32), num_head_channels=16, timesteps=100, pretrain_steps=400,
                 n_samples=2)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        idx = torch.randint(0, len(train), (8,), generator=g)
        loss, _ = m.loss({"image": hsi[idx], "cond": rgb[idx], "endmembers": torch.tensor(lib)}, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    ref = torch.tensor(np.stack(test))
    out = m.predict({"cond": torch.tensor(np.stack([render_rgb(c, rgb_bands) for c in test]))}, steps=20,
                    generator=torch.Generator().manual_seed(1))
    lin = LinearRGBToHSI().fit(np.concatenate([render_rgb(c, rgb_bands) for c in train], 1), np.concatenate(train, 1))
    base = torch.tensor(np.stack([lin.predict(render_rgb(c, rgb_bands)) for c in test]))
    keep = [b for b in range(bands) if b not in rgb_bands]
    score = lambda p: {key: float(v.mean()) for key, v in spectral_scores(  # noqa: E731
        p[:, keep], ref[:, keep], 1.0, include=("sam_deg", "mpsnr")).items()}
    ours, theirs = score(out["sample_0"]), score(base)
    assert ours["sam_deg"] <= 8.0, (ours, theirs)
    assert ours["mpsnr"] > theirs["mpsnr"], (ours, theirs)


def test_infer_on_an_rgb_geotiff_writes_hyperspectral_geotiffs_one_per_seed(tmp_path):
    from rasterio.transform import from_origin

    from medrs_diff.inference import Predictor
    from medrs_diff.io.geotiff import read_geotiff, write_geotiff

    m = HyperLDM(**TINY)
    b = _batch(n=1, size=32)
    m.loss(b)  # stores the library
    m.eval()
    rgb = b["cond"][0].numpy()
    src = tmp_path / "scene.tif"
    write_geotiff(rgb, src, crs="EPSG:32611", transform=from_origin(500000.0, 4100000.0, 20.0, 20.0))
    p = Predictor.from_method(m, scaling="none", patch_size=16)
    p.predict_files(src, tmp_path / "out", steps=2, seed=3)
    main = read_geotiff(tmp_path / "out" / "scene.tif")
    assert main.data.shape == (BANDS, 32, 32) and main.geometry.crs == read_geotiff(src).geometry.crs
    cubes = [read_geotiff(tmp_path / "out" / f"sample_{i}" / "scene.tif").data for i in range(2)]
    assert all(c.shape == (BANDS, 32, 32) and np.isfinite(c).all() for c in cubes)
    assert not np.array_equal(cubes[0], cubes[1])  # two seeds, two different cubes
    np.testing.assert_allclose(main.data, (cubes[0] + cubes[1]) / 2, atol=1e-5)
    with pytest.raises(DataError, match="channel"):  # a 4-band image is not the model's RGB
        p.predict_array(np.zeros((4, 32, 32), np.float32))


def test_fit_then_cli_infer_on_an_rgb_geotiff(tmp_path):
    """The phantom recipe for 3 steps (2 autoencoder + 1 diffusion) through ``medrs-diff fit``, then ``medrs-diff
    infer`` on an RGB GeoTIFF: one 48-band GeoTIFF per seed beside the mean, on the input's grid."""
    from rasterio.transform import from_origin

    from medrs_diff.cli import main
    from medrs_diff.io.geotiff import read_geotiff, write_geotiff

    assert main(["fit", "--config", "hyperldm_jasper_phantom", "--trainer.default_root_dir", str(tmp_path / "run"),
                 "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
                 "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
                 "--model.init_args.method.init_args.pretrain_steps", "2", "--data.init_args.phantoms", "4",
                 "--data.init_args.samples_per_epoch", "6", "--data.init_args.batch_size", "2",
                 "--data.init_args.root", str(tmp_path / "data")]) == 0
    ckpt = next((tmp_path / "run").rglob("last.ckpt"))
    lib = synthetic_endmembers(48, 6, 0)
    ref_cube = mixed_cube(lib, 40, 99)[0]
    rgb = render_rgb(ref_cube, [36, 21, 8])
    src = tmp_path / "in" / "field.tif"
    src.parent.mkdir()
    write_geotiff(rgb, src, crs="EPSG:32633", transform=from_origin(300000.0, 5000000.0, 10.0, 10.0))
    out = tmp_path / "out"
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), "--steps", "2",
                 "--seed", "0"]) == 0
    mean = read_geotiff(out / "field.tif")
    assert mean.data.shape == (48, 40, 40) and mean.geometry.transform == read_geotiff(src).geometry.transform
    seeds = [read_geotiff(out / f"sample_{i}" / "field.tif").data for i in range(3)]  # the recipe's n_samples: 3
    assert all(s.shape == (48, 40, 40) and np.isfinite(s).all() for s in seeds)
    assert not np.array_equal(seeds[0], seeds[2])
    assert read_geotiff(out / "uncertainty" / "field.tif").data.shape == (48, 40, 40)
    # the written cubes score with the spectral task against a reference cube on the same grid
    ref = tmp_path / "ref" / "field.tif"
    ref.parent.mkdir()
    write_geotiff(ref_cube, ref, crs="EPSG:32633", transform=from_origin(300000.0, 5000000.0, 10.0, 10.0))
    for folder in (out, out / "sample_1"):
        assert main(["evaluate", str(folder), str(ref.parent), "--task", "spectral", "--data-range", "1",
                     "--out", str(tmp_path / "scores" / folder.name)]) == 0
