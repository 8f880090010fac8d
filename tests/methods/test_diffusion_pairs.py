"""``DiffusionMethod.diffusion_pair`` for every registered diffusion method: either the one-line refusal, or the
denoiser conditioned exactly as the method's loss conditions it (same net output at the loss's own x_t and t) and
the x0 its loss diffuses; learned chains fitted through it are walked by ``predict``."""

from __future__ import annotations

import pytest
import torch
from test_contract import TINY
from torch import Tensor

from medrs_diff.diffusion.guidance.consistency import DataConsistency
from medrs_diff.diffusion.process import DiffusionLoss
from medrs_diff.diffusion.samplers.learned import fitted_steps
from medrs_diff.errors import ArgumentError
from medrs_diff.methods import METHODS, DiffusionMethod
from medrs_diff.methods.base import pair_methods
from medrs_diff.train.learned_schedule import fit_learned_schedules

DIFFUSION = sorted(n for n, c in METHODS.items() if issubclass(c, DiffusionMethod))
#: configurations beside TINY: the diffusion stage reached (no pretraining), no evidential sampling in the loss
OVERRIDES = {"srdiff": dict(pretrain_steps=0), "tcdm": dict(pretrain_steps=0, timesteps=50, t_trunc=50),
             "hyperldm": dict(pretrain_steps=0), "eiddpm": dict(evidential_weight=0.0),
             "nowcast_diffusion": dict(objective="ddpm", timesteps=50)}
#: refused in their TINY / default configuration, with the start of the one-line message
REFUSED = {
    "anoddpm": r"^method anoddpm: its chain starts at lam from the noised image .* Fix: sample it with",
    "diffae": r"^method diffae: predict encodes by DDIM inversion .* no BDDM schedule",
    "tcdm": r"^method tcdm: with t_trunc: 10 .* not a plain DDPM chain",
    "nowcast_diffusion": r"^method nowcast_diffusion: with objective: ddgan",
    "hyperldm": r"^method hyperldm: has no latent scale yet .* Fix: train past pretrain_steps",
}


def _label(b: int = 2, h: int = 16, w: int = 16) -> Tensor:
    return (torch.rand(b, 1, h, w) > 0.6).float()


def _batch(name: str) -> dict[str, Tensor]:
    """A training batch (targets included) of the TINY configuration."""
    r = torch.rand
    seq = {"cond": r(2, 1, 3, 16, 16) * 2 - 1, "cloud_mask": (r(2, 1, 1, 16, 16) > 0.5).float(),
           "sar": r(2, 1, 2, 16, 16) * 2 - 1, "image": r(2, 3, 16, 16) * 2 - 1}  # one date: SeqTIS = the trained net
    return {
        "segdiff": {"image": torch.randn(2, 2, 16, 16), "label": _label()},
        "medsegdiff_v1": {"image": torch.randn(2, 2, 16, 16), "label": _label()},
        "medsegdiff_v2": {"image": torch.randn(2, 2, 32, 16), "label": _label(2, 32, 16)},
        "eiddpm": {"image": torch.randn(2, 2, 16, 16), "label": _label()},
        "srdiff": {"cond": r(2, 3, 8, 8) * 2 - 1, "image": r(2, 3, 16, 16) * 2 - 1},
        "tcdm": {"cond": r(2, 3, 8, 8) * 2 - 1, "image": r(2, 3, 16, 16) * 2 - 1},
        "ddfm": {"image": r(2, 2, 16, 16) * 2 - 1},
        "anoddpm": {"image": torch.randn(2, 2, 16, 16)},
        "bcdpm": {"cond": r(2, 1, 16, 16) * 2 - 1, "image": r(2, 1, 16, 16) * 2 - 1},
        "retinal_mask_ddpm": {"label": _label()},
        "retinal_image_ddpm": {"label": _label(), "image": r(2, 3, 16, 16) * 2 - 1},
        "sar_ddpm": {"cond": r(2, 1, 16, 16) * 2 - 1, "image": r(2, 1, 16, 16) * 2 - 1},
        "blindsrsnf": {"cond": r(2, 3, 12, 12) * 2 - 1, "image": r(2, 3, 24, 24) * 2 - 1},
        "seqdm": seq,
        "nowcast_diffusion": {"cond": r(2, 3, 1, 16, 16) * 2 - 1, "image": r(2, 2, 1, 16, 16) * 2 - 1},
        "hyperldm": {"cond": r(2, 3, 16, 16), "image": r(2, 6, 16, 16), "endmembers": r(6, 3)},
        "diffae": {"image": r(2, 2, 16, 16) * 2 - 1},
        "latent_ddpm": {"image": r(2, 2, 16, 16) * 2 - 1},
    }[name]


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and " Fix: " in msg
    return msg


