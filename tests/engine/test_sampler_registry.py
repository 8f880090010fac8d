"""The sampler registry: all samplers in one place, one call convention, the generator reaching each."""

import dataclasses
import inspect

import pytest
import torch

from medrs_diff.diffusion import samplers as S
from medrs_diff.diffusion.samplers import SAMPLERS, SamplerSpec, check_sampler, get_sampler, register_sampler
from medrs_diff.diffusion.samplers.base import Hook
from medrs_diff.diffusion.schedules import make_schedule
from medrs_diff.diffusion.toy import GaussianMixture

SHAPE = (2, 2)


@pytest.fixture(scope="module")
def sched():
    return make_schedule("linear", 200)


@pytest.fixture(scope="module")
def den(sched):
    gm = GaussianMixture(torch.tensor([[-0.5] * 4, [0.5] * 4]), torch.tensor(0.2), shape=(1, *SHAPE))
    return gm.denoiser(sched)


@pytest.fixture(scope="module")
def gamma(sched, den):
    data = [torch.rand(64, 1, *SHAPE, generator=torch.Generator().manual_seed(0)) - 0.5]
    return S.estimate_gamma(den, sched.respace(10), data, generator=torch.Generator().manual_seed(1))


def _x(seed=0, n=16):
    return torch.randn(n, 1, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _g(seed):
    return torch.Generator().manual_seed(seed)


def test_all_samplers_registered_with_metadata():
    assert S.sampler_names() == ("ddpm", "ddim", "dpm_solver_pp", "analytic_dpm", "paradigms", "gddim", "bddm",
                                 "masked")
    assert all(isinstance(s, SamplerSpec) and s.name == n for n, s in SAMPLERS.items())
    assert {n for n, s in SAMPLERS.items() if s.stochastic} == {"ddpm", "analytic_dpm", "paradigms", "bddm"}
    assert dict(SAMPLERS["analytic_dpm"].requires).keys() == {"gamma"}
    assert [n for n, s in SAMPLERS.items() if not s.supports_hooks] == ["paradigms"]
    assert SAMPLERS["ddim"].default_steps == 50 and SAMPLERS["ddpm"].default_steps is None
    assert SAMPLERS["dpm_solver_pp"].default_steps == 20
    assert "eta" in SAMPLERS["ddim"].options and "gamma" in SAMPLERS["analytic_dpm"].options


def test_spec_call_equals_the_plain_function(sched, den, gamma):
    """Same numbers through the registry as through the functions (numerics are the functions')."""
    direct = {
        "ddpm": S.ddpm(den, _x(), sched, steps=10, generator=_g(3)),
        "ddim": S.ddim(den, _x(), sched, steps=10, eta=0.5, generator=_g(3)),
        "dpm_solver_pp": S.dpm_solver_pp(den, _x(), sched, steps=10),
        "analytic_dpm": S.analytic_dpm(den, _x(), sched, gamma, steps=10, generator=_g(3)),
        "paradigms": S.paradigms(den, _x(), sched, steps=10, window=4, generator=_g(3)).sample,
        "gddim": S.gddim(den, _x(), sched, steps=10),
    }
    options = {"ddim": {"eta": 0.5}, "analytic_dpm": {"gamma": gamma}, "paradigms": {"window": 4}}
    for name, want in direct.items():
        got = SAMPLERS[name](den, _x(), sched, steps=10, generator=_g(3), **options.get(name, {}))
        assert isinstance(got, torch.Tensor) and torch.equal(got, want), name


def test_the_generator_decides_every_stochastic_sample(sched, den, gamma):
    options = {"ddim": {"eta": 1.0}, "analytic_dpm": {"gamma": gamma}}
    for name in ("ddpm", "ddim", "analytic_dpm", "paradigms"):
        spec, kw = SAMPLERS[name], options.get(name, {})
        a = spec(den, _x(), sched, steps=10, generator=_g(5), **kw)
        b = spec(den, _x(), sched, steps=10, generator=_g(5), **kw)
        c = spec(den, _x(), sched, steps=10, generator=_g(6), **kw)
        assert torch.equal(a, b) and not torch.allclose(a, c), name


def test_clear_errors(sched, den):
    with pytest.raises(ValueError, match=r"'analytic_dpm' needs gamma \(gamma: an AnalyticGamma"):
        SAMPLERS["analytic_dpm"](den, _x(), sched, steps=5)
    with pytest.raises(ValueError, match=r"'ddpm' takes no option\(s\) \['eta'\]"):
        SAMPLERS["ddpm"](den, _x(), sched, steps=5, eta=1.0)
    with pytest.raises(ValueError, match=r"'paradigms' does not run per-step hooks; use one of \['ddpm', 'ddim'"):
        SAMPLERS["paradigms"](den, _x(), sched, steps=5, hooks=[Hook()])
    with pytest.raises(ValueError, match="unknown sampler 'euler'; choose one of ddpm, ddim, dpm_solver_pp, "
                                         "analytic_dpm, paradigms, gddim"):
        check_sampler("euler")
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("euler")
    with pytest.raises(ValueError, match="already registered"):
        register_sampler(SAMPLERS["ddim"])
    with pytest.raises(ValueError, match="must accept a `generator`"):
        register_sampler(SamplerSpec("nogen", lambda denoise, x_T, schedule: x_T, "", stochastic=False))
    assert "nogen" not in SAMPLERS


def test_hooks_reach_samplers_that_run_them(sched, den):
    calls = []

    class Count(Hook):
        def on_x0(self, ctx):
            calls.append(ctx.step)
            return ctx.x0

    SAMPLERS["dpm_solver_pp"](den, _x(), sched, steps=6, hooks=[Count()])
    assert calls == list(range(6))


def test_registered_sampler_is_usable_by_name(sched, den, monkeypatch):
    seen = []

    def identity(denoise, x_T, schedule, *, steps=None, generator=None, progress=False):
        seen.append(generator)
        return x_T.clone()

    monkeypatch.delitem(SAMPLERS, "identity", raising=False)
    register_sampler(SamplerSpec("identity", identity, "returns x_T", stochastic=False))
    try:
        g = _g(0)
        assert torch.equal(SAMPLERS["identity"](den, _x(), sched, generator=g), _x())
        assert seen == [g]
        check_sampler("identity")
    finally:
        SAMPLERS.pop("identity")


def test_methods_sampling_passes_the_generator_to_every_sampler(sched, den, gamma, monkeypatch):
    """``methods._sampling.sample_n`` hands its generator to whichever sampler it runs."""
    from medrs_diff.methods._sampling import sample_n

    seen: dict[str, object] = {}
    S.attach_chain(sched, "bddm", sched.respace(10))  # the learned-chain samplers walk a fitted 10-step chain
    S.attach_chain(sched, "mask", sched.respace(10))
    for name, spec in list(SAMPLERS.items()):
        def spy(*args, _fn=spec.fn, _name=name, **kwargs):
            seen[_name] = kwargs.get("generator")
            return _fn(*args, **kwargs)

        spy.__signature__ = inspect.signature(spec.fn)
        monkeypatch.setitem(SAMPLERS, name, dataclasses.replace(spec, fn=spy))
    for name in SAMPLERS:
        g = _g(1)
        extra = {"gamma": gamma} if name == "analytic_dpm" else {}
        out = sample_n(den, (3, 1, *SHAPE), sched, n_samples=2, sampler=name, steps=10, device=torch.device("cpu"),
                       generator=g, **extra)
        assert out.shape == (2, 3, 1, *SHAPE)
        assert seen[name] is g, name
