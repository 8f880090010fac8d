"""DDBM as a method: it learns S1 -> S2 on phantoms (beats the mean-spectrum predictor), its ensemble and argument
checks, and the whole path `medrs-diff fit` -> checkpoint -> `medrs-diff infer` on a georeferenced GeoTIFF (S1 dB in,
S2 DN out on the input's grid, through the data module's recorded target scaling)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.transform import from_origin

from medrs_diff.cli import main
from medrs_diff.datamodules.translation import Sar2OptDataModule
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.inference.predictor import Predictor
from medrs_diff.io.geotiff import read_geotiff, write_geotiff
from medrs_diff.methods import DDBM
from medrs_diff.train.checkpoint import load_method_from_checkpoint

sys.path.insert(0, str(Path(__file__).parent))

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]

TINY = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
            norm_num_groups=8)


def _rmse(p: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((p - ref) ** 2).mean().sqrt())


@pytest.mark.slow
def test_ddbm_learns_sar_to_optical_on_phantoms():
    """500 steps on 16 x 16 crops of 4 phantom scenes; on the held-out scene the paper's sampler (VP, churn 0.33, mean
    of 4 chains) and the ODE alone beat the mean training spectrum by >= 25 % RMSE (measured: 0.10 and 0.08 vs 0.18).
    A wrong c_skip / c_out, a bridge not pinned at y or a wrong drift would leave samples far off."""
    from _learning import fit

    torch.manual_seed(0)
    dm = Sar2OptDataModule(phantoms=5, phantom_size=32, patch_size=16, test_scenes=[0], samples_per_epoch=8000,
                           batch_size=16)
    dm.setup()
    m = DDBM(in_channels=2, out_channels=4, bridge="vp", sampling_steps=10, **TINY)
    fit(m, dm, 500, 3e-3)
    batch = next(iter(dm.val_dataloader()))
    x0 = batch["image"]
    mean = torch.stack([torch.from_numpy(s[2]).mean((1, 2)) for s in dm.train_dataset.scenes]).mean(0)
    baseline = _rmse(mean.view(1, -1, 1, 1).expand_as(x0), x0)
    sde = m.predict(batch, n_samples=4, generator=torch.Generator().manual_seed(0))
    m.churn_step_ratio = 0.0
    ode = m.predict(batch, n_samples=1)
    assert _rmse(sde["prediction"], x0) < 0.75 * baseline
    assert _rmse(ode["prediction"], x0) < 0.75 * baseline
    assert float(sde["uncertainty"].mean()) > 0 and float(ode["uncertainty"].abs().max()) == 0


def test_ensemble_seeding_endpoints_and_refusals():
    torch.manual_seed(0)
    cond = torch.rand(2, 6, 16, 16) * 2 - 1
    m = DDBM(in_channels=6, out_channels=4, endpoint="select", endpoint_channels=[2, 3, 4, 5], sampling_steps=3,
             **TINY).eval()
    assert torch.equal(m.endpoint(cond), cond[:, 2:6])  # pinned at the cloudy bands themselves
    a = m.predict({"cond": cond}, n_samples=3, generator=torch.Generator().manual_seed(1))
    b = m.predict({"cond": cond}, n_samples=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["prediction"], b["prediction"]) and a["prediction"].shape == (2, 4, 16, 16)
    assert float(a["uncertainty"].min()) >= 0 and float(a["uncertainty"].mean()) > 0
    assert float(a["prediction"].abs().max()) <= 1.0
    loss, logs = m.loss({"cond": cond, "image": torch.rand(2, 4, 16, 16) * 2 - 1}, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and "xs_mse" in logs
    p = DDBM(in_channels=2, out_channels=4, **TINY)  # project: the 1x1 map gets gradients through the bridge
    p.loss({"cond": cond[:, :2], "image": cond[:, 2:]})[0].backward()
    assert float(p.project.weight.grad.abs().sum()) > 0
    with pytest.raises(DataError, match="target"):
        m.loss({"cond": cond, "image": torch.zeros(2, 3, 16, 16)})
    with pytest.raises(DataError, match="input channel"):
        m.predict({"cond": cond[:, :4]})
    with pytest.raises(ArgumentError, match="steps"):
        m.predict({"cond": cond}, steps=0)
    # the paper's defaults: VP beta_d 2, beta_min 0.1 on (1e-4, 1]; VE sigma in (0.002, 80]; sigma_data 0.5, 40 steps
    vp, ve = DDBM(**TINY), DDBM(bridge="ve", **TINY)
    assert (vp.process.t_min, vp.process.t_max, vp.process.beta_d, vp.process.beta_min) == (1e-4, 1.0, 2.0, 0.1)
    assert (ve.process.t_min, ve.process.t_max, ve.precond.sigma_data) == (0.002, 80.0, 0.5)
    assert (vp.sampling_steps, vp.churn_step_ratio, vp.guidance) == (40, 0.33, 1.0)
    out = ve.eval().predict({"cond": cond[:, :2]}, steps=2, generator=torch.Generator().manual_seed(0))
    assert out["prediction"].shape == (2, 4, 16, 16) and bool(torch.isfinite(out["prediction"]).all())
    for kw, what in ((dict(bridge="vx"), "bridge"), (dict(endpoint="select", endpoint_channels=[0, 1]), "endpoint"),
                     (dict(churn_step_ratio=1.0), "churn"), (dict(sigma_min=2.0, bridge="vp"), "sigma"),
                     (dict(endpoint_channels=[0, 1, 0, 1]), "endpoint_channels")):
        with pytest.raises(ArgumentError, match=what):
            DDBM(in_channels=2, out_channels=4, **{**TINY, **kw})


FIT = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.check_val_every_n_epoch", "null",
       "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0", "--trainer.accelerator", "cpu",
       "--trainer.devices", "1", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
       "--model.init_args.val_steps", "2", "--model.init_args.warmup_steps", "1", "--data.init_args.batch_size", "2",
       "--data.init_args.phantoms", "3", "--data.init_args.samples_per_epoch", "4"]


def test_fit_checkpoint_and_infer_a_geotiff_in_target_units(tmp_path, capsys):
    assert main(["fit", "--config", "ddbm_sar2opt_bigearthnet_phantom", "--trainer.default_root_dir",
                 str(tmp_path / "run"), *FIT]) == 0
    (ckpt,) = (tmp_path / "run").rglob("last.ckpt")
    method = load_method_from_checkpoint(ckpt)
    assert isinstance(method, DDBM) and method.project is not None and method.sampling_steps == 10
    rng = np.random.default_rng(0)
    s1 = np.stack([rng.uniform(-20, -5, (40, 40)), rng.uniform(-27, -12, (40, 40))]).astype(np.float32)
    transform = from_origin(404400, 5342400, 10, 10)
    write_geotiff(s1, tmp_path / "s1.tif", crs="EPSG:32633", transform=transform)
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(tmp_path / "s1.tif"), "--output",
                 str(tmp_path / "s2.tif"), "--steps", "2", "--n-samples", "2", "--device", "cpu", "--no-progress",
                 "--seed", "1", "--tile", "40"]) == 0
    out = read_geotiff(tmp_path / "s2.tif")
    assert out.data.shape == (4, 40, 40)
    assert str(out.geometry.crs) == "EPSG:32633" and out.geometry.transform == transform
    assert out.data.min() >= 0 and out.data.max() <= 1e4 and out.data.max() > 100  # S2 DN, not dB or model space
    p = Predictor.from_checkpoint(ckpt)
    assert p.scaling == "s1_db" and p.target_scaling == "reflectance"
    arr = p.predict_array(s1, steps=2, n_samples=2, seed=1, case="s1.tif", tile=40)
    np.testing.assert_allclose(arr["prediction"], out.data, atol=1e-2)  # the file: model output in DN
    write_geotiff(s1[:1], tmp_path / "vv.tif", crs="EPSG:32633", transform=transform)
    capsys.readouterr()
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(tmp_path / "vv.tif"), "--output",
                 str(tmp_path / "bad.tif"), "--steps", "2", "--device", "cpu", "--no-progress"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vv.tif" in err[0] and "2" in err[0], err  # VV alone: the model takes VV and VH
    assert not (tmp_path / "bad.tif").exists()


def test_regression_baseline_with_other_output_channels():
    """The table's baseline: RegressionUNet with 4 outputs from 6 inputs adds the named input channels."""
    from medrs_diff.methods import RegressionUNet

    m = RegressionUNet(in_channels=6, out_channels=4, channels=(8, 16), num_res_units=1, skip_channels=[2, 3, 4, 5])
    for p in m.net.parameters():
        torch.nn.init.zeros_(p)
    cond = torch.rand(2, 6, 16, 16) * 2 - 1
    assert torch.equal(m.predict({"cond": cond})["prediction"], cond[:, 2:6])
    plain = RegressionUNet(in_channels=2, out_channels=4, channels=(8, 16), num_res_units=1, residual=False)
    assert plain.predict({"cond": cond[:, :2]})["prediction"].shape == (2, 4, 16, 16)
    with pytest.raises(ArgumentError, match="skip_channels"):
        RegressionUNet(in_channels=2, out_channels=4)  # residual needs one input channel per output
    with pytest.raises(DataError, match="target"):
        plain.loss({"cond": cond[:, :2], "image": cond[:, :2]})


