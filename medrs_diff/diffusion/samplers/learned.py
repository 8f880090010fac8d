"""Samplers that walk few-step chains learned after training: BDDM schedules and learned step masks.

A trained model's chains live on its training :class:`Schedule`, in ``schedule.learned``::

    schedule.learned = {"bddm": {10: <Schedule of 10 steps>, ...}, "mask": {20: <Schedule>, ...}}

keyed by the kind and the chain's number of steps (= network evaluations). The sampler ``bddm`` walks
``schedule.learned["bddm"][steps]`` with ancestral DDPM (BDDM's sampler), ``masked`` walks
``schedule.learned["mask"][steps]`` with DDIM (the masks are learned against the deterministic
full chain); both take the options of the sampler they run (``clip``, ``prediction_type``, hooks,
``eta`` for ``masked``, ``variance`` for ``bddm``). ``steps=None`` uses the one fitted chain when
exactly one is fitted. A step count that was not fitted, or a schedule without learned chains, is
refused with one line listing the fitted counts / saying how to fit them: nothing is respaced
silently. Every method that samples with its ``method.schedule`` gets these samplers without code of
its own; a checkpoint carries the chains (:func:`chains_state` / :func:`attach_state`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..generators import GeneratorLike
from ..schedules import Schedule
from .base import Denoiser, Hook
from .ddim import ddim
from .ddpm import ddpm

#: learned-chain kind -> the sampler name that walks it
KIND_SAMPLERS = {"bddm": "bddm", "mask": "masked"}
#: sampler name -> learned-chain kind
SAMPLER_KINDS = {v: k for k, v in KIND_SAMPLERS.items()}
FIT_HINT = ("fit one after training: `medrs-diff fit-schedule --checkpoint CKPT --kind {kind} --steps N "
            "--output NEW.ckpt` (or the LearnedSchedule callback in the recipe), then sample from NEW.ckpt")


def _learned(schedule: Schedule) -> dict[str, dict[int, Schedule]]:
    learned = getattr(schedule, "learned", None)
    if learned is None:
        learned = {}
        schedule.learned = learned
    return learned


def fitted_steps(schedule: Schedule, kind: str) -> list[int]:
    """The step counts of the ``kind`` chains attached to ``schedule`` (ascending; [] when none)."""
    _check_kind(kind)
    return sorted(_learned(schedule).get(kind, {}))


def _check_kind(kind: str) -> None:
    if kind not in KIND_SAMPLERS:
        raise ValueError(f"unknown learned-chain kind {kind!r}; choose one of {', '.join(KIND_SAMPLERS)}")


def learned_chain(schedule: Schedule, kind: str, steps: int | None) -> Schedule:
    """The fitted ``kind`` chain of ``steps`` steps; ``ValueError`` (one line, with the fix) otherwise."""
    _check_kind(kind)
    chains = _learned(schedule).get(kind) or {}
    sampler = KIND_SAMPLERS[kind]
    if not chains:
        raise ValueError(f"sampler {sampler!r}: this model has no fitted {kind} chain; "
                         + FIT_HINT.format(kind=kind))
    if steps is None:
        if len(chains) == 1:
            return next(iter(chains.values()))
        raise ValueError(f"sampler {sampler!r}: several {kind} chains are fitted; give steps, one of "
                         f"{', '.join(map(str, sorted(chains)))}")
    if steps not in chains:
        raise ValueError(f"sampler {sampler!r}: no {kind} chain of {steps} steps is fitted (fitted: "
                         f"{', '.join(map(str, sorted(chains)))}); pass one of those steps, or fit {steps} steps")
    return chains[steps]


def attach_chain(schedule: Schedule, kind: str, chain: Schedule) -> None:
    """Attach a learned chain to the training ``schedule`` (its training alpha-bar must be the same)."""
    _check_kind(kind)
    parent = schedule.parent_alphas_cumprod
    if chain.num_train_timesteps != parent.numel() or not torch.allclose(chain.parent_alphas_cumprod, parent):
        raise ValueError(f"the {kind} chain was fitted on another training schedule ({chain.num_train_timesteps} "
                         f"steps) than this model's ({parent.numel()} steps); refit it on this model")
    t = chain.timesteps
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= parent.numel()):
        raise ValueError(f"the {kind} chain names training timesteps outside 0..{parent.numel() - 1}")
    _learned(schedule).setdefault(kind, {})[len(chain)] = chain


def chains_state(schedule: Schedule) -> dict[str, dict[str, dict[str, Tensor]]]:
    """The attached chains as plain tensors (weights-only loadable): ``{kind: {"<steps>": {alphas_cumprod,
    timesteps}}}``."""
    return {kind: {str(n): {"alphas_cumprod": c.alphas_cumprod.clone(), "timesteps": c.timesteps.clone()}
                   for n, c in sorted(chains.items())}
            for kind, chains in _learned(schedule).items() if chains}


def attach_state(schedule: Schedule, state: Mapping[str, Any]) -> None:
    """Inverse of :func:`chains_state`: rebuild the chains on ``schedule`` (the model's training schedule)."""
    for kind, chains in state.items():
        _check_kind(kind)
        for n, c in chains.items():
            chain = Schedule(c["alphas_cumprod"], c["timesteps"], schedule.parent_alphas_cumprod)
            if len(chain) != int(n):
                raise ValueError(f"the stored {kind} chain {n!r} has {len(chain)} steps")
            attach_chain(schedule, kind, chain)


def bddm(
    denoise: Denoiser,
    x_T: Tensor,
    schedule: Schedule,
    *,
    steps: int | None = None,
    prediction_type: str = "eps",
    variance: str = "fixed_small",
    clip: bool | tuple[float, float] = False,
    dynamic_threshold: float | None = None,
    hooks: Sequence[Hook] = (),
    generator: GeneratorLike = None,
    progress: bool | Callable = False,
) -> Tensor:
    """Ancestral DDPM over the fitted BDDM chain of ``steps`` steps (BDDM's sampler)."""
    chain = learned_chain(schedule, "bddm", steps)
    return ddpm(denoise, x_T, chain, steps=None, prediction_type=prediction_type, variance=variance, clip=clip,
                dynamic_threshold=dynamic_threshold, hooks=hooks, generator=generator, progress=progress)


def masked(
    denoise: Denoiser,
    x_T: Tensor,
    schedule: Schedule,
    *,
    steps: int | None = None,
    eta: float = 0.0,
    prediction_type: str = "eps",
    clip: bool | tuple[float, float] = False,
    dynamic_threshold: float | None = None,
    hooks: Sequence[Hook] = (),
    generator: GeneratorLike = None,
    progress: bool | Callable = False,
) -> Tensor:
    """DDIM over the learned step mask's chain of ``steps`` steps (deterministic with ``eta = 0``)."""
    chain = learned_chain(schedule, "mask", steps)
    return ddim(denoise, x_T, chain, steps=None, eta=eta, prediction_type=prediction_type, clip=clip,
                dynamic_threshold=dynamic_threshold, hooks=hooks, generator=generator, progress=progress)
