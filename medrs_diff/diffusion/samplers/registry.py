"""The one registry of samplers: name -> :class:`SamplerSpec` (the function plus what callers must know).

Every sampler is called the same way through its spec::

    SAMPLERS["ddim"](denoise, x_T, schedule, steps=20, generator=g, hooks=(), **options) -> Tensor

The spec forwards the generator to every sampler (a deterministic one ignores it), refuses hooks
where the sampler cannot run them, checks that required options are given (``analytic_dpm`` needs
``gamma``), rejects options the sampler does not take, and always returns the final sample as a
tensor (``paradigms`` returns a :class:`~.paradigms.ParadigmsResult`; the spec unwraps it). The
samplers' numerics are their own functions', unchanged. Register further samplers with
:func:`register_sampler`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..generators import GeneratorLike
from ..schedules import Schedule
from .analytic_dpm import analytic_dpm
from .base import Denoiser, Hook
from .ddim import ddim
from .ddpm import ddpm
from .dpm_solver_pp import dpm_solver_pp
from .gddim import gddim
from .learned import bddm, masked
from .paradigms import ParadigmsResult, paradigms

_FIXED = ("denoise", "x_T", "schedule")


@dataclass(frozen=True, eq=False)
class SamplerSpec:
    """A registered sampler.

    ``fn(denoise, x_T, schedule, *, ..., generator=None, ...)`` is the sampler function.
    ``stochastic``: it draws fresh noise along the chain with its default options (so samples
    differ per seed; ``ddim`` does only with ``eta > 0``, ``gddim`` with ``lam > 0``).
    ``stochastic_option``: the option that, when > 0, makes a sampler that is deterministic by default
    stochastic (``eta``, ``lam``); :meth:`is_stochastic` answers for given options. ``requires``: keyword
    options it cannot run without, each with what to pass. ``supports_hooks``: whether it runs per-step hooks
    (guidance, data consistency). ``result``: maps the function's return value to the final sample.
    """

    name: str
    fn: Callable[..., Any]
    description: str
    stochastic: bool
    requires: Mapping[str, str] = field(default_factory=dict)
    supports_hooks: bool = True
    result: Callable[[Any], Tensor] | None = None
    stochastic_option: str | None = None

    def is_stochastic(self, **options: Any) -> bool:
        """Whether a call with these options draws noise along the chain (so depends on the generator)."""
        if self.stochastic:
            return True
        value = options.get(self.stochastic_option) if self.stochastic_option is not None else None
        return value is not None and float(value) > 0

    @property
    def options(self) -> tuple[str, ...]:
        """Keyword options the sampler accepts besides ``denoise, x_T, schedule`` (``gamma``, ``steps``, ...)."""
        return tuple(p for p in inspect.signature(self.fn).parameters if p not in _FIXED)

    @property
    def default_steps(self) -> int | None:
        """Steps used when ``steps`` is not given (None: every step of the schedule)."""
        p = inspect.signature(self.fn).parameters.get("steps")
        return None if p is None or p.default is inspect.Parameter.empty else p.default

    def __call__(
        self,
        denoise: Denoiser,
        x_T: Tensor,
        schedule: Schedule,
        *,
        generator: GeneratorLike = None,
        hooks: Sequence[Hook] = (),
        **options: Any,
    ) -> Tensor:
        """Run the sampler; returns the final sample (same shape as ``x_T``)."""
        missing = [k for k in self.requires if options.get(k) is None]
        if missing:
            needs = "; ".join(f"{k}: {self.requires[k]}" for k in missing)
            raise ValueError(f"sampler {self.name!r} needs {', '.join(missing)} ({needs})")
        accepted = self.options
        unknown = sorted(k for k in options if k not in accepted)
        if unknown:
            raise ValueError(f"sampler {self.name!r} takes no option(s) {unknown}; it accepts {list(accepted)}")
        if hooks:
            if not self.supports_hooks:
                with_hooks = [n for n, s in SAMPLERS.items() if s.supports_hooks]
                raise ValueError(f"sampler {self.name!r} does not run per-step hooks; use one of {with_hooks}")
            options["hooks"] = tuple(hooks)
        out = self.fn(denoise, x_T, schedule, generator=generator, **options)
        return self.result(out) if self.result is not None else out


#: name -> spec, in registration order; read it through :func:`get_sampler` / :func:`sampler_names`.
SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(spec: SamplerSpec, *, replace: bool = False) -> SamplerSpec:
    """Add a sampler to :data:`SAMPLERS`; a taken name needs ``replace=True``."""
    if not isinstance(spec, SamplerSpec):
        raise TypeError(f"register_sampler takes a SamplerSpec, got {type(spec).__name__}")
    if "generator" not in inspect.signature(spec.fn).parameters:
        raise ValueError(f"sampler {spec.name!r} must accept a `generator` keyword (the same seed, the same sample)")
    if spec.name in SAMPLERS and not replace:
        raise ValueError(f"a sampler named {spec.name!r} is already registered; pass replace=True to override it")
    SAMPLERS[spec.name] = spec
    return spec


def sampler_names() -> tuple[str, ...]:
    """Registered sampler names, in registration order."""
    return tuple(SAMPLERS)


def check_sampler(name: str) -> None:
    """Raise ``ValueError`` naming the valid samplers when ``name`` is not registered."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def get_sampler(name: str) -> SamplerSpec:
    """The spec registered under ``name`` (``ValueError`` naming the valid ones otherwise)."""
    check_sampler(name)
    return SAMPLERS[name]


def _final_sample(result: ParadigmsResult) -> Tensor:
    return result.sample


register_sampler(SamplerSpec(
    "ddpm", ddpm, "ancestral DDPM, exact on respaced schedules (all training steps by default)", stochastic=True,
))
register_sampler(SamplerSpec(
    "ddim", ddim, "DDIM; deterministic with eta=0 (default), stochastic with eta>0", stochastic=False,
    stochastic_option="eta",
))
register_sampler(SamplerSpec(
    "dpm_solver_pp", dpm_solver_pp, "DPM-Solver++ 2M/3M multistep ODE solver, deterministic, few steps",
    stochastic=False,
))
register_sampler(SamplerSpec(
    "analytic_dpm", analytic_dpm, "ancestral sampling with Analytic-DPM's optimal variances", stochastic=True,
    requires={"gamma": "an AnalyticGamma from estimate_gamma(denoise, schedule, data)"},
))
register_sampler(SamplerSpec(
    "paradigms", paradigms, "ParaDiGMS parallel Picard iterations reproducing ddpm (or ddim via base='ddim')",
    stochastic=True, supports_hooks=False, result=_final_sample,
))
register_sampler(SamplerSpec(
    "gddim", gddim, "gDDIM exponential integrator with multistep eps extrapolation (order 0 is DDIM); "
    "deterministic with lam=0 (default), stochastic with lam>0 (order=0; lam=1 is DDPM's posterior)",
    stochastic=False, stochastic_option="lam",
))
register_sampler(SamplerSpec(
    "bddm", bddm, "DDPM over the model's fitted BDDM schedule (steps: a fitted count; fit-schedule --kind bddm)",
    stochastic=True,
))
register_sampler(SamplerSpec(
    "masked", masked, "DDIM over the model's learned step mask (steps: a fitted count; fit-schedule --kind mask)",
    stochastic=False,
))
