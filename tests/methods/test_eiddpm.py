"""EI-DDPM: shapes (2-D, 3-D), the evidential loss against hand-computed values, gradients into every branch,
EIL and CDO, the reliability parameters, the declared outputs written by infer on a BraTS case, refusals, and
the learning test (reliability learned on phantoms where one modality is pure noise)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medrs_diff.cli import main
from medrs_diff.errors import ArgumentError, CheckpointError, DataError
from medrs_diff.inference import Predictor
from medrs_diff.methods import EIDDPM, METHODS
from medrs_diff.methods.eiddpm import dirichlet_kl, evidential_ce
from medrs_diff.metrics import dice, expected_calibration_error
from medrs_diff.nets.evidential import dirichlet_opinion
from medrs_diff.train.checkpoint import build_method, method_config

TINY = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
            norm_num_groups=8, timesteps=100)
MODS = ["t1n", "t1c", "t2w", "t2f"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(seed: int = 0, **kw) -> EIDDPM:
    """A tiny EI-DDPM with every weight perturbed (a fresh UNet's output convolution is zero: eps = 0 whatever
    the input, which would make outputs blind to the modalities)."""
    torch.manual_seed(seed)
    m = EIDDPM(**{**TINY, **kw})
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, w in m.named_parameters():
            if not name.startswith("discounting"):
                w.add_(0.1 * torch.randn(w.shape, generator=g))
    return m


# -- the evidential loss ------------------------------------------------------------------------------
def test_evidential_ce_and_kl_against_hand_computed_values():
    alpha = torch.tensor([2.0, 1.0]).reshape(1, 2, 1)
    y0, y1 = torch.tensor([1.0, 0.0]).reshape(1, 2, 1), torch.tensor([0.0, 1.0]).reshape(1, 2, 1)
    # E[-log p_k] under Dir(alpha) = ψ(S) - ψ(alpha_k): ψ(3) - ψ(2) = 1/2 and ψ(3) - ψ(1) = 1 + 1/2
    assert float(evidential_ce(alpha, y0)) == pytest.approx(0.5, abs=1e-6)
    assert float(evidential_ce(alpha, y1)) == pytest.approx(1.5, abs=1e-6)
    # all evidence on the true class: alpha~ = (1, 1), KL to Dir(1, 1) is 0
    assert float(dirichlet_kl(alpha, y0)) == pytest.approx(0.0, abs=1e-6)
    # wrong-class evidence 2: alpha~ = (1, 3); KL(Dir(1, 3) || Dir(1, 1)) = ln Γ(4) - ln Γ(1) Γ(3) + 2 (ψ(3) - ψ(4))
    assert float(dirichlet_kl(torch.tensor([1.0, 3.0]).reshape(1, 2, 1), y0)) == pytest.approx(
        math.log(6) - math.log(2) - 2 / 3, abs=1e-6)


# -- shapes, loss, gradients -------------------------------------------------------------------------
@pytest.mark.parametrize(("dims", "classes"), [(2, 2), (2, 4), (3, 3)])
def test_predict_shapes_and_ranges(dims, classes):
    m = _tiny(0, in_channels=3, spatial_dims=dims, num_classes=classes).eval()
    size = (16, 16) if dims == 2 else (8, 8, 8)
    out = m.predict({"image": torch.randn(2, 3, *size)}, sampler="dpm_solver_pp", steps=2, n_samples=2,
                    generator=torch.Generator().manual_seed(0))
    assert set(m.io_spec.outputs) <= set(out)
    one, per_mod = (2, 1, *size), (2, 3, *size)
    assert out["prediction"].shape == one and out["uncertainty"].shape == one and out["conflict"].shape == one
    assert out["reliability"].shape == per_mod and out["branch_uncertainty"].shape == per_mod
    assert out["probability"].shape == ((2, 1, *size) if classes == 2 else (2, classes, *size))
    if classes > 2:
        assert torch.allclose(out["probability"].sum(1), torch.ones(2, *size), atol=1e-5)
    for key in ("prediction", "branch_prediction_0", "branch_prediction_1", "branch_prediction_2"):
        assert out[key].shape == one and set(out[key].unique().tolist()) <= set(range(classes))
    for key in ("uncertainty", "conflict", "reliability", "branch_uncertainty"):
        assert bool(((out[key] >= 0) & (out[key] <= 1)).all()), key
    assert bool((out["branch_uncertainty"] > 0).all())  # Dirichlet opinions always keep some ignorance


def test_a_single_fully_reliable_branch_is_its_own_fusion():
    """M = 1 and beta ~ 1: Dempster's rule has nothing to combine, so the fused label is the branch's label."""
    m = _tiny(1, in_channels=1, num_classes=3, reliability_init=0.999999).eval()
    out = m.predict({"image": torch.randn(2, 1, 16, 16)}, sampler="ddim", steps=3, n_samples=2,
                    generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["prediction"], out["branch_prediction_0"])
    assert torch.allclose(out["uncertainty"], out["branch_uncertainty"], atol=1e-4)
    assert float(out["conflict"].abs().max()) < 1e-12


def test_fusion_is_the_discounted_dempster_combination_of_the_branch_opinions():
    m = _tiny(2, in_channels=2, num_classes=2)
    with torch.no_grad():
        m.discounting.theta.copy_(torch.tensor([[0.2, 0.1], [-0.1, 0.05]]))
    beta = m.reliability.detach()
    evidence = torch.rand(3, 2, 2, 5, 5) * 4
    masses = m._masses(evidence)
    fused, conflict = m.fuse(masses)
    # by hand for K = 2: discount each source (Mercier), then Dempster
    want = []
    for s in range(2):
        b, u = dirichlet_opinion(evidence[:, s])
        ma, mb, mo = b[:, 0], b[:, 1], u[:, 0]
        ba, bb = beta[s]  # {a} keeps beta_b of its mass (context b moves it to {a, b}); {b} keeps beta_a
        want.append(torch.stack([torch.zeros_like(ma), ma * bb, mb * ba, mo + ma * (1 - bb) + mb * (1 - ba)], 1))
    (a1, b1, o1), (a2, b2, o2) = ([w[:, i] for i in (1, 2, 3)] for w in want)
    kappa = a1 * b2 + b1 * a2
    ref = torch.stack([a1 * a2 + a1 * o2 + o1 * a2, b1 * b2 + b1 * o2 + o1 * b2, o1 * o2], 1) / (1 - kappa)[:, None]
    assert torch.allclose(fused[:, 1:], ref, atol=1e-6)
    assert torch.allclose(conflict[:, 0], kappa, atol=1e-6)


def test_loss_is_finite_and_gradients_reach_every_branch_eil_and_cdo():
    m = _tiny(3, in_channels=3, num_classes=3, reliability_warmup=5)
    batch = {"image": torch.randn(2, 3, 16, 16), "label": torch.randint(0, 3, (2, 1, 16, 16)).float()}
    g = torch.Generator().manual_seed(0)
    loss, logs = m.loss(batch, g)  # step 0: the CDO waits for the warm-up
    loss.backward()
    assert torch.isfinite(loss) and set(logs) == {"loss_noise", "loss_evidential"}
    assert m.discounting.theta.grad is None and int(m.steps_seen) == 1
    m.zero_grad()
    m.steps_seen.fill_(5)
    loss, _ = m.loss(batch, g)
    loss.backward()
    assert torch.isfinite(loss)
    for i in range(3):
        grads = [p.grad for p in m.branches[i].parameters()]
        assert all(gr is not None and bool(torch.isfinite(gr).all()) for gr in grads)
        assert sum(int(gr.abs().sum() > 0) for gr in grads) == len(grads), f"branch {i}"
        assert float(m.evidence[i].proj.weight.grad.abs().sum()) > 0, f"EIL {i}"
    theta = m.discounting.theta.grad
    assert theta is not None and bool((theta.abs() > 0).all())  # every modality x class reliability learns


def test_without_the_evidential_term_only_the_noise_losses_train():
    m = _tiny(4, in_channels=2, evidential_weight=0.0)
    loss, logs = m.loss({"image": torch.randn(2, 2, 16, 16), "label": torch.randint(0, 4, (2, 1, 16, 16)).float()})
    loss.backward()
    assert set(logs) == {"loss_noise"} and all(e.proj.weight.grad is None for e in m.evidence)


def test_reliability_parameters():
    m = EIDDPM(in_channels=4, num_classes=4, reliability_init=0.8, reliability_gain=10.0, **TINY)
    assert m.reliability.shape == (4, 4) and torch.allclose(m.reliability, torch.full((4, 4), 0.8))
    assert torch.allclose(m.discounting.theta, torch.full((4, 4), math.log(4) / 10))  # logit(0.8) / gain
    with torch.no_grad():
        m.discounting.theta[2, 1] += 0.1  # the gain: a step of 0.1 moves the logit by 1
    assert float(m.reliability.detach()[2, 1]) == pytest.approx(1 / (1 + math.exp(-(math.log(4) + 1))), abs=1e-6)
    # the reliability map: sum_k beta[m, k] p_k of the fused probabilities
    m = _tiny(5, in_channels=2, num_classes=3).eval()
    out = m.predict({"image": torch.randn(1, 2, 16, 16)}, sampler="ddim", steps=2, n_samples=1,
                    generator=torch.Generator().manual_seed(0))
    want = torch.einsum("mk,bkhw->bmhw", m.reliability, out["probability"])
    assert torch.allclose(out["reliability"], want, atol=1e-6)
    again = build_method(method_config(m))
    assert type(again) is EIDDPM and again.hparams() == m.hparams() and METHODS["eiddpm"] is EIDDPM


def test_bad_arguments_and_labels():
    for kw, msg in [
        (dict(in_channels=0), "in_channels: must be the number of modalities"),
        (dict(evidential_weight=-1.0), "evidential_weight: must be a number >= 0"),
        (dict(kl_anneal_steps=0), "kl_anneal_steps: must be an integer >= 1"),
        (dict(reliability_warmup=-1), "reliability_warmup: must be an integer >= 0"),
        (dict(evidence_init=float("nan")), "evidence_init: must be a number >= 0"),
        (dict(evidence_steps=0), "evidence_steps: must be an integer >= 1"),
        (dict(reliability_gain=0.0), "gain: must be a number > 0"),
        (dict(reliability_init=1.5), "init: initial reliability must lie in"),
        (dict(evidence_activation="tanh"), "activation: unknown evidence activation 'tanh'"),
        (dict(num_classes=8), "num_classes: evidential fusion takes 2 .. 6 classes"),
    ]:
        with pytest.raises(ArgumentError, match=msg):
            EIDDPM(**{**TINY, **kw})
    m = EIDDPM(in_channels=2, num_classes=3, **TINY)
    with pytest.raises(DataError, match="label"):
        m.loss({"image": torch.randn(1, 2, 16, 16), "label": torch.full((1, 1, 16, 16), 4.0)})
    with pytest.raises(DataError, match="expects 2 input channel"):
        m.predict({"image": torch.randn(1, 3, 16, 16)})
    with pytest.raises(ArgumentError, match="not multiples of 2"):
        m.predict({"image": torch.randn(1, 2, 15, 16)})




def test_panel_shows_each_modality_each_branch_the_fused_mask_and_the_uncertainty(tmp_path):
    from PIL import Image

    from medrs_diff.viz.panels import save_panel

    m = _tiny(8, in_channels=4, num_classes=4).eval()
    batch = {"image": torch.randn(2, 4, 16, 16), "label": torch.randint(0, 4, (2, 1, 16, 16)).float()}
    out = m.predict(batch, sampler="ddim", steps=2, n_samples=1, generator=torch.Generator().manual_seed(0))
    cols, shared = m.panel_columns(batch, out)
    assert list(cols) == [*(f"modality {i}" for i in range(4)), *(f"branch {i}" for i in range(4)), "prediction",
                          "reference", "uncertainty"]
    assert torch.equal(cols["modality 2"], batch["image"][:, 2:3]) and cols["branch 3"] is out["branch_prediction_3"]
    assert set(shared) == {"prediction", "reference", *(f"branch {i}" for i in range(4))}
    named, _ = m.panel_columns({**batch, "modalities": MODS}, out)  # infer passes the case's modality names
    assert list(named)[:8] == [*MODS, *(f"branch {n}" for n in MODS)]
    assert named["branch t2w"] is out["branch_prediction_2"]
    path = save_panel(tmp_path / "p.png", cols, max_rows=2, shared=shared)
    w, h = Image.open(path).size
    assert w / h == pytest.approx(11 / 2, rel=0.05)  # 11 columns, 2 rows of 2.4-inch cells


# -- infer on a BraTS case ----------------------------------------------------------------------------
SHAPE = (16, 16, 5)
AFFINE = np.array([[-1.0, 0, 0, 20.0], [0, -1.0, 0, 15.0], [0, 0, 2.0, -6.0], [0, 0, 0, 1]])
FAST = ["--steps", "2", "--n-samples", "1", "--device", "cpu", "--no-progress", "--tile", "16", "16"]
BRANCHES = [f"branch_prediction_{i}" for i in range(4)]


def _case(root: Path, case: str, mods: list[str] = MODS, skip: tuple[str, ...] = ()) -> Path:
    """A BraTS 2023 case folder ``<root>/<case>/<case>-<m>.nii.gz`` (and its seg, which infer must leave alone)."""
    rng = np.random.default_rng(len(case))
    folder = root / case
    folder.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(mods):
        if m not in skip:
            vol = (100.0 * (i + 1) + 10 * rng.standard_normal(SHAPE)).astype(np.float32)
            nib.save(nib.Nifti1Image(vol, AFFINE), str(folder / f"{case}-{m}.nii.gz"))
    seg = np.zeros(SHAPE, np.uint8)
    seg[4:10, 4:10, 1:4] = 2
    nib.save(nib.Nifti1Image(seg, AFFINE), str(folder / f"{case}-seg.nii.gz"))
    return folder


def _checkpoint(method: EIDDPM, path: Path, **data) -> Path:
    """A minimal ``medrs-diff fit`` checkpoint of ``method`` trained on 2-D slices of BraTS-layout cases."""
    data = {"scaling": "zscore", "patch_size": None, "modalities": MODS, "layout": "brats", "slices": True,
            "label_values": [0, 1, 2, 4], "num_classes": 4, **data}
    torch.save({"state_dict": {f"method.{k}": v for k, v in method.state_dict().items()},
                "hyper_parameters": {"method": method_config(method)},
                "datamodule_hyper_parameters": data}, path)
    return path


@pytest.fixture(scope="module")
def brats_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eiddpm_ckpt")
    return _checkpoint(_tiny(6, in_channels=4, num_classes=4).eval(), tmp / "ei.ckpt")


def _infer(capsys, ckpt: Path, src: Path, out: Path) -> tuple[int, list[str]]:
    rc = main(["infer", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), *FAST])
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_infer_writes_every_output_of_a_brats_case_on_its_grid(brats_ckpt, tmp_path, capsys):
    src = _case(tmp_path / "cases", "c1")
    start = time.perf_counter()
    rc, err = _infer(capsys, brats_ckpt, src, tmp_path / "out")
    seconds = time.perf_counter() - start
    assert rc == 0, err
    out = tmp_path / "out"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.nii.gz"))
    assert files == sorted(["c1.nii.gz", *(f"{k}/c1.nii.gz" for k in (
        "uncertainty", "probability", "conflict", "reliability", "branch_uncertainty", *BRANCHES))])
    img = {p: nib.load(str(out / p)) for p in files}
    for p, im in img.items():  # every output on the case's grid
        np.testing.assert_array_equal(im.affine, AFFINE)
        assert im.shape[:3] == SHAPE, p
    # label maps (fused and per branch) in the data's label values; the per-modality maps one channel per modality
    for p in ["c1.nii.gz", *(f"{k}/c1.nii.gz" for k in BRANCHES)]:
        assert img[p].shape == SHAPE and set(np.unique(np.asarray(img[p].dataobj)).tolist()) <= {0, 1, 2, 4}, p
    for k in ("reliability", "branch_uncertainty", "probability"):
        assert img[f"{k}/c1.nii.gz"].shape == (*SHAPE, 4), k
    for k in ("uncertainty", "conflict"):
        assert img[f"{k}/c1.nii.gz"].shape == SHAPE, k
    u = np.asarray(img["branch_uncertainty/c1.nii.gz"].dataobj)
    assert bool(((u > 0) & (u <= 1)).all())
    assert sorted(p.name for p in src.iterdir())[-1] == "c1-t2w.nii.gz"  # nothing written beside the inputs
    print(f"\nEI-DDPM infer (4 tiny 2-D branches, 2 steps, 1 sample, {SHAPE[2]} slices): {seconds:.1f} s per case")


def test_infer_refuses_a_case_of_another_modality_list_with_one_line(brats_ckpt, tmp_path, capsys):
    """A BraTS 2021 case (t1, t1ce, t2, flair) for a checkpoint trained on BraTS 2023 names (t1n, t1c, t2w, t2f)."""
    src = _case(tmp_path / "cases", "old", mods=["t1", "t1ce", "t2", "flair"])
    rc, err = _infer(capsys, brats_ckpt, src, tmp_path / "out")
    assert rc == 2 and len(err) == 1, err
    assert "expects 4 modalities (t1n, t1c, t2w, t2f)" in err[0] and "Fix:" in err[0]
    assert not (tmp_path / "out").exists()


def test_infer_refuses_a_case_missing_a_modality_naming_the_file(brats_ckpt, tmp_path, capsys):
    root = tmp_path / "cases"
    _case(root, "A")
    _case(root, "B", skip=("t1c",))
    rc, err = _infer(capsys, brats_ckpt, root, tmp_path / "out")
    assert rc == 2 and len(err) == 1, err
    assert "B-t1c.nii.gz: case B has no t1c modality file. Fix: add it" in err[0]
    assert not (tmp_path / "out").exists()  # case A was not computed either


def test_infer_refuses_an_extra_channel_and_a_checkpoint_of_another_modality_count(brats_ckpt, tmp_path, capsys):
    five = np.random.default_rng(0).standard_normal((*SHAPE, 5)).astype(np.float32)  # 4-D NIfTI: 5 modalities
    nib.save(nib.Nifti1Image(five, AFFINE), str(tmp_path / "five.nii.gz"))
    rc, err = _infer(capsys, brats_ckpt, tmp_path / "five.nii.gz", tmp_path / "out")
    assert rc == 2 and len(err) == 1 and "5 channel(s)" in err[0] and "4" in err[0], err
    bad = _checkpoint(_tiny(7, in_channels=4, num_classes=4), tmp_path / "bad.ckpt", modalities=["t1n", "t2w"])
    with pytest.raises(CheckpointError, match=r"records modalities \['t1n', 't2w'\] for a model with 4 input"):
        Predictor.from_checkpoint(bad)


# -- learning: reliability is learned, not decorative -------------------------------------------------
def _noise_phantoms(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` binary cases of 3 modalities: a random ellipse seen with noise 0.3 (modality 0) and 0.5 (modality 1);
    modality 2 is pure noise. Each modality z-scored on its own, as the data module's scaling does."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    images, labels = [], []
    for _ in range(n):
        c, r, a = rng.uniform(8, size - 8, 2), rng.uniform(4, 8, 2), rng.uniform(0, np.pi)
        u = np.cos(a) * (i - c[0]) + np.sin(a) * (j - c[1])
        v = -np.sin(a) * (i - c[0]) + np.cos(a) * (j - c[1])
        lab = ((u / r[0]) ** 2 + (v / r[1]) ** 2 <= 1).astype(np.float32)
        x = np.stack([lab + 0.3 * rng.standard_normal(lab.shape), lab + 0.5 * rng.standard_normal(lab.shape),
                      rng.standard_normal(lab.shape)]).astype(np.float32)
        images.append((x - x.mean((1, 2), keepdims=True)) / x.std((1, 2), keepdims=True))
        labels.append(lab[None])
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


#: tiny nets and T = 100 to fit the CPU budget; Adam on the method's loss (the recipes train through DiffusionTask)
LEARN = dict(in_channels=3, num_classes=2, channels=(8, 16), attention_levels=(False, False), num_res_blocks=1,
             num_head_channels=8, norm_num_groups=4, timesteps=100, kl_anneal_steps=150, reliability_warmup=100,
             evidence_steps=3)


@pytest.mark.slow
def test_reliability_is_learned_and_fusion_beats_the_noise_branch():
    """Modality 2 is pure noise: after training its reliability for the tumour class is the lowest, the fused
    Dice beats its branch and is within 2 points of the best branch (or above it), and the fused uncertainty
    is higher where the branches disagree than where they agree."""
    start = time.perf_counter()
    torch.manual_seed(0)
    m = EIDDPM(**LEARN)
    x, y = _noise_phantoms(512, seed=0)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(x), (8,), generator=g)
        loss, _ = m.loss({"image": x[idx], "label": y[idx]}, g)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
    m.eval()
    xv, yv = _noise_phantoms(16, seed=1)
    out = m.predict({"image": xv}, sampler="dpm_solver_pp", steps=10, n_samples=4,
                    generator=torch.Generator().manual_seed(1))
    ref = yv[:, 0] > 0.5
    fused = float(dice(out["prediction"][:, 0] > 0.5, ref).mean())
    branch = [float(dice(out[f"branch_prediction_{i}"][:, 0] > 0.5, ref).mean()) for i in range(3)]
    beta = m.reliability.detach()
    labels = torch.cat([out[f"branch_prediction_{i}"] for i in range(3)], 1)
    disagree = labels.amax(1) != labels.amin(1)
    u = out["uncertainty"][:, 0]
    print(f"\nEI-DDPM phantom (3 modalities, modality 2 pure noise), {time.perf_counter() - start:.0f} s")
    print("modality        reliability bg  reliability tumour  branch Dice")
    for i, name in enumerate(("0 (noise 0.3)", "1 (noise 0.5)", "2 (pure noise)")):
        print(f"{name:15s} {float(beta[i, 0]):14.3f}  {float(beta[i, 1]):18.3f}  {branch[i]:11.3f}")
    ece = float(expected_calibration_error(out["probability"][:, 0], yv[:, 0]).mean())
    print(f"fused Dice {fused:.3f}, ECE of the fused probabilities {ece:.3f} (20 bins, mean over images); "
          f"uncertainty where branches disagree {float(u[disagree].mean()):.3f}, "
          f"agree {float(u[~disagree].mean()):.3f} ({float(disagree.float().mean()):.0%} of pixels disagree)")
    assert float(beta[2, 1]) < float(beta[:2, 1].min()) - 0.1  # the noise modality: lowest for the tumour
    assert fused > branch[2] + 0.3  # fusion beats the noise branch alone
    assert fused >= max(branch[:2]) - 0.02  # and is no worse than the best branch by more than 2 points
    assert float(u[disagree].mean()) > float(u[~disagree].mean()) + 0.02


def test_the_fast_path_applies_to_each_branch():
    from medrs_diff.nets.fastpath import FastPath
    from medrs_diff.train import DiffusionTask

    m = EIDDPM(in_channels=2, num_classes=2, **TINY)
    DiffusionTask(m, fast_path=FastPath(channels_last=True, checkpointing=True))
    for branch in m.branches:  # each branch is called on its own: each gets the options (and its input hook)
        assert branch._fast_path.channels_last and branch._forward_pre_hooks
        conv = branch.unet.conv_in.inner.conv.weight
        assert conv.is_contiguous(memory_format=torch.channels_last)
    batch = {"image": torch.randn(2, 2, 16, 16), "label": torch.randint(0, 2, (2, 1, 16, 16)).float()}
    loss, _ = m.loss(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_infer_panels_one_png_per_case_only_when_asked(brats_ckpt, tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "cases"
    for case in ("c1", "c2"):
        _case(root, case)
    rc, err = _infer(capsys, brats_ckpt, root, tmp_path / "plain")
    assert rc == 0, err
    assert not (tmp_path / "plain" / "panels").exists() and not list((tmp_path / "plain").rglob("*.png"))
    rc = main(["infer", "--checkpoint", str(brats_ckpt), "--input", str(root), "--output", str(tmp_path / "out"),
               *FAST, "--panels"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    panels = sorted((tmp_path / "out" / "panels").iterdir())
    assert [p.name for p in panels] == ["c1.png", "c2.png"]
    assert "panels/c1.png" in captured.out  # reported with the case's outputs
    for p in panels:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            w, h = im.size
            assert im.format == "PNG"
            pixels = np.asarray(im.convert("L"), dtype=np.float64)
        # 4 modalities + 4 branch masks + fused mask + uncertainty = 10 columns of 2.4-inch cells at 80 dpi, 1 row
        assert w == pytest.approx(10 * 2.4 * 80, rel=0.05) and h == pytest.approx(2.8 * 80, rel=0.1), (w, h)
        assert pixels.std() > 10  # drawn, not blank
    # the panels are files of their own: the output folder still pairs one-to-one with references
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["c1.nii.gz", "c2.nii.gz"]
    assert not list((tmp_path / "out").rglob(".tmp*"))


def test_infer_outputs_evaluate_with_region_ece(brats_ckpt, tmp_path, capsys):
    from medrs_diff.evaluation import evaluate

    src = _case(tmp_path / "cases", "c1")
    rc, err = _infer(capsys, brats_ckpt, src, tmp_path / "out")
    assert rc == 0, err
    (tmp_path / "ref").mkdir()
    (src / "c1-seg.nii.gz").rename(tmp_path / "ref" / "c1.nii.gz")
    res = evaluate(tmp_path / "out", tmp_path / "ref", "seg", brats=True, et_label=4,
                   probability=tmp_path / "out" / "probability", write=False)
    for region in ("WT", "TC", "ET"):
        assert 0 <= res["cases"]["c1"][region]["ece"] <= 1
        assert res["aggregate"][region]["n_pixels"] == np.prod(SHAPE)
