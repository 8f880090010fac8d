"""The contract every published method implements, so training, inference and the CLI treat them alike.

:class:`Method` is the base of every method, diffusion chain or not (a regression baseline, a
conditional normalizing flow): it declares what it reads and writes (:attr:`Method.io_spec`),
``loss(batch, generator)``, ``predict(batch, ...)``, ``validation_metrics(batch, out)``, the module
the recipe's fast-path options apply to (:meth:`Method.fast_path_target`) and its constructor
arguments (:meth:`Method.hparams`, captured automatically for every subclass, so checkpoints can
rebuild it). :class:`DiffusionMethod` adds the engine members: the ``denoiser`` net, the
``schedule``, the default sampler and number of steps.

A method never reads files: it takes batch dicts whose keys are named in :mod:`medrs_diff.data.keys`
and returns tensors.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ..data.keys import LABEL, MASK
from ..diffusion.generators import GeneratorLike
from ..diffusion.process import check_spatial
from ..diffusion.samplers import SAMPLERS
from ..diffusion.samplers.learned import SAMPLER_KINDS, learned_chain
from ..diffusion.schedules import Schedule
from ..errors import ArgumentError, DataError
from ..metrics import dice, psnr

#: PSNR of identical images is infinite; the default validation PSNR is capped here so epoch means stay finite.
PSNR_CAP_DB = 100.0


@dataclass(frozen=True)
class IOSpec:
    """What a method reads and writes, so inference can feed and write it without knowing it.

    ``inputs``: batch key -> channel count, the first being the key inference feeds from the input
    file (e.g. ``{"image": 1}`` for segmentation, ``{"cond": 3}`` for super-resolution).
    ``outputs``: names of the tensors ``predict`` returns that inference writes, the first being the
    main one (``prediction``); others (``uncertainty``, ``probability``, ``reliability``,
    ``anomaly_map``, ``forecast``, ...) go beside it. ``data_space``: outputs mapped back from model
    space to the input's units by the data module's scaling (restored images); the others are written
    as they are (masks, probabilities, variances). ``grid_factor``: output pixels per input pixel
    along each spatial axis (the super-resolution scale). ``spatial_dims``: 2 or 3. ``task``: the
    field's metric family (``seg``, ``image``, ``spectral``, ``forecast``, ``class``).
    """

    inputs: dict[str, int]
    outputs: tuple[str, ...] = ("prediction",)
    spatial_dims: int = 2
    grid_factor: int = 1
    task: str = "image"
    data_space: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_key(self) -> str:
        return next(iter(self.inputs))

    @property
    def in_channels(self) -> int:
        return self.inputs[self.input_key]


def check_sampler(name: str) -> None:
    """Raise :class:`~medrs_diff.errors.ArgumentError` naming the registered samplers when ``name`` is unknown."""
    if name not in SAMPLERS:
        raise ArgumentError("sampler", f"unknown sampler {name!r}", f"choose one of {', '.join(SAMPLERS)}")


def check_learned_sampler(method: Any, sampler: str | None, steps: int | None) -> None:
    """Before any compute: ``bddm`` / ``masked`` need a fitted chain of the requested (or the method's default)
    number of steps on ``method.schedule``; :class:`~medrs_diff.errors.ArgumentError` listing the fitted ones."""
    if sampler not in SAMPLER_KINDS:
        return
    n = steps if steps is not None else getattr(method, "sampling_steps", None)
    schedule = getattr(method, "schedule", None)
    try:
        if schedule is None:
            raise ValueError(f"sampler {sampler!r}: {type(method).__name__} has no diffusion schedule")
        learned_chain(schedule, SAMPLER_KINDS[sampler], n)
    except ValueError as err:
        where, _, rest = str(err).partition(": ")
        problem, _, fix = rest.rpartition("; ")
        raise ArgumentError(where, problem or rest, fix or "fit a chain first") from None


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so recorded arguments round-trip through YAML / jsonargparse."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _capture_init(init: Any) -> Any:
    """Wrap a subclass ``__init__`` so the outermost call records its bound arguments (defaults included)."""
    sig = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: N807 - it is the class's __init__
        state = self.__dict__
        depth = state.get("_init_depth", 0)
        if depth == 0:
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            recorded: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:
                kind = sig.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update({k: _plain(v) for k, v in value.items()})
                else:
                    recorded[name] = _plain(value)
            state["_hparams"] = recorded
        state["_init_depth"] = depth + 1
        try:
            init(self, *args, **kwargs)
        finally:
            if depth == 0:
                self.__dict__.pop("_init_depth", None)
            else:
                self.__dict__["_init_depth"] = depth

    return __init__


class Method(nn.Module):
    """Base class of every method (diffusion or not).

    Subclasses implement :meth:`loss` and :meth:`predict` and declare what they read and write:
    ``input_key`` (the batch key inference feeds: ``image`` for segmentation, ``cond`` for
    restoration), ``target_key`` (what is predicted), ``in_channels`` / ``out_channels``,
    ``spatial_dims``, ``task`` and ``outputs`` / ``data_space``; :attr:`io_spec` is built from them
    (override it for several inputs or a grid factor). Constructor arguments are recorded once, by
    the outermost ``__init__`` call, and returned by :meth:`hparams`.
    """

    name: ClassVar[str] = "method"
    #: what the prediction is, so training and evaluation pick the field's metrics: "seg" or "image"
    task: str = "image"
    input_key: str = "image"
    target_key: str = "label"
    in_channels: int = 1
    out_channels: int = 1
    spatial_dims: int = 2
    #: names of the tensors ``predict`` returns that inference writes (the first is the main one)
    outputs: tuple[str, ...] = ("prediction",)
    #: outputs that live in model space and go back to data units through the data module's scaling
    data_space: tuple[str, ...] = ()
    #: whether ``predict`` samples with the registered samplers, so a ``sampler`` name applies to it (inference
    #: refuses ``--sampler`` for methods that do not: regression baselines, DDBM's own bridge sampler)
    uses_samplers: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _capture_init(cls.__dict__["__init__"])

    # -- what the method reads and writes ------------------------------------------------------------
    @property
    def grid_factor(self) -> int:
        """Output pixels per input pixel along each spatial axis (super-resolution scale); 1 otherwise."""
        return 1

    @property
    def size_multiple(self) -> int:
        """Input spatial sizes (tiles) must be multiples of this; 1 when any size works."""
        return 1

    @property
    def io_spec(self) -> IOSpec:
        """Inputs (batch key -> channels), outputs, grid factor, task and data-space outputs; ``extra`` holds
        ``size_multiple`` (what input tile sizes must be a multiple of)."""
        return IOSpec(
            inputs={self.input_key: int(self.in_channels)}, outputs=tuple(self.outputs),
            spatial_dims=int(self.spatial_dims), grid_factor=int(self.grid_factor), task=self.task,
            data_space=tuple(self.data_space), extra={"size_multiple": int(self.size_multiple)},
        )

    def hparams(self) -> dict[str, Any]:
        """Constructor arguments (tuples as lists), stored in checkpoints so a model can be rebuilt from them."""
        return copy.deepcopy(self.__dict__.get("_hparams", {}))

    # -- training and inference ---------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss for a batch and a dict of scalar logs."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(
        self,
        batch: dict[str, Any],
        *,
        sampler: str | None = None,
        steps: int | None = None,
        n_samples: int | None = None,
        generator: GeneratorLike = None,
        progress: bool = False,
    ) -> dict[str, Tensor]:
        """Outputs for a batch: ``prediction`` plus the other names in :attr:`io_spec` (``uncertainty``, ...).

        Diffusion methods sample with ``sampler`` / ``steps`` / ``n_samples`` / ``generator``; other
        methods ignore what does not apply to them, so every method is called the same way.
        ``generator`` is one stream for the batch or a
        :class:`~medrs_diff.diffusion.generators.SampleGenerators` (one per batch element: each
        element's samples then depend only on its own generator).
        """
        raise NotImplementedError

    def validation_metrics(self, batch: Mapping[str, Any], out: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Scalar metrics of one batch (means over the batch). Default: Dice for ``label`` / ``mask`` targets (mean
        over the foreground classes when the method has ``num_classes`` > 2),
        PSNR for image targets (model space [-1, 1], data range 2, capped at 100 dB); empty without a target."""
        key = self.target_key
        ref = batch.get(key)
        if not isinstance(ref, Tensor):
            return {}
        pred = out["prediction"].float()
        ref = ref.float()
        if pred.shape != ref.shape:
            raise ValueError(
                f"{type(self).__name__}: prediction {tuple(pred.shape)} and batch[{key!r}] {tuple(ref.shape)} "
                "differ in shape; override validation_metrics(batch, out) on the method to compare them"
            )
        if key in (LABEL, MASK):
            k = int(getattr(self, "num_classes", 2))
            if k > 2:  # class-index maps: mean Dice over the foreground classes 1 .. K-1
                scores = [dice((pred == c).flatten(1), (ref.round() == c).flatten(1)).float().mean()
                          for c in range(1, k)]
                return {"dice": torch.stack(scores).mean()}
            flat = (pred.shape[0] * pred.shape[1], *pred.shape[2:])
            return {"dice": dice(pred.reshape(flat), (ref > 0.5).reshape(flat), threshold=0.5).float().mean()}
        return {"psnr": psnr(pred, ref, data_range=2.0).clamp(max=PSNR_CAP_DB).float().mean()}

    def fast_path_target(self) -> nn.Module:
        """The module the recipe's ``fast_path`` options (channels_last, checkpointing, compile) apply to."""
        return self

    # -- input checks -------------------------------------------------------------------------------
    def check_input(self, x: Tensor, where: str = "input") -> None:
        """Raise :class:`~medrs_diff.errors.DataError` when an input lacks the expected channels or dimensions."""
        if x.ndim != self.spatial_dims + 2:
            raise DataError(
                where, f"expected a {self.spatial_dims}-D image batch of shape (B, C, ...spatial) with "
                f"{self.spatial_dims + 2} axes, got shape {tuple(x.shape)}",
                f"pass {self.spatial_dims}-D images (the method was built with spatial_dims={self.spatial_dims})",
            )
        if x.shape[1] != self.in_channels:
            raise DataError(
                where, f"the {self.name} model expects {self.in_channels} input channel(s) but got {x.shape[1]}",
                f"pass an image with {self.in_channels} channel(s) (bands/modalities)",
            )


def check_mask_pair(image: Tensor, label: Tensor, method: str) -> None:
    """A binary-segmentation batch: ``label`` (B, 1, ...) on the grid of ``image`` (B, C, ...)."""
    if label.shape[0] != image.shape[0] or label.shape[2:] != image.shape[2:]:
        raise DataError("batch", f"image {tuple(image.shape)} and label {tuple(label.shape)} differ in batch or "
                        "spatial shape", "give every image a mask on the same grid")
    if label.shape[1] != 1:
        raise DataError("batch", f"{method} segments one foreground channel; the label has {label.shape[1]}",
                        "pass a single-channel binary mask")


def check_sr_pair(lr: Tensor, hr: Tensor, scale: int) -> None:
    """A super-resolution batch: ``hr`` has the channels of ``lr`` and ``scale`` times its spatial size."""
    want = tuple(s * scale for s in lr.shape[2:])
    if tuple(hr.shape[2:]) != want or hr.shape[1] != lr.shape[1]:
        raise DataError(
            "batch", f"HR {tuple(hr.shape)} does not match LR {tuple(lr.shape)} at scale {scale}: expected "
            f"spatial size {want} with {lr.shape[1]} channel(s)", "pair each LR image with its HR image",
        )


def sr_size_multiple(net_multiple: int, scale: int) -> int:
    """The LR size multiple of a super-resolution net: LR sizes whose HR size (x ``scale``) the net can take."""
    return int(net_multiple) // math.gcd(int(net_multiple), int(scale))


def mask_batch(method: Method, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
    """A segmentation method's checked ``(image, label or None)`` from a batch."""
    image = batch[method.input_key]
    check_spatial(image, "image")
    method.check_input(image, "image")
    label = batch.get(method.target_key)
    if label is not None:
        check_mask_pair(image, label, type(method).__name__)
    return image, label


def sr_batch(method: Method, batch: dict[str, Any], scale: int) -> tuple[Tensor, Tensor | None]:
    """A super-resolution method's checked ``(lr, hr or None)`` from a batch."""
    lr = batch[method.input_key]
    check_spatial(lr, "LR image")
    method.check_input(lr, "LR image")
    hr = batch.get(method.target_key)
    if hr is not None:
        check_sr_pair(lr, hr, scale)
    return lr, hr


class DiffusionPair(NamedTuple):
    """A batch seen by a diffusion method's chain: the conditioned net and the clean target, in model space.

    ``denoise(x_t, t)``: the method's denoiser conditioned on the batch (x_t shaped like ``x0``, ``t``
    the training timesteps, (B,)); it predicts ``prediction_type`` (``eps``, ``x0`` or ``v``) on the
    first ``x0.shape[1]`` channels. ``x0``: what the chain diffuses for this batch (the SR residual,
    the encoded mask, the latent). ``options``: the sampler options ``predict`` uses (``clip``).
    """

    denoise: Callable[[Tensor, Tensor], Tensor]
    x0: Tensor
    prediction_type: str = "eps"
    options: Mapping[str, Any] | None = None


def no_diffusion_pair(method: Method, switch: str) -> ArgumentError:
    """The refusal of :meth:`DiffusionMethod.diffusion_pair` for a recipe switch whose chain is not a plain DDPM one."""
    return ArgumentError(
        f"method {method.name}", f"with {switch} the chain is not a plain DDPM chain, so no BDDM schedule or step mask "
        "can be fitted to it", f"fit learned schedules on the method without {switch}",
    )


class DiffusionMethod(Method):
    """A method whose prediction is drawn by a diffusion sampler from :data:`SAMPLERS`.

    Declares ``schedule`` (the training noise schedule), ``sampler`` (the default sampler name, see
    :attr:`default_sampler`), ``sampling_steps`` (its default number of steps; None: the sampler's
    own default) and :attr:`denoiser`, the net that maps ``(x_t, t, ...)`` to the prediction and that
    the fast path applies to.
    """

    schedule: Schedule
    sampler: str = "ddpm"
    sampling_steps: int | None = None
    uses_samplers = True

    @property
    def denoiser(self) -> nn.Module:
        """The denoising net (the module the sampler calls every step)."""
        raise NotImplementedError(f"{type(self).__name__} must declare its denoiser (a property returning the net)")

    @property
    def default_sampler(self) -> str:
        """The sampler ``predict`` uses when none is given."""
        return self.sampler

    def fast_path_target(self) -> nn.Module:
        return self.denoiser

    #: why this method's sampling chain can take no learned schedule, for every configuration ("" when it can,
    #: or when :meth:`diffusion_pair` is simply not implemented); :meth:`pair_refusal` turns it into the error
    no_learned_chain: ClassVar[str] = ""

    def pair_refusal(self) -> ArgumentError | None:
        """The one-line error :meth:`diffusion_pair` raises for this configuration, or None when it returns a pair.

        Checked before any training or fitting (the ``LearnedSchedule`` callback, ``medrs-diff fit-schedule``).
        A method whose pair depends on a recipe switch overrides this (return :func:`no_diffusion_pair`).
        """
        if self.no_learned_chain:
            return ArgumentError(
                f"method {self.name}", f"{self.no_learned_chain}, so no BDDM schedule or step mask can be fitted to "
                "it", "sample it with the evenly spaced samplers (ddpm, ddim, ...)",
            )
        if type(self).diffusion_pair is DiffusionMethod.diffusion_pair:
            return ArgumentError(
                f"method {self.name}", "does not expose its conditioned denoiser and clean x0 (diffusion_pair), which "
                "fitting a learned schedule (BDDM / step masks) needs", "use a method that implements "
                f"diffusion_pair ({', '.join(pair_methods())})",
            )
        return None

    def diffusion_pair(self, batch: dict[str, Any]) -> DiffusionPair:
        """The conditioned denoiser and clean x0 of a training batch (optional; learned schedules need it).

        An implementation starts with ``if (err := self.pair_refusal()) is not None: raise err``.
        """
        err = self.pair_refusal()
        raise err if err is not None else NotImplementedError(f"{type(self).__name__}.diffusion_pair")


def pair_methods() -> list[str]:
    """Short names of the project's diffusion methods that implement :meth:`DiffusionMethod.diffusion_pair`
    (derived from the loaded classes, so the refusal message never goes stale)."""
    names, stack = set(), list(DiffusionMethod.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if (cls.__module__.startswith("medrs_diff.") and "name" in vars(cls) and not cls.no_learned_chain
                and cls.diffusion_pair is not DiffusionMethod.diffusion_pair):
            names.add(cls.name)
    return sorted(names)
