"""Per-element generators: element j's noise is what generator j alone gives, whatever the batch around it
(its size, its order), through every noise draw of the engine; a plain generator keeps its old stream."""

from __future__ import annotations

import pytest
import torch

from medrs_diff.diffusion import generators as G
from medrs_diff.diffusion import samplers as S
from medrs_diff.diffusion.generators import SampleGenerators
from medrs_diff.diffusion.guidance import ddrm, repaint
from medrs_diff.diffusion.guidance._common import forward_sample
from medrs_diff.diffusion.guidance.operators import Inpainting
from medrs_diff.diffusion.noise import GammaNoise, gaussian_like, simplex_noise
from medrs_diff.diffusion.schedules import make_schedule
from medrs_diff.diffusion.toy import GaussianMixture
from medrs_diff.methods._sampling import sample_n

SEEDS = (11, 22, 33)
SHAPE = (1, 4, 4)  # (C, H, W) of one element


def _gens(seeds=SEEDS) -> SampleGenerators:
    return SampleGenerators.from_seeds(seeds)


def _rows(x: torch.Tensor, j: int, k: int) -> torch.Tensor:
    """Element j's rows of a sample-major batch of k elements."""
    return x[j::k]


@pytest.mark.parametrize("draw", [G.randn, G.rand])
@pytest.mark.parametrize("repeats", [1, 2])
def test_each_element_gets_its_own_generators_stream(draw, repeats):
    k = len(SEEDS)
    out = draw((repeats * k, *SHAPE), _gens())
    for j, s in enumerate(SEEDS):
        alone = draw((repeats, *SHAPE), torch.Generator().manual_seed(s))
        assert torch.equal(_rows(out, j, k), alone)  # same values as the generator alone, in the same order
    flipped = draw((repeats * k, *SHAPE), _gens(SEEDS[::-1]))  # reorder the batch: the rows follow the seeds
    for j in range(k):
        assert torch.equal(_rows(flipped, j, k), _rows(out, k - 1 - j, k))
    assert not torch.equal(_rows(out, 0, k), _rows(out, 1, k))  # the elements differ


def test_plain_generator_is_the_old_stream_and_a_misaligned_batch_is_refused():
    assert torch.equal(G.randn((3, *SHAPE), torch.Generator().manual_seed(5)),
                       torch.randn((3, *SHAPE), generator=torch.Generator().manual_seed(5)))
    assert torch.equal(G.rand((3, 2), torch.Generator().manual_seed(5)),
                       torch.rand((3, 2), generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match=r"batch of 4 row\(s\) does not split over 3"):
        G.randn((4, *SHAPE), _gens())
    with pytest.raises(ValueError, match="at least one"):
        SampleGenerators([])
    with pytest.raises(TypeError, match="torch.Generator"):
        SampleGenerators([0, 1])


def _noise_draws():
    sched = make_schedule("linear", 20)
    gamma = GammaNoise(sched)
    return {
        "gaussian_like": lambda x, g: gaussian_like(x, g),
        "simplex": lambda x, g: simplex_noise(tuple(x.shape), octaves=2, frequency=0.25, generator=g),
        "gamma_step": lambda x, g: gamma.step_like(x, 5, g),
        "gamma_marginal": lambda x, g: gamma.marginal_like(x, torch.full((x.shape[0],), 7), g),
        "forward_sample": lambda x, g: forward_sample(x, 0.5, g),
    }


@pytest.mark.parametrize("name", list(_noise_draws()))
def test_noise_types_draw_per_element(name):
    fn = _noise_draws()[name]
    x = torch.zeros(2 * len(SEEDS), *SHAPE)  # two samples of each of three elements (sample-major)
    out = fn(x, _gens())
    for j, s in enumerate(SEEDS):
        assert torch.equal(_rows(out, j, len(SEEDS)), fn(x[:2], SampleGenerators.from_seeds([s])))
    assert torch.equal(fn(x[:2], SampleGenerators.from_seeds([SEEDS[0]])), fn(x[:2], torch.Generator().manual_seed(
        SEEDS[0])))  # one element: the same as its plain generator
    assert not torch.equal(_rows(out, 0, 3), _rows(out, 1, 3))


@pytest.fixture(scope="module")
def toy():
    sched = make_schedule("linear", 100)
    gm = GaussianMixture(torch.tensor([[-0.5] * 16, [0.5] * 16]), torch.tensor(0.2), shape=SHAPE)
    den = gm.denoiser(sched)
    data = [torch.rand(32, *SHAPE, generator=torch.Generator().manual_seed(0)) - 0.5]
    gamma = S.estimate_gamma(den, sched.respace(6), data, generator=torch.Generator().manual_seed(1))
    return sched, den, gamma


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "analytic_dpm", "paradigms"])
def test_samplers_give_an_element_the_same_sample_alone_or_in_a_batch(toy, sampler):
    sched, den, gamma = toy
    opts = {"steps": 6, **({"eta": 1.0} if sampler == "ddim" else {}), **({"gamma": gamma}
                                                                         if sampler == "analytic_dpm" else {})}

    def run(seeds):
        x_T = G.randn((len(seeds), *SHAPE), SampleGenerators.from_seeds([s + 100 for s in seeds]))
        return S.SAMPLERS[sampler](den, x_T, sched, generator=SampleGenerators.from_seeds(seeds), **opts)

    batch = run(SEEDS)
    for j, s in enumerate(SEEDS):
        alone = run([s])
        if sampler == "paradigms":  # a fixed-point solve: the batch converges to the tolerance together
            torch.testing.assert_close(batch[j : j + 1], alone, atol=0.05, rtol=0)
        else:
            assert torch.equal(batch[j : j + 1], alone)
    assert not torch.allclose(batch[0], batch[1])


def test_guidance_draws_per_element(toy):
    sched, den, _ = toy
    mask = torch.ones(1, *SHAPE)
    mask[..., :2] = 0
    op = Inpainting(mask)

    def runs(seeds):
        gens = SampleGenerators.from_seeds(seeds)
        known = torch.zeros(len(seeds), *SHAPE)
        x_T = G.randn(known.shape, SampleGenerators.from_seeds([s + 1 for s in seeds]))
        rp = repaint(den, x_T, sched, known, mask, steps=4, jump_length=2, resample=2, generator=gens)
        dr = ddrm(den, op(known), op, sched, sigma_y=0.05, steps=4, generator=SampleGenerators.from_seeds(seeds))
        return rp, dr

    batch = runs(SEEDS)
    for j, s in enumerate(SEEDS):
        for got, alone in zip(batch, runs([s]), strict=True):
            assert torch.equal(got[j : j + 1], alone)


def test_sample_n_repeats_sample_major_and_keeps_each_element(toy):
    """What methods do: n samples of B elements in one chain; element j's samples equal its run alone."""
    sched, den, _ = toy

    def run(seeds):
        return sample_n(den, (len(seeds), *SHAPE), sched, n_samples=2, sampler="ddpm", steps=5,
                        device=torch.device("cpu"), generator=SampleGenerators.from_seeds(seeds))

    batch = run(SEEDS)  # (n, B, C, H, W)
    assert batch.shape == (2, 3, *SHAPE)
    for j, s in enumerate(SEEDS):
        assert torch.equal(batch[:, j : j + 1], run([s]))
    assert not torch.equal(batch[0, 0], batch[1, 0])  # the two samples of an element differ
