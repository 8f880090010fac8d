"""AnoDDPM through the real CLI: ``fit`` the phantom recipe a few steps, ``infer`` writes the anomaly map and the
reconstruction (and the mask with ``--threshold``) on each input's grid, ``evaluate --task anomaly`` scores them
with a threshold chosen on a validation folder."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medrs_diff.cli import main
from medrs_diff.data.brain_phantoms import make_brain_anomaly_phantoms

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]

FIT = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.check_val_every_n_epoch", "null",
       "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0", "--trainer.accelerator", "cpu",
       "--trainer.devices", "1", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
       "--model.init_args.val_steps", "2", "--model.init_args.warmup_steps", "1", "--data.init_args.batch_size", "2",
       "--data.init_args.phantoms", "4", "--data.init_args.val_phantoms", "2",
       "--model.init_args.method.init_args.lam", "20"]


def test_fit_infer_evaluate(tmp_path):
    assert main(["fit", "--config", "anoddpm_brain_phantom", "--trainer.default_root_dir", str(tmp_path / "run"),
                 "--data.init_args.root", str(tmp_path / "data"), *FIT]) == 0
    (ckpt,) = (tmp_path / "run").rglob("last.ckpt")
    recs = make_brain_anomaly_phantoms(tmp_path / "cases", n_healthy=0, n_lesion=4, size=32, seed=5)
    for split, part in (("val", recs["lesion"][:2]), ("test", recs["lesion"][2:])):
        for sub in ("images", "labels"):
            (tmp_path / split / sub).mkdir(parents=True)
        for r in part:
            name = r["image"].rsplit("/", 1)[1].replace("_image", "")
            (tmp_path / split / "images" / name).write_bytes(open(r["image"], "rb").read())
            (tmp_path / split / "labels" / name).write_bytes(open(r["label"], "rb").read())
    common = ["--checkpoint", str(ckpt), "--device", "cpu", "--no-progress", "--seed", "1"]
    assert main(["infer", *common, "--input", str(tmp_path / "val" / "images"), "--output", str(tmp_path / "vo")]) == 0
    names = sorted(p.name for p in (tmp_path / "val" / "images").iterdir())
    for n in names:  # anomaly map (main output) and reconstruction on the input's grid; no mask without threshold
        img = nib.load(tmp_path / "val" / "images" / n)
        for out in (tmp_path / "vo" / n, tmp_path / "vo" / "reconstruction" / n):
            o = nib.load(out)
            assert o.shape[:2] == img.shape[:2] and np.allclose(o.affine, img.affine)
        assert np.all(np.asarray(nib.load(tmp_path / "vo" / n).dataobj) >= 0)
    assert not (tmp_path / "vo" / "mask").exists()
    val = [str(tmp_path / "vo"), str(tmp_path / "val" / "labels")]
    assert main(["evaluate", *val, "--task", "anomaly", "--threshold-from", *val, "--out", str(tmp_path / "ve")]) == 0
    tau = json.loads(next((tmp_path / "ve").glob("*.json")).read_text())["settings"]["threshold"]
    assert main(["infer", *common, "--input", str(tmp_path / "test" / "images"), "--output", str(tmp_path / "to"),
                 "--threshold", str(tau), "--panels"]) == 0
    assert len(list((tmp_path / "to" / "panels").glob("*.png"))) == 2
    for n in sorted(p.name for p in (tmp_path / "test" / "images").iterdir()):
        amap = np.asarray(nib.load(tmp_path / "to" / n).dataobj)
        mask = np.asarray(nib.load(tmp_path / "to" / "mask" / n).dataobj)
        assert np.array_equal(mask.astype(bool), amap >= tau)
    assert main(["evaluate", str(tmp_path / "to"), str(tmp_path / "test" / "labels"), "--task", "anomaly",
                 "--anomaly-threshold", str(tau), "--out", str(tmp_path / "te")]) == 0
    agg = json.loads(next((tmp_path / "te").glob("*.json")).read_text())["aggregate"]["all"]
    assert 0.0 <= agg["auroc"] <= 1.0 and agg["threshold"] == pytest.approx(tau)
    # a threshold for a method without one, and a non-finite one, are refused before any compute
    assert main(["infer", *common, "--input", str(tmp_path / "test" / "images"), "--output", str(tmp_path / "x"),
                 "--threshold", "nan"]) == 2
