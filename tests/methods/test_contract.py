"""The method contract: captured constructor arguments, io_spec, declared engine members, default metrics."""

import inspect
from pathlib import Path

import pytest
import torch
from torch import nn

import medrs_diff.methods as methods_pkg
from medrs_diff.errors import ArgumentError
from medrs_diff.methods import METHODS, DiffusionMethod, IOSpec, Method, SegDiff, SMPUNet, SRDiff
from medrs_diff.methods.base import PSNR_CAP_DB, check_sampler
from medrs_diff.train.checkpoint import build_method, method_config

SEG = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
           norm_num_groups=8, rrdb_blocks=1, rrdb_features=16, rrdb_growth=8)
SR = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, norm_num_groups=8,
          rrdb_blocks=2, rrdb_features=16, rrdb_growth=8)
TINY = {
    "segdiff": dict(in_channels=2, **SEG),
    "srdiff": dict(in_channels=3, scale=2, **SR),
    "smp_unet": dict(in_channels=2, encoder_depth=3, decoder_channels=(16, 8, 8)),
    "regression_sr": dict(in_channels=3, scale=2, rrdb_blocks=1, rrdb_features=8, rrdb_growth=4),
    "medsegdiff_v1": dict(in_channels=2, channels=(16, 32), attention_levels=(False, False), num_res_blocks=1,
                          num_head_channels=16, norm_num_groups=8, ff_base_size=16),
    "medsegdiff_v2": dict(in_channels=2, channels=(16, 32), attention_levels=(False, False), num_res_blocks=1,
                          num_head_channels=16, norm_num_groups=8, cond_features=(8, 8, 16, 16, 32, 8),
                          ssformer_heads=2),
    "eiddpm": dict(in_channels=2, num_classes=2, channels=(16, 32), attention_levels=(False, False), num_res_blocks=1,
                   num_head_channels=16, norm_num_groups=8, timesteps=100),
    "ddfm": dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
                 norm_num_groups=8, timesteps=100),
    "anoddpm": dict(in_channels=2, channels=(16, 32), attention_levels=(False, False), num_res_blocks=1,
                    num_head_channels=16, norm_num_groups=8, lam=20, threshold=0.5),
    "bcdpm": dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
                  norm_num_groups=8, timesteps=100),
    "regression_unet": dict(channels=(8, 16), num_res_units=1),
    "retinal_mask_ddpm": dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1,
                              num_head_channels=16, norm_num_groups=8, timesteps=50),
    "retinal_image_ddpm": dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1,
                               num_head_channels=16, norm_num_groups=8, timesteps=50),
    "sar_ddpm": dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
                     norm_num_groups=8, timesteps=50, cycle_shifts=2),
    "blindsrsnf": dict(in_channels=3, scale=2, channels=(16, 32), num_res_blocks=1, norm_num_groups=8, rrdb_blocks=2,
                       rrdb_features=16, rrdb_growth=8, deg_dim=16, deg_width=8, queue_size=16),
    "seqdm": dict(bands=3, rgb=(2, 1, 0), channels=(16, 32), attention_levels=(False, False), num_res_blocks=1,
                  num_head_channels=16, norm_num_groups=8, timesteps=50),
    "cloud_regression_unet": dict(bands=3, channels=(8, 16), num_res_units=1),
    "nowcast_diffusion": dict(past_frames=3, future_frames=2, dim=16, depth=1, heads=2, disc_width=8, disc_depth=2),
    "hyperldm": dict(bands=6, num_endmembers=3, latent_channels=4, codebook_size=16, ae_channels=8, cond_channels=8,
                     channels=(8, 16), attention_levels=(False, False), num_head_channels=8, norm_num_groups=8,
                     timesteps=20, n_samples=2),
    "tcdm": dict(in_channels=3, scale=2, **SR),
    "spectraldiff": dict(bands=2, num_classes=3, channels=(4, 8), spatial_kernel=3, feature_timesteps=(5, 100),
                         feature_bins=2, pca_components=4, patch_size=5, dim=16, heads=2),
    "diffae": dict(in_channels=2, z_dim=4, encoder_base=4, encoder_levels=2, base=8, t_dim=16, timesteps=50),
    "autoencoder_kl": dict(in_channels=2, channels=(8, 8), attention_levels=(False, False), latent_channels=2,
                           norm_num_groups=4),
    "autoencoder_vq": dict(in_channels=2, channels=(8,), num_embeddings=8, embedding_dim=2),
    "latent_ddpm": dict(autoencoder_config=dict(in_channels=2, channels=(8, 8), attention_levels=(False, False),
                                                latent_channels=2, norm_num_groups=4),
                        scale_factor=0.5, channels=(8, 16), attention_levels=(False, False), num_head_channels=8,
                        norm_num_groups=4, timesteps=50),
    "ddbm": dict(in_channels=2, out_channels=3, channels=(16, 32), attention_levels=(False, False), num_res_blocks=1,
                 num_head_channels=16, norm_num_groups=8, sampling_steps=2),
    "latent": dict(autoencoder_config=dict(in_channels=3, channels=(8, 8), attention_levels=(False, False),
                                           latent_channels=2, norm_num_groups=4), scale_factor=0.5,
                   method=dict(class_path="SRDiff", init_args=dict(scale=2, timesteps=10, **SR))),
}
#: outputs whose channels are not the method's out_channels: EI-DDPM's per-modality maps (one channel per modality)
OUT_CHANNELS = {"eiddpm": {"reliability": 2, "branch_uncertainty": 2}, "anoddpm": {"anomaly_map": 1, "mask": 1},
                "spectraldiff": {"probability": 3}}
