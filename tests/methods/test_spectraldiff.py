"""SpectralDiff: spectral-only down-sampling, the feature taps, PCA on training pixels only (checked against
scikit-learn and against a test-pixel change), the fit phases, bad inputs, dominant-endmember labels and a
learning test (SpectralDiff above the SVM on a disjoint split of a noisy procedural cube)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medrs_diff.data import hsi_classes as C
from medrs_diff.errors import ArgumentError, DataError
from medrs_diff.methods import METHODS
from medrs_diff.methods.spectraldiff import SpectralDiff
from medrs_diff.nets.spectral_unet3d import SpectralUNet3D


def tiny(bands: int = 12, k: int = 3, **kw) -> SpectralDiff:
    args = dict(channels=(4, 8), spatial_kernel=3, feature_timesteps=(5, 100), feature_bins=2, pca_components=4,
                patch_size=5, dim=16, heads=2, diffusion_steps=2, pca_batches=1)
    args.update(kw)
    return SpectralDiff(bands=bands, num_classes=k, **args)


def test_registered():
    assert METHODS["spectraldiff"] is SpectralDiff
    assert SpectralDiff(bands=8, num_classes=2).io_spec.task == "class"


def test_unet_downsamples_only_the_spectral_axis():
    torch.manual_seed(0)
    net = SpectralUNet3D((4, 8, 8), spatial_kernel=3)
    x = torch.randn(2, 1, 13, 6, 7)  # 13 bands: padded to 16 and cropped back
    out, feats = net(x, torch.tensor([3, 40]), return_features=True)
    assert out.shape == x.shape
    # bottleneck at 16 / 4 bands, then 16 / 2, then 16; the spatial size never changes
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 4, 6, 7), (8, 8, 6, 7), (4, 16, 6, 7)]
    resampling = [m for m in net.modules() if isinstance(m, nn.Conv3d | nn.ConvTranspose3d) and m.stride != (1, 1, 1)]
    assert len(resampling) == 4 and all(m.stride == (2, 1, 1) for m in resampling)


def test_feature_shape_and_determinism():
    m = tiny()
    x = torch.randn(1, 12, 6, 6)
    f = m.features(x)
    assert f.shape == (1, m.feature_dim, 6, 6) == (1, 2 * (8 * 2 + 4 * 2), 6, 6)
    assert torch.equal(f, m.features(x))  # feature noise from feature_seed
    assert not torch.equal(f, m.features(x, torch.Generator().manual_seed(5)))
    full = tiny(feature_bins=None)
    assert full.features(x).shape[1] == full.feature_dim == 2 * (8 * 6 + 4 * 12)


def test_pca_matches_sklearn_and_ignores_test_pixels():
    from sklearn.decomposition import PCA

    m = tiny()
    torch.manual_seed(1)
    feats = torch.randn(m.feature_dim, 10, 10) * torch.linspace(0.1, 3, m.feature_dim)[:, None, None]
    train = np.zeros((10, 10), bool)
    train[:, :5] = True
    m.fit_pca(feats[:, torch.from_numpy(train)].T)
    rows = feats[:, torch.from_numpy(train)].T
    ref = PCA(4, whiten=True, svd_solver="full").fit(rows.double().numpy())
    z = m.project(feats[None])[0][:, torch.from_numpy(train)].T.double().numpy()
    zr = ref.transform(rows.double().numpy())
    np.testing.assert_allclose(np.abs(z), np.abs(zr), atol=1e-3)  # equal up to the sign of each component
    np.testing.assert_allclose(np.cov(z.T), np.eye(4), atol=1e-3)  # whitened on the training pixels
    state = {k: v.clone() for k, v in m.state_dict().items() if k.startswith("pca")}
    changed = feats.clone()
    changed[:, 3, 8] += 100.0  # a test pixel
    m.fit_pca(changed[:, torch.from_numpy(train)].T)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items() if k.startswith("pca"))
    changed[:, 3, 2] += 100.0  # a training pixel does change it
    m.fit_pca(changed[:, torch.from_numpy(train)].T)
    assert not torch.equal(state["pca_mean"], m.pca_mean)


def test_fit_phases_predict_and_validation():
    torch.manual_seed(0)
    m = tiny()
    batch = {"image": torch.randn(6, 12, 7, 7), "label": torch.tensor([0, 1, 2, 0, 1, 2])}
    with pytest.raises(ArgumentError, match="PCA is not fitted"):
        m.predict({"image": batch["image"]})
    m.train()
    phases = []
    for i in range(4):
        phases.append(m.phase)
        loss, logs = m.loss(batch)
        loss.backward()
        assert torch.isfinite(loss)
        if i == 0:  # mid-fit validation: a warned all-0 (not classified) map
            with pytest.warns(UserWarning, match="diffusion phase"):
                assert m.eval().predict({"image": batch["image"]})["prediction"].eq(-1).all()
            m.train()
    assert phases == ["diffusion", "diffusion", "pca", "classifier"]
    assert "ce" in logs and all(p.grad is None or not p.requires_grad for p in m.net.parameters())
    m.eval()
    out = m.predict({"image": batch["image"]})
    assert out["prediction"].shape == (6, 1, 7, 7) and out["probability"].shape == (6, 3, 7, 7)
    assert set(out["prediction"].unique().tolist()) <= {0.0, 1.0, 2.0}
    torch.testing.assert_close(out["probability"].sum(1), torch.ones(6, 7, 7))
    acc = m.validation_metrics(batch, out)["accuracy"]
    centre = out["prediction"][:, 0, 3, 3]
    assert float(acc) == pytest.approx(float((centre == batch["label"]).float().mean()))


def test_bad_inputs():
    m = tiny()
    with pytest.raises(DataError, match="12"):
        m.loss({"image": torch.randn(2, 10, 7, 7)})
    x = torch.randn(2, 12, 7, 7)
    x[:, 4] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        m.loss({"image": x})
    with pytest.raises(ArgumentError, match="feature_timesteps"):
        tiny(feature_timesteps=(5, 500))
    with pytest.raises(ArgumentError, match="patch_size"):
        tiny(patch_size=4)
    with pytest.raises(DataError, match="components"):
        m.fit_pca(torch.randn(3, m.feature_dim))


def test_dominant_labels_and_splits():
    a = np.array([[[0.6, 0.3]], [[0.3, 0.35]], [[0.1, 0.35]]])  # (3, 1, 2): pixel 2 has no majority
    np.testing.assert_array_equal(C.dominant_labels(a), [[1, 0]])
    np.testing.assert_array_equal(C.dominant_labels(a, min_abundance=0.3), [[1, 2]])
    labels = np.random.default_rng(0).integers(1, 4, (30, 30))
    tr, te = C.random_split(labels, 0.5, seed=1)
    assert not (tr & te).any() and (tr | te).all() and 0.4 < te.mean() < 0.6
    picked = C.sample_per_class(tr, labels, 7, seed=0)
    assert (picked <= tr).all() and np.bincount(labels[picked]).tolist() == [0, 7, 7, 7]
    sc = C.mixed_cube(C.smooth_endmembers(3, 10), (20, 20), noise=0.0, dominance=0.7)
    np.testing.assert_allclose(sc.abundances.sum(0), 1, atol=1e-5)
    np.testing.assert_allclose(np.einsum("khw,kb->bhw", sc.abundances, sc.endmembers), sc.cube, atol=1e-5)
    np.testing.assert_array_equal(sc.labels, sc.abundances.argmax(0) + 1)


def test_shared_scenes_in_column_major_order(shared_data):
    import scipy.io

    root = shared_data / "hyperspectral_unmixing"
    sam = C.load_unmixing_scene(C.scene_path(root, "samson"))
    raw = scipy.io.loadmat(C.scene_path(root, "samson"))
    assert sam.cube.shape == (156, 95, 95) and sam.classes == ("soil", "tree", "water")
    p = 95 * 7 + 3  # README: Y[:, p] <-> S_GT[p % 95, p // 95]
    np.testing.assert_allclose(sam.cube[:, p % 95, p // 95], raw["Y"][:, p], rtol=1e-6)
    np.testing.assert_array_equal(sam.labels[p % 95, p // 95], raw["S_GT"][p % 95, p // 95].argmax() + 1
                                  if raw["S_GT"][p % 95, p // 95].max() >= 0.5 else 0)
    jas = C.load_unmixing_scene(C.scene_path(root, "jasper"))
    assert jas.cube.shape == (198, 100, 100) and 1.0 < jas.cube.max() < 1.1  # Y / maxValue
    assert set(np.unique(jas.labels)) == {0, 1, 2, 3, 4}


@pytest.mark.slow
def test_spectraldiff_beats_svm_on_a_disjoint_split(one_thread):
    """Noisy per-pixel spectra (noise = the mean endmember level): the SVM sees one pixel, SpectralDiff a patch."""
    from medrs_diff.evaluation.hsi_classification import ExperimentConfig, run_experiment

    sc = C.mixed_cube(C.smooth_endmembers(4, 16, seed=1), (40, 40), seed=0, dominance=0.6, noise=1.0)
    cfg = ExperimentConfig(patch_size=7, diffusion_steps=100, diffusion_patch=9, channels=(8, 16), feature_bins=4,
                           pca_components=16, classifier_epochs=40, train_per_class=20, block_size=10,
                           feature_timesteps=(5, 50, 200), models=("spectraldiff", "svm"))
    r = run_experiment(sc.cube, sc.labels, cfg, ("disjoint",))["disjoint"]
    oa = {k: v["overall_accuracy"] for k, v in r["models"].items()}
    assert r["n_test"] > 200
    assert oa["spectraldiff"] > oa["svm"] + 0.05, oa


def test_table_pipeline_fits_the_pca_on_the_training_region_only():
    """fit_head (the table's and the learning test's path): a test pixel's features never reach the PCA."""
    from medrs_diff.evaluation.hsi_classification import ExperimentConfig, fit_head, make_split

    sc = C.mixed_cube(C.smooth_endmembers(3, 12), (36, 36), seed=3)
    cfg = ExperimentConfig(patch_size=5, block_size=9, train_per_class=5, classifier_epochs=1, pca_components=4)
    region, train, test = make_split(sc.labels, cfg)
    assert region.any() and test.any() and not (region & test).any()
    m = tiny()
    m._classifier_init = {k: v.clone() for k, v in m.classifier.state_dict().items()}
    feats = torch.randn(m.feature_dim, 36, 36)
    fit_head(m, feats, sc.labels, region, train, cfg)
    before = m.pca_basis.clone()
    y, x = np.argwhere(test)[0]
    feats[:, y, x] += 50.0
    fit_head(m, feats, sc.labels, region, train, cfg)
    assert torch.equal(before, m.pca_basis)
    y, x = np.argwhere(region)[0]
    feats[:, y, x] += 50.0
    fit_head(m, feats, sc.labels, region, train, cfg)
    assert not torch.equal(before, m.pca_basis)