def test_cloud_checkpoint_infers_an_s1_plus_s2_stack(tmp_path):
    """The cloud model reads [VV, VH dB, cloudy B04 B03 B02 B08 DN] (the data-dependent ``s1_db_s2_dn`` scaling) and
    writes clear DN; the bridge starts at the cloudy bands, so an untrained model stays near them."""
    assert main(["fit", "--config", "ddbm_cloud_sen12mscr_phantom", "--trainer.default_root_dir",
                 str(tmp_path / "run"), *FIT]) == 0
    (ckpt,) = (tmp_path / "run").rglob("last.ckpt")
    rng = np.random.default_rng(1)
    stack = np.concatenate([rng.uniform(-20, -5, (2, 32, 32)), rng.uniform(500, 3000, (4, 32, 32))]).astype(np.float32)
    write_geotiff(stack, tmp_path / "stack.tif", crs="EPSG:32633", transform=from_origin(0, 320, 10, 10))
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(tmp_path / "stack.tif"), "--output",
                 str(tmp_path / "clear.tif"), "--steps", "2", "--device", "cpu", "--no-progress", "--tile", "32"]) == 0
    out = read_geotiff(tmp_path / "clear.tif")
    assert out.data.shape == (4, 32, 32) and str(out.geometry.crs) == "EPSG:32633"
    assert Predictor.from_checkpoint(ckpt).scaling == "s1_db_s2_dn"
    assert 0 <= out.data.min() and out.data.max() <= 1e4 and 300 < float(np.median(out.data)) < 5000  # DN