#: sequence methods, (B, T, C, H, W): the output shapes of the batches below (2 members)
SEQUENCE_OUT = {"nowcast_diffusion": {"prediction": (2, 2, 1, 16, 16), "members": (2, 2, 2, 1, 16, 16)}}


def test_every_registered_method_is_covered_by_the_contract_tests():
    assert set(TINY) == set(METHODS), "add the new method to TINY (and its batch below)"


def test_constructor_arguments_are_captured_with_defaults_and_lists():
    m = SegDiff(2, **SEG)
    hp = m.hparams()
    assert hp["in_channels"] == 2 and hp["channels"] == [16, 32] and hp["attention_levels"] == [False, False]
    assert hp["timesteps"] == 100 and hp["fusion"] == "mean" and hp["sampling_steps"] is None  # defaults too
    assert list(hp) == list(inspect.signature(SegDiff).parameters)  # every argument, in signature order
    hp["channels"].append(99)
    assert m.hparams()["channels"] == [16, 32]  # a copy


def test_only_the_outermost_constructor_call_is_recorded():
    class Wide(SegDiff):
        def __init__(self, width: int = 16, **kwargs) -> None:
            super().__init__(in_channels=1, channels=(width, 2 * width), **kwargs)

    class Same(SRDiff):  # no __init__ of its own: the parent's signature is recorded
        pass

    seg = {k: v for k, v in SEG.items() if k != "channels"}
    w = Wide(8, **seg)
    assert w.hparams() == {"width": 8, **{k: list(v) if isinstance(v, tuple) else v for k, v in seg.items()}}
    assert w.unet.unet.conv_in.inner.conv.out_channels == 8
    assert Same(in_channels=3, **SR).hparams() == SRDiff(in_channels=3, **SR).hparams()


def test_no_method_copies_its_locals():
    """The `_init_args = {...locals()...}` lines are gone: the base class records arguments."""
    folder = Path(methods_pkg.__file__).parent
    offenders = [p.name for p in folder.rglob("*.py") if "_init_args" in p.read_text() or "locals()" in p.read_text()]
    assert offenders == []


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_registered_method_rebuilds_from_its_hparams(name):
    torch.manual_seed(0)
    cls = METHODS[name]
    m = cls(**TINY[name])
    assert isinstance(m, Method) and m.hparams()
    again = build_method(method_config(m))
    assert type(again) is cls and again.hparams() == m.hparams()
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


