"""BDDM: bilateral denoising diffusion (Lam et al. ICLR 2022): a learned few-step noise schedule.

Over a FROZEN noise predictor eps_theta, a small schedule network sigma_phi gives the next (smaller)
noise level from the current sample: ``beta_hat_n = min(1 - abar_n, beta_{n+1}) * sigma_phi(x_n, beta_{n+1})``.
It is trained with BDDM's step-wise loss (the per-step term of its tighter bound), with
``delta = 1 - abar_n`` and ``r = beta_hat / delta``::

    L_step = ||sqrt(delta) eps - (beta_hat / sqrt(delta)) eps_theta(x_n, n)||^2 / (2 (delta - beta_hat))
             + 1/4 log(delta / beta_hat) + D/2 (beta_hat / delta - 1)

(D: elements per sample). During training ``beta_{n+1}`` is the beta of a jump of j training steps,
``1 - abar_{n+j} / abar_n``, so the network sees large betas too: the official configuration fixes
j = tau (``random_tau=False``); by default j is drawn in 1..tau per sample, which on the engine's
Gaussian mixture gave better 10-step schedules (W1 0.093 vs 0.116) because the search then meets
(noise level, beta_{n+1}) pairs the network was trained on.
Schedule search (the paper's noise scheduling): from x_N ~ N(0, I) at given
(abar_N, beta_hat_N), step ``abar_{n-1} = abar_n / (1 - beta_hat_n)``, draw ``x_{n-1} ~ p_theta``,
and ask the network for ``beta_hat_{n-1} = min(1 - abar_{n-1}, beta_hat_n) sigma_phi(x_{n-1})``; stop when
beta_hat falls below the training chain's first beta (or at ``max_steps``). A grid over
(abar_N, beta_hat_N) is searched and the schedule whose samples score best on validation data is kept.

The result is an ordinary respaced :class:`Schedule` holding the searched noise levels abar_N, abar_{N-1},
... (consecutive levels differ by exactly the learned beta_hat), walked by the engine's DDPM (the
paper's sampler) or DDIM; as everywhere in the engine its last step lands on the x0 estimate (BDDM's
own last beta_hat_1 is not used). The network is conditioned on integer training timesteps,
so each learned noise level is given the training timestep of nearest log-SNR (BDDM's score nets take
the continuous noise level instead; with T = 1000 the difference is small). Other departures:
sigma_phi reads summary statistics of x_n (the paper's is a small conv net on audio); the search runs
``search_batch`` chains and uses the batch mean of sigma_phi (``search_batch=1``: the paper's one chain).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .schedules import Schedule

SampleFn = Callable[[int, torch.Generator], Tensor]


class ScheduleNet(nn.Module):
    """sigma_phi(x_n, beta_{n+1}) in (0, 1): an MLP on per-sample statistics of x_n and log beta_{n+1}."""

    n_features = 5

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(self.n_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1)
        )

    @staticmethod
    def features(x: Tensor, beta_next: Tensor) -> Tensor:
        f = x.reshape(x.shape[0], -1).float()
        m2 = (f**2).mean(1)
        return torch.stack(
            [m2.clamp_min(1e-8).log(), f.abs().mean(1), f.mean(1), f.std(1, unbiased=False),
             beta_next.float().clamp_min(1e-8).log()],
            dim=1,
        )

    def forward(self, x: Tensor, beta_next: Tensor) -> Tensor:
        return torch.sigmoid(self.mlp(self.features(x, beta_next))).squeeze(1)


def beta_hat(net: ScheduleNet, x: Tensor, abar: Tensor, beta_next: Tensor, max_ratio: float = 0.999) -> Tensor:
    """beta_hat_n = min(1 - abar_n, beta_{n+1}) sigma_phi, capped below 1 - abar_n (keeps the loss finite)."""
    delta = 1.0 - abar
    return torch.minimum(delta, beta_next) * net(x, beta_next).double().clamp(1e-6, max_ratio)


def step_loss(eps: Tensor, eps_hat: Tensor, abar: Tensor, b_hat: Tensor) -> Tensor:
    """BDDM's step-wise loss per sample (eps: true noise, eps_hat: the frozen net's, (B, ...))."""
    d = eps[0].numel()
    delta = 1.0 - abar
    e, eh = eps.reshape(eps.shape[0], -1).double(), eps_hat.reshape(eps.shape[0], -1).double()
    res = (delta.sqrt()[:, None] * e - (b_hat / delta.sqrt())[:, None] * eh).pow(2).sum(1)
    return res / (2 * (delta - b_hat)) + 0.25 * torch.log(delta / b_hat) + d / 2 * (b_hat / delta - 1)


@dataclass
class FitResult:
    net: ScheduleNet
    losses: list[float]  # mean step loss per iteration


def fit_schedule_net(
    denoise: Callable[[Tensor, Tensor], Tensor],
    schedule: Schedule,
    data: SampleFn,
    *,
    tau: int | None = None,
    random_tau: bool = True,
    iters: int = 600,
    batch: int = 256,
    lr: float = 3e-3,
    hidden: int = 32,
    generator: torch.Generator | None = None,
) -> FitResult:
    """Train sigma_phi over the frozen eps-predictor ``denoise(x_t, t)`` on ``schedule`` (a training
    chain); ``data(n, generator)`` draws n clean samples. ``tau`` defaults to T // 15 (66 of 1000)."""
    n_train = schedule.num_train_timesteps
    tau = max(1, n_train // 15) if tau is None else tau
    if not 1 <= tau < n_train:
        raise ValueError(f"tau must lie in 1..{n_train - 1} (training steps), got {tau}")
    if iters < 1 or batch < 1:
        raise ValueError("iters and batch must be >= 1")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # the net's init follows the generator, global RNG untouched
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        net = ScheduleNet(hidden)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    table = schedule.parent_alphas_cumprod
    losses: list[float] = []
    for _ in range(iters):
        n = torch.randint(0, n_train - tau, (batch,), generator=g)
        jump = torch.randint(1, tau + 1, (batch,), generator=g) if random_tau else torch.full_like(n, tau)
        abar, abar_jump = table[n], table[n + jump]
        beta_next = 1.0 - abar_jump / abar
        x0 = data(batch, g)
        eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        a = abar.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        x_n = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with torch.no_grad():
            eps_hat = denoise(x_n, n)
        if eps_hat.shape != x_n.shape:
            raise ValueError(f"denoise returned shape {tuple(eps_hat.shape)} for x_t of {tuple(x_n.shape)}; BDDM "
                             "needs an eps-predictor (split off any learned-variance channels first)")
        loss = step_loss(eps, eps_hat, abar, beta_hat(net, x_n, abar, beta_next)).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError("BDDM step loss is not finite; check the frozen model's outputs")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    net.eval()
    return FitResult(net, losses)


def nearest_timesteps(parent_alphas_cumprod: Tensor, abar: Tensor) -> Tensor:
    """The training timestep of nearest log-SNR for each alpha-bar (what the frozen net is told)."""
    def lsnr(a: Tensor) -> Tensor:
        a = a.double().clamp(1e-12, 1 - 1e-12)
        return a.log() - (-a).log1p()

    return (lsnr(parent_alphas_cumprod)[None, :] - lsnr(abar)[:, None]).abs().argmin(1)


def learned_schedule(abars: Sequence[float] | Tensor, parent: Schedule) -> Schedule:
    """A sampling chain from the searched noise levels (``abars`` ascending in noise, index 0 the
    least noisy); its betas between levels are the learned beta_hat, each level is given the
    training timestep of nearest log-SNR."""
    ac = torch.as_tensor(abars, dtype=torch.float64)
    if ac.numel() < 1 or not torch.isfinite(ac).all() or ((ac <= 0) | (ac >= 1)).any():
        raise ValueError("learned alpha-bars must be finite and lie in (0, 1)")
    return Schedule(ac, nearest_timesteps(parent.parent_alphas_cumprod, ac), parent.parent_alphas_cumprod)


@torch.no_grad()
def search_schedule(
    net: ScheduleNet,
    denoise: Callable[[Tensor, Tensor], Tensor],
    schedule: Schedule,
    abar_N: float,
    beta_N: float,
    shape: tuple[int, ...],
    *,
    max_steps: int,
    search_batch: int = 16,
    generator: torch.Generator | None = None,
) -> Schedule:
    """BDDM noise scheduling from (abar_N, beta_hat_N): at most ``max_steps`` learned betas."""
    if not (0 < abar_N < 1 and 0 < beta_N < 1):
        raise ValueError(f"abar_N and beta_N must lie in (0, 1), got {abar_N}, {beta_N}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    parent = schedule.parent_alphas_cumprod
    beta_min = float(1.0 - parent[0])  # the training chain's first beta
    x = torch.randn(search_batch, *shape, generator=generator)
    abar, beta = abar_N, min(beta_N, 1 - abar_N)
    abars = [abar]
    while len(abars) < max_steps:
        abar_prev = abar / (1 - beta)
        t = nearest_timesteps(parent, torch.tensor([abar])).expand(search_batch)
        eps = denoise(x, t)
        x0 = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
        var = beta * (1 - abar_prev) / (1 - abar)  # q(x_{n-1} | x_n, x_0) variance (fixed-small)
        mean = (beta * math.sqrt(abar_prev) * x0 + (1 - abar_prev) * math.sqrt(1 - beta) * x) / (1 - abar)
        x = mean + math.sqrt(var) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        b_next = torch.full((search_batch,), beta, dtype=torch.float64)
        a_prev = torch.full((search_batch,), abar_prev, dtype=torch.float64)
        new_beta = float(beta_hat(net, x, a_prev, b_next).mean())
        if new_beta < beta_min:
            break
        abar, beta = abar_prev, new_beta
        abars.append(abar)
    return learned_schedule(abars[::-1], schedule)


@dataclass
class BDDMResult:
    schedule: Schedule  # the best few-step chain found
    score: float  # its validation score (lower is better)
    abar_N: float
    beta_N: float
    candidates: list[tuple[float, float, int, float]]  # (abar_N, beta_N, steps, score) per grid point


def grid_search(
    net: ScheduleNet,
    denoise: Callable[[Tensor, Tensor], Tensor],
    schedule: Schedule,
    shape: tuple[int, ...],
    score: Callable[[Schedule], float],
    *,
    max_steps: int,
    abar_grid: Sequence[float] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    beta_grid: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    search_batch: int = 16,
    seed: int = 0,
) -> BDDMResult:
    """Search each (abar_N, beta_hat_N) of the grid; keep the schedule with the lowest ``score``
    (e.g. a distance of its samples to validation data)."""
    best: BDDMResult | None = None
    cands: list[tuple[float, float, int, float]] = []
    for a in abar_grid:
        for b in beta_grid:
            g = torch.Generator().manual_seed(seed)
            chain = search_schedule(net, denoise, schedule, a, b, shape, max_steps=max_steps,
                                    search_batch=search_batch, generator=g)
            s = float(score(chain))
            cands.append((a, b, len(chain), s))
            if math.isfinite(s) and (best is None or s < best.score):
                best = BDDMResult(chain, s, a, b, cands)
    if best is None:
        raise FloatingPointError("BDDM grid search: no candidate schedule gave a finite score")
    best.candidates = cands
    return best
