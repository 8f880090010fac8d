"""Latent diffusion for any image method (Rombach et al. CVPR 2022): a recipe switch that runs a method in the
latent space of a frozen first stage (``autoencoder_kl`` or ``autoencoder_vq``).

``method: {class_path: SRDiff, init_args: {...}}`` is the inner method, built in latent space: where its arguments
take ``in_channels`` / ``out_channels`` and the recipe leaves them out, they are set to the autoencoder's latent
channel count (a given one must equal it); its ``scale`` and other geometry are the latent grid's. ``autoencoder``
is the last.ckpt of an ``autoencoder_kl`` / ``autoencoder_vq`` fit run, read once at construction (EMA weights when
present, through :mod:`medrs_diff.io.checkpoint_file`) and frozen; its architecture is recorded as the argument
``autoencoder_config`` and its weights live in this method's state dict, so a latent checkpoint rebuilds, and
``infer`` runs, without the autoencoder file.

Training (``loss``): the target (the inner method's ``target_key``) is encoded to a posterior sample drawn
with the engine's generator and multiplied by the latent scale; each condition the inner method reads (its
io_spec inputs) is, per ``conditions`` (key -> mode):

- ``encode`` (default): the posterior **mean** of the same autoencoder, scaled alike (the condition must
  have the autoencoder's channels: an LR image of the same sensor, a speckled or cloudy image);
- ``resample``: average-pooled by the autoencoder factor ``f``, channels unchanged (a condition of other
  channels that keeps its grid relation to the target);
- ``keep``: as it is (LDM's super-resolution setup: an x``f`` LR image is already on the HR latent grid and
  the inner method concatenates it).

then the inner method's ``loss`` runs on that latent batch. ``predict`` runs the inner ``predict`` and decodes
its image-valued outputs (its ``data_space`` outputs, ``samples`` and any other returned tensor shaped like
the latent prediction, e.g. SRDiff's ``baseline``) into the image space; ``uncertainty`` becomes the
pixel-wise variance of the decoded samples (zeros for one sample). Other non-data-space outputs of the inner
method (masks, probabilities) live on the latent grid and are not declared. ``io_spec``: image-space channels,
``grid_factor`` = inner factor (x ``f`` when the input is kept), ``size_multiple`` = ``f`` x the inner one
(the inner one alone when the input is kept).

Latent scale: ``scale_factor`` null estimates ``latent_std / std(z)`` on the first training batch's target
latents (stored exactly in the checkpoint; see :mod:`._latent`). LDM scales to unit variance
(``latent_std: 1``); the inner methods work in the toolkit's model space [-1, 1] and clip their samples
there (SRDiff clips the residual and the output), so the default ``latent_std`` is 1/3, which keeps 99.7 % of
a Gaussian latent inside [-1, 1]. Inner methods whose target is not an image (segmentation, classes,
forecasts of another kind) or that already are latent methods are refused.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.keys import LABEL, MASK
from ..diffusion.ensemble import variance_map
from ..diffusion.generators import GeneratorLike
from ..diffusion.process import check_spatial
from ..errors import ArgumentError, DataError
from ._latent import LatentSpace
from .autoencoder_kl import AutoencoderKLMethod
from .autoencoder_vq import AutoencoderVQMethod
from .base import IOSpec, Method

#: how a condition reaches the latent space
CONDITION_MODES = ("encode", "resample", "keep")
_FIX_INNER = "wrap a method whose target is an image, e.g. {class_path: SRDiff, init_args: {...}}"


def _method_classes() -> list[type[Method]]:
    """Every Method subclass imported so far (the registered ones are: importing this module imports
    :mod:`medrs_diff.methods` first), the base classes excluded."""
    seen: list[type[Method]] = []
    todo = list(Method.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return [c for c in seen if c.__module__ != Method.__module__]


def resolve_inner_class(class_path: Any) -> type[Method]:
    """The method class ``class_path`` names: its registered name (``srdiff``), class name (``SRDiff``), full
    path or a shorter import path (``medrs_diff.methods.SRDiff``); else :class:`ArgumentError`."""
    if not isinstance(class_path, str) or not class_path.strip():
        raise ArgumentError("method.class_path", f"must name a method, got {class_path!r}", _FIX_INNER)
    cp = class_path.strip()
    prefix, _, short = cp.rpartition(".")
    found = {c for c in _method_classes()
             if cp in (getattr(c, "name", None), c.__name__, f"{c.__module__}.{c.__qualname__}")
             or (prefix and short == c.__name__ and c.__module__.startswith(prefix + "."))}
    if len(found) != 1:
        what = "is ambiguous" if found else "names no known method"
        raise ArgumentError("method.class_path", f"{cp!r} {what}",
                            "give a registered method name or class path (see `medrs-diff list`)")
    return found.pop()


class LatentMethod(LatentSpace, Method):
    """Any image method trained and sampled in a frozen first stage's latent space; see the module docstring."""

    name = "latent"
    task = "image"
    #: recorded from the autoencoder file at construction, so checkpoints rebuild without it
    resolved_args = ("autoencoder_config",)

    def __init__(
        self,
        method: dict[str, Any],
        autoencoder: str | None = None,
        autoencoder_config: dict[str, Any] | None = None,
        scale_factor: float | None = None,
        latent_std: float = 1.0 / 3.0,
        conditions: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(method, Mapping) or "class_path" not in method:
            raise ArgumentError("method", f"must be {{class_path, init_args}}, got {method!r}", _FIX_INNER)
        cls = resolve_inner_class(method["class_path"])
        if issubclass(cls, LatentSpace | AutoencoderKLMethod | AutoencoderVQMethod):
            raise ArgumentError("method", f"{cls.name} already works with an autoencoder; it cannot be wrapped",
                                _FIX_INNER)
        self.init_latent_space(autoencoder, autoencoder_config, scale_factor, latent_std)
        c = self.ae.latent_channels
        # a command-line override of this dict-typed argument turns YAML nulls into the string 'None'
        init_args = {k: None if v in ("None", "null") else v for k, v in dict(method.get("init_args") or {}).items()}
        params = inspect.signature(cls.__init__).parameters
        for key in ("in_channels", "out_channels"):
            if key in params and key not in init_args:
                init_args[key] = c
        self.inner = cls(**init_args)
        inner = self.inner
        target = inner.target_key
        if inner.task != "image" or target in (LABEL, MASK):
            raise ArgumentError("method", f"{cls.name} predicts {inner.task!r} (batch[{target!r}]), not an image; "
                                "latent diffusion encodes the target with an image autoencoder", _FIX_INNER)
        if int(inner.spatial_dims) != self.ae.spatial_dims:
            raise ArgumentError("method.init_args.spatial_dims", f"{cls.name} is {inner.spatial_dims}-D but the "
                                f"autoencoder is {self.ae.spatial_dims}-D", "use the autoencoder's spatial_dims")
        if int(inner.out_channels) != c:
            raise ArgumentError("method.init_args.in_channels", f"{cls.name} predicts {inner.out_channels} "
                                f"channel(s) but the autoencoder's latent has {c}",
                                f"set it to {c} or leave it out (the latent channel count is then used)")
        spec = inner.io_spec
        given = dict(conditions or {})
        unknown = sorted(set(given) - set(spec.inputs))
        bad = sorted(k for k, v in given.items() if v not in CONDITION_MODES)
        if unknown or bad:
            raise ArgumentError("conditions", f"keys must be among {cls.name}'s inputs {sorted(spec.inputs)} and "
                                f"modes among {CONDITION_MODES}; got {given}", "fix the key or mode")
        #: batch key -> how it reaches the latent space (the target is always encoded)
        self.modes = {**{k: given.get(k, "encode") for k in spec.inputs}, target: "encode"}
        if given.get(target, "encode") != "encode":
            raise ArgumentError("conditions", f"batch[{target!r}] is {cls.name}'s target, which is always encoded; "
                                f"got {given[target]!r}", f"drop {target!r} from conditions")
        for k in spec.inputs:
            if self.modes[k] == "encode" and spec.inputs[k] != c:
                raise ArgumentError(f"method.init_args (input {k!r})", f"{cls.name} takes {spec.inputs[k]} "
                                    f"channel(s) in batch[{k!r}], encoded to {c} latent channel(s)",
                                    f"build it with {c} input channel(s), or set conditions: {{{k}: resample}}")
        self.input_key, self.target_key = inner.input_key, target
        self.spatial_dims = self.ae.spatial_dims
        self.out_channels = self.ae.in_channels
        self.in_channels = self._image_channels(spec.input_key)

    # -- what it reads and writes -----------------------------------------------------------------
    def _image_channels(self, key: str) -> int:
        return int(self.ae.in_channels if self.modes[key] == "encode" else self.inner.io_spec.inputs[key])

    @property
    def uses_samplers(self) -> bool:  # type: ignore[override] - the wrapped method's
        return bool(self.inner.uses_samplers)

    @property
    def factor(self) -> int:
        """Image pixels per latent pixel (the autoencoder's downsampling)."""
        return int(self.ae.downsampling)

    @property
    def grid_factor(self) -> int:
        g = int(self.inner.grid_factor)
        return g * self.factor if self.modes[self.input_key] == "keep" else g

    @property
    def size_multiple(self) -> int:
        m = int(self.inner.size_multiple)
        return m if self.modes[self.input_key] == "keep" else m * self.factor

    @property
    def io_spec(self) -> IOSpec:
        spec = self.inner.io_spec
        outputs = tuple(k for k in spec.outputs if k in spec.data_space or k == "uncertainty")
        return IOSpec(
            inputs={k: self._image_channels(k) for k in spec.inputs}, outputs=outputs,
            spatial_dims=int(self.spatial_dims), grid_factor=self.grid_factor, task="image",
            data_space=tuple(k for k in spec.data_space if k in outputs),
            extra={**{k: v for k, v in spec.extra.items() if k != "label_outputs"},
                   "size_multiple": self.size_multiple, "latent": {"factor": self.factor,
                                                                   "channels": int(self.ae.latent_channels)}},
        )

    @property
    def outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.io_spec.outputs

    @property
    def data_space(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.io_spec.data_space

    def fast_path_target(self) -> nn.Module:
        return self.inner.fast_path_target()

    # -- to and from the latent space -------------------------------------------------------------
    def _checked(self, batch: Mapping[str, Any], key: str) -> Tensor:
        x = batch[key]
        check_spatial(x, key)
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self._image_channels(key):
            raise DataError(key, f"expected ({self._image_channels(key)} channel(s), {self.spatial_dims}-D) images, "
                            f"got shape {tuple(x.shape)}", "pass the images the autoencoder / method was built for")
        f = self.factor
        if self.modes[key] != "keep" and any(s % f for s in x.shape[2:]):
            raise DataError(key, f"spatial size {tuple(x.shape[2:])} is not a multiple of the autoencoder's "
                            f"downsampling factor {f}", f"crop or pad to multiples of {f}")
        return x

    def latent_batch(self, batch: Mapping[str, Any], generator: GeneratorLike = None,
                     with_target: bool = True) -> dict[str, Any]:
        """The batch the inner method sees: the target encoded (posterior sample, scaled; dropped when
        ``with_target`` is False), conditions per :attr:`modes`, other keys unchanged."""
        out = dict(batch)
        target = self.target_key
        if target in batch:
            if with_target:  # training: a posterior sample (the first one also sets the scale)
                out[target] = self.latents(self._checked(batch, target), generator, sample=True)
            elif target == self.input_key:  # the target is also the input (e.g. restoration of the image itself)
                self.require_scale()
                out[target] = self.latents(self._checked(batch, target), sample=False)
            else:  # not needed to predict, and in image space
                del out[target]
        for key, mode in self.modes.items():
            if key == target or key not in batch:
                continue
            if mode == "encode":
                self.require_scale()
                out[key] = self.latents(self._checked(batch, key), sample=False)
            elif mode == "resample":
                x = self._checked(batch, key)
                out[key] = (F.avg_pool2d if self.spatial_dims == 2 else F.avg_pool3d)(x, self.factor)
            else:
                out[key] = self._checked(batch, key)
        return out

    # -- contract ---------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        if self.target_key not in batch:
            raise DataError("batch", f"latent training needs batch[{self.target_key!r}] (the target image)",
                            "use a data module that provides it")
        loss, logs = self.inner.loss(self.latent_batch(batch, generator), generator)
        return loss, {**logs, "latent_scale": torch.tensor(self.scale)}

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
        """The inner method's outputs on the latent batch, image-valued ones decoded (module docstring)."""
        if self.input_key not in batch:
            raise DataError("batch", f"{self.inner.name} in latent space needs batch[{self.input_key!r}]",
                            "pass the input the method reads")
        self.require_scale()
        out = self.inner.predict(self.latent_batch(batch, with_target=False), sampler=sampler, steps=steps,
                                 n_samples=n_samples, generator=generator, progress=progress)
        spec = self.inner.io_spec
        latent_shape = tuple(out["prediction"].shape)
        result: dict[str, Tensor] = {}
        for key, value in out.items():
            if not isinstance(value, Tensor):
                continue
            if key == "samples" and value.ndim == len(latent_shape) + 1:
                decoded = self.decode_latents(value.flatten(0, 1))
                result[key] = decoded.reshape(*value.shape[:2], *decoded.shape[1:])
            elif key in spec.data_space or (key not in spec.outputs and tuple(value.shape) == latent_shape):
                result[key] = self.decode_latents(value)
        if "uncertainty" in spec.outputs:
            samples = result.get("samples")
            many = samples is not None and samples.shape[1] > 1
            result["uncertainty"] = variance_map(samples) if many else torch.zeros_like(result["prediction"])
        return result