def test_io_specs_declare_inputs_outputs_and_grid():
    specs = {name: METHODS[name](**kw).io_spec for name, kw in TINY.items()}
    seg_out, sr_out = ("prediction", "uncertainty", "probability"), ("prediction", "uncertainty")
    # two UNet levels: sizes are multiples of 2 (the smp UNet pads inside; SRDiff's x2 HR is always even)
    assert specs["segdiff"] == IOSpec({"image": 2}, seg_out, 2, 1, "seg", (), {"size_multiple": 2})
    assert specs["smp_unet"] == IOSpec({"image": 2}, seg_out, 2, 1, "seg", (), {"size_multiple": 1})
    assert specs["srdiff"] == IOSpec({"cond": 3}, sr_out, 2, 2, "image", ("prediction",), {"size_multiple": 1})
    assert specs["regression_sr"] == IOSpec({"cond": 3}, sr_out, 2, 2, "image", ("prediction",),
                                            {"size_multiple": 1})
    assert specs["medsegdiff_v1"] == IOSpec({"image": 2}, seg_out, 2, 1, "seg", (), {"size_multiple": 2})
    assert specs["medsegdiff_v2"] == IOSpec({"image": 2}, seg_out, 2, 1, "seg", (), {"size_multiple": 16})
    branches = ("branch_prediction_0", "branch_prediction_1")
    assert specs["eiddpm"] == IOSpec({"image": 2}, (*seg_out, "conflict", "reliability", "branch_uncertainty",
                                                    *branches), 2, 1, "seg", (),
                                     {"size_multiple": 2, "label_outputs": ("prediction", *branches)})
    assert specs["ddfm"] == IOSpec({"image": 2}, sr_out, 2, 1, "image", (), {"size_multiple": 2})
    assert specs["anoddpm"] == IOSpec({"image": 2}, ("anomaly_map", "reconstruction", "mask"), 2, 1, "anomaly",
                                      ("reconstruction",), {"size_multiple": 2, "label_outputs": ("mask",)})
    # BC-DPM: two UNet levels and the 4x4 low band of the condition block
    assert specs["bcdpm"] == IOSpec({"cond": 1}, sr_out, 2, 1, "image", ("prediction",), {"size_multiple": 4})
    assert specs["regression_unet"] == IOSpec({"cond": 1}, sr_out, 2, 1, "image", ("prediction",),
                                              {"size_multiple": 2})
    assert specs["retinal_mask_ddpm"] == IOSpec({"label": 1}, ("prediction",), 2, 1, "seg", (), {"size_multiple": 2})
    assert specs["retinal_image_ddpm"] == IOSpec({"label": 1}, ("prediction",), 2, 1, "image", ("prediction",),
                                                 {"size_multiple": 2})
    assert specs["sar_ddpm"] == IOSpec({"cond": 1}, ("prediction",), 2, 1, "image", ("prediction",),
                                       {"size_multiple": 2})
    # BlindSRSNF x2: fold-2 unshuffle and one downsampling (HR multiples of 4: LR multiples of 2)
    assert specs["blindsrsnf"] == IOSpec({"cond": 3}, sr_out, 2, 2, "image", ("prediction",), {"size_multiple": 2})
    seq_in = {"cond": 3, "cloud_mask": 1, "sar": 2}
    for name in ("seqdm", "cloud_regression_unet"):
        assert specs[name] == IOSpec(seq_in, sr_out, 2, 1, "spectral", ("prediction",),
                                     {"size_multiple": 2, "sequence": True})
    assert specs["nowcast_diffusion"] == IOSpec(
        {"cond": 1}, ("prediction", "members"), 2, 1, "forecast", (),
        {"size_multiple": 4, "past_frames": 3, "future_frames": 2, "layout": "(B, T, C, H, W)",
         "model_space": "log10(mm/h) / 2 (data.radar_sequence.rain_to_model)"})
    # HyperLDM: RGB in, cubes out (mean, variance, one per seed), latent at 1/4 x two UNet levels
    assert specs["hyperldm"] == IOSpec({"cond": 3}, (*sr_out, "sample_0", "sample_1"), 2, 1, "spectral", (),
                                       {"size_multiple": 8, "bands": 6})
    assert specs["spectraldiff"] == IOSpec({"image": 2}, ("prediction", "probability"), 2, 1, "class", (),
                                           {"size_multiple": 1, "label_outputs": ("prediction",)})
    assert specs["diffae"] == IOSpec({"image": 2}, ("prediction", "stochastic_code"), 2, 1, "image",
                                     ("prediction",), {"size_multiple": 2})
    assert specs["autoencoder_kl"] == IOSpec({"image": 2}, ("prediction",), 2, 1, "image", ("prediction",),
                                             {"size_multiple": 2})
    assert specs["autoencoder_vq"] == IOSpec({"image": 2}, ("prediction",), 2, 1, "image", ("prediction",),
                                             {"size_multiple": 2})
    # the latent grid is 1/2 of the image and the UNet halves it once more
    assert specs["latent_ddpm"] == IOSpec({"image": 2}, ("prediction",), 2, 1, "image", ("prediction",),
                                          {"size_multiple": 4})
    # DDBM: S1-like 2 channels in, 3 out (a learned 1x1 endpoint map), two UNet levels
    assert specs["ddbm"] == IOSpec({"cond": 2}, sr_out, 2, 1, "spectral", ("prediction",), {"size_multiple": 2})
    # SRDiff x2 on the 2-channel latent of a 3-band autoencoder (f = 2): the LR image is encoded too
    assert specs["latent"] == IOSpec({"cond": 3}, sr_out, 2, 2, "image", ("prediction",),
                                     {"size_multiple": 2, "latent": {"factor": 2, "channels": 2}})
    deep = SRDiff(in_channels=1, scale=2, **{**SR, "channels": (8, 8, 8, 8), "attention_levels": (False,) * 4,
                                                 "num_head_channels": 8})
    assert deep.io_spec.extra["size_multiple"] == 4  # the UNet needs HR multiples of 8: LR multiples of 4
    for name, kw in TINY.items():  # the older attributes agree with the spec
        m = METHODS[name](**kw)
        assert (m.input_key, m.in_channels, m.spatial_dims, m.task) == (
            m.io_spec.input_key, m.io_spec.in_channels, m.io_spec.spatial_dims, m.io_spec.task)