def test_every_registered_diffusion_method_is_covered():
    assert set(DIFFUSION) <= set(TINY)
    assert {n for n in DIFFUSION if n not in REFUSED} | {"tcdm", "nowcast_diffusion", "hyperldm"} == set(
        pair_methods())  # the derived list of the refusal message: every method that returns a pair somewhere


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusals_are_one_line_argument_errors(name):
    torch.manual_seed(0)
    m = METHODS[name](**TINY[name]).eval()
    with pytest.raises(ArgumentError, match=REFUSED[name]) as err:
        m.diffusion_pair(_batch(name))
    _one_line(err)
    if name != "hyperldm":  # its refusal depends on the training stage, so it is not checked before training
        assert str(m.pair_refusal()) == str(err.value)  # what the callback / fit-schedule check before training


def test_a_method_without_a_pair_lists_the_methods_that_have_one():
    class Plain(DiffusionMethod):
        name = "plain"

    with pytest.raises(ArgumentError, match=r"^method plain: does not expose .* \(bcdpm, blindsrsnf, ddfm, eiddpm, "
                                            r"hyperldm, latent_ddpm, medsegdiff_v1, medsegdiff_v2, ") as err:
        Plain().diffusion_pair({})
    _one_line(err)


def _perturbed(m: DiffusionMethod) -> DiffusionMethod:
    """Random weights everywhere: fresh UNets end in zero convolutions, whose zero output any conditioning gives."""
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _record_loss(m: DiffusionMethod, batch: dict[str, Tensor]) -> tuple[list, list]:
    """Run the method's loss, recording every call of its denoising net(s) (x_t, t, output) and the x0 its
    objective receives."""
    calls: list[tuple[Tensor, Tensor, Tensor]] = []
    nets = list(m.denoiser) if isinstance(m.denoiser, torch.nn.ModuleList) else [m.denoiser]
    handles = [n.register_forward_hook(lambda _mod, args, out: calls.append((args[0], args[1], out)))
               for n in nets]
    x0s: list[Tensor] = []
    obj = getattr(m, "objective", None)

    class Spy:
        def __call__(self, model, x0, *a, **kw):
            x0s.append(x0)
            return obj(model, x0, *a, **kw)

        def __getattr__(self, attr):
            return getattr(obj, attr)

    if isinstance(obj, DiffusionLoss):
        m.objective = Spy()
    try:
        with torch.no_grad():
            m.loss(batch, generator=torch.Generator().manual_seed(1))
    finally:
        for h in handles:
            h.remove()
        if isinstance(obj, DiffusionLoss):
            m.objective = obj
    return calls, x0s