def test_predict_returns_every_declared_output():
    torch.manual_seed(0)
    SEQ = {"cond": torch.rand(2, 2, 3, 16, 16) * 2 - 1, "cloud_mask": torch.zeros(2, 2, 1, 16, 16),  # noqa: N806
           "sar": torch.zeros(2, 2, 2, 16, 16)}
    g = torch.Generator().manual_seed(0)
    batches = {
        "segdiff": {"image": torch.randn(2, 2, 16, 16)},
        "smp_unet": {"image": torch.randn(2, 2, 16, 16)},
        "medsegdiff_v1": {"image": torch.randn(2, 2, 16, 16)},
        "medsegdiff_v2": {"image": torch.randn(2, 2, 32, 16)},  # instance norm needs 2 bottleneck voxels
        "eiddpm": {"image": torch.randn(2, 2, 16, 16)},
        "srdiff": {"cond": torch.randn(2, 3, 8, 8)},
        "regression_sr": {"cond": torch.randn(2, 3, 8, 8)},
        "ddfm": {"image": torch.rand(2, 2, 16, 16) * 2 - 1},
        "anoddpm": {"image": torch.randn(2, 2, 16, 16)},
        "bcdpm": {"cond": torch.randn(2, 1, 16, 16).clamp(-1, 1)},
        "regression_unet": {"cond": torch.randn(2, 1, 16, 16)},
        "retinal_mask_ddpm": {"label": torch.zeros(2, 1, 16, 16)},
        "retinal_image_ddpm": {"label": (torch.rand(2, 1, 16, 16) > 0.8).float()},
        "sar_ddpm": {"cond": torch.rand(2, 1, 16, 16) * 2 - 1},
        "blindsrsnf": {"cond": torch.rand(2, 3, 12, 12) * 2 - 1},
        "seqdm": SEQ,
        "cloud_regression_unet": SEQ,
        "nowcast_diffusion": {"cond": torch.rand(2, 3, 1, 16, 16) * 2 - 1},
        "hyperldm": {"cond": torch.rand(2, 3, 16, 16), "endmembers": torch.rand(6, 3)},
        "tcdm": {"cond": torch.rand(2, 3, 8, 8) * 2 - 1},
        "spectraldiff": {"image": torch.randn(2, 2, 16, 16)},
        "diffae": {"image": torch.rand(2, 2, 16, 16) * 2 - 1},
        "autoencoder_kl": {"image": torch.rand(2, 2, 16, 16) * 2 - 1},
        "autoencoder_vq": {"image": torch.rand(2, 2, 16, 16) * 2 - 1},
        "latent_ddpm": {"image": torch.rand(2, 2, 16, 16) * 2 - 1},
        "ddbm": {"cond": torch.rand(2, 2, 16, 16) * 2 - 1},
        "latent": {"cond": torch.rand(2, 3, 8, 8) * 2 - 1},
    }
    for name, kw in TINY.items():
        m = METHODS[name](**kw).eval()
        if name == "spectraldiff":  # predicts once its PCA is fitted (on training features)
            m.fit_pca(torch.randn(20, m.feature_dim))
        out = m.predict(batches[name], sampler="ddim", steps=2, n_samples=2, generator=g)
        spec = m.io_spec
        assert set(spec.outputs) <= set(out), name
        if name in SEQUENCE_OUT:
            assert {k: tuple(out[k].shape) for k in spec.outputs} == SEQUENCE_OUT[name]
            continue
        x = batches[name][spec.input_key]
        spatial = tuple(s * spec.grid_factor for s in x.shape[-spec.spatial_dims:])  # sequences: (B, T, C, ...)
        for k in spec.outputs:
            assert tuple(out[k].shape) == (2, OUT_CHANNELS.get(name, {}).get(k, m.out_channels), *spatial), (name, k)