@pytest.mark.parametrize("name", [n for n in DIFFUSION if n not in ("anoddpm", "diffae")])
def test_pair_denoiser_matches_the_loss_at_its_own_x_t_and_t(name):
    torch.manual_seed(0)
    m = _perturbed(METHODS[name](**{**TINY[name], **OVERRIDES.get(name, {})}).eval())
    batch = _batch(name)
    calls, x0s = _record_loss(m, batch)  # HyperLDM: the first diffusion batch also sets its latent scale
    pair = m.diffusion_pair(batch)
    x0 = pair.x0
    assert calls, "the loss never ran the denoiser"
    c = x0.shape[1] // len(calls)  # EI-DDPM: one call (and one channel group) per branch
    for k, (x_in, _, _) in enumerate(calls):
        assert x_in.reshape(x0.shape[0], c, *x0.shape[2:]).shape == x0[:, k * c:(k + 1) * c].shape
    x_t = torch.cat([x.reshape(x0.shape[0], c, *x0.shape[2:]) for x, _, _ in calls], 1)
    t = calls[0][1]
    assert all(torch.equal(tt, t) for _, tt, _ in calls)
    want = torch.cat([out.reshape(x0.shape[0], -1, *x0.shape[2:])[:, :c] for _, _, out in calls], 1)
    with torch.no_grad():
        got = pair.denoise(x_t, t)
    assert got.shape == x0.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # a wrong conditioning gives another output: the comparison can fail
    other = _batch(name)
    with torch.no_grad():
        assert not torch.allclose(m.diffusion_pair(other).denoise(x_t, t), want, atol=1e-4) or name in (
            "ddfm", "latent_ddpm", "retinal_mask_ddpm")  # unconditional nets: nothing to condition
    if x0s and name != "latent_ddpm":  # the x0 the objective diffuses (per branch for EI-DDPM); latent_ddpm's
        # x0 is a posterior sample of the autoencoder, drawn anew by the loss and by the pair
        torch.testing.assert_close(torch.cat(x0s, 1).reshape(x0.shape), x0)
    assert pair.prediction_type == getattr(m, "prediction_type", getattr(getattr(m, "objective", None),
                                                                         "prediction_type", "eps"))


def test_tcdm_full_chain_pair_is_the_srdiff_residual():
    torch.manual_seed(0)
    m = METHODS["tcdm"](**{**TINY["tcdm"], **OVERRIDES["tcdm"]}).eval()
    b = _batch("tcdm")
    pair = m.diffusion_pair(b)
    torch.testing.assert_close(pair.x0, m.residual.encode(b["image"], m.upsample(b["cond"])))
    assert pair.options == {"clip": True}


def test_bcdpm_pair_carries_the_condition_block_only_with_the_diffusion_domain():
    torch.manual_seed(0)
    b = _batch("bcdpm")
    both = METHODS["bcdpm"](**TINY["bcdpm"]).diffusion_pair(b)
    (hook,) = both.options["hooks"]
    assert isinstance(hook, DataConsistency) and torch.equal(hook.measured, b["cond"])
    spatial = METHODS["bcdpm"](**{**TINY["bcdpm"], "condition": "spatial"}).diffusion_pair(b)
    assert spatial.options == {"clip": True}


def _fit_and_sample(m: DiffusionMethod, batches: list[dict], kind: str) -> None:
    reports = fit_learned_schedules(m, batches, kind=kind, steps=[2], fit_steps=10, n_batches=1, candidates=8,
                                    mask_samples=2, abar_grid=[1e-2, 1e-1], beta_grid=[0.3, 0.6])
    n = reports[0].steps
    assert fitted_steps(m.schedule, kind) == [n]
    sampler = "bddm" if kind == "bddm" else "masked"
    out = m.predict({k: v for k, v in batches[0].items() if k not in ("label",)}, sampler=sampler, steps=n,
                    n_samples=1, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["prediction"]).all()


@pytest.mark.parametrize(("name", "kind", "extra"), [
    ("medsegdiff_v1", "bddm", dict(timesteps=100)),  # segmenter (image features)
    ("eiddpm", "mask", dict(timesteps=100)),  # stacked branches
    ("bcdpm", "mask", {}),  # the condition block as a sampler hook
    ("seqdm", "bddm", dict(prediction_type="x0")),  # an x0-predictor walked by the learned sampler
])
def test_a_two_step_chain_fits_and_predict_walks_it(name, kind, extra):
    torch.manual_seed(0)
    m = METHODS[name](**{**TINY[name], **OVERRIDES.get(name, {}), **extra}).eval()
    _fit_and_sample(m, [_batch(name), _batch(name)], kind)