def test_diffusion_methods_declare_denoiser_schedule_and_sampler():
    m = SegDiff(1, sampler="dpm_solver_pp", sampling_steps=7, **SEG)
    assert isinstance(m, DiffusionMethod)
    assert m.denoiser is m.unet and m.fast_path_target() is m.unet
    assert m.default_sampler == "dpm_solver_pp" and m.sampling_steps == 7 and len(m.schedule) == 100
    sr = SRDiff(in_channels=3, scale=2, **SR)
    assert sr.denoiser is sr.unet and sr.grid_factor == 2
    b = SMPUNet(**TINY["smp_unet"])
    assert not isinstance(b, DiffusionMethod) and b.fast_path_target() is b.net

    class NoNet(DiffusionMethod):
        pass

    with pytest.raises(NotImplementedError, match="NoNet must declare its denoiser"):
        NoNet().fast_path_target()


def test_sampler_names_are_checked_with_the_registry():
    with pytest.raises(ArgumentError, match=r"sampler: unknown sampler 'euler'\. Fix: choose one of ddpm, ddim, "
                                            r"dpm_solver_pp, analytic_dpm, paradigms"):
        check_sampler("euler")
    with pytest.raises(ValueError, match="unknown sampler"):
        SegDiff(sampler="euler", **SEG)
    check_sampler("paradigms")


def test_default_validation_metrics_dice_and_psnr():
    class Plain(Method):
        def __init__(self, target_key: str = "label") -> None:
            super().__init__()
            self.target_key = target_key

    ref = torch.zeros(2, 1, 8, 8)
    ref[0, :, :4] = 1
    ref[1, :, :, :2] = 1
    pred = torch.zeros_like(ref)
    pred[0, :, :2] = 1  # Dice 2*16/(16+32) = 2/3
    pred[1] = ref[1]  # Dice 1
    m = Plain()
    assert m.validation_metrics({"label": ref}, {"prediction": pred})["dice"] == pytest.approx((2 / 3 + 1) / 2)
    assert m.validation_metrics({}, {"prediction": pred}) == {}
    img = Plain("image")
    x = torch.zeros(1, 1, 4, 4)
    y = x + 0.2  # MSE 0.04, data range 2: PSNR = 10 log10(4 / 0.04) = 20 dB
    assert img.validation_metrics({"image": x}, {"prediction": y})["psnr"] == pytest.approx(20.0, abs=1e-4)
    assert img.validation_metrics({"image": x}, {"prediction": x})["psnr"] == PSNR_CAP_DB
    with pytest.raises(ValueError, match="differ in shape; override validation_metrics"):
        img.validation_metrics({"image": x}, {"prediction": torch.zeros(1, 1, 2, 2)})
    assert isinstance(img, nn.Module) and img.hparams() == {"target_key": "image"}
