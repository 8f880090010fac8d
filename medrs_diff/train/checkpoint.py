"""Full-state checkpoints: atomic writes, RNG states, the recipe, and rebuilding a method from a file.

What a checkpoint written by :class:`~medrs_diff.train.task.DiffusionTask` holds (Lightning's own
keys plus ours): ``state_dict`` (the task, so the method under ``method.``), ``optimizer_states``,
``lr_schedulers``, ``loops`` and ``global_step`` (Lightning), ``callbacks`` (the EMA shadow weights, the
resumable data loader position, ModelCheckpoint bookkeeping), ``hyper_parameters`` (the task's
arguments, with ``method = {"class_path", "init_args"}``), ``medrs_diff`` (format version, the method's
name and config), ``rng_states`` (Python / NumPy / torch / CUDA states and the task's training-noise
generator, one entry per rank) and, when the run was started by the CLI with :class:`RecipeConfigCallback`,
``recipe`` (the full YAML config of the run).

Atomic writes: Lightning's ``TorchCheckpointIO`` serialises into memory and writes through an fsspec
transaction, which for local files writes a temporary file in the *system* temp folder and moves it
into place with ``shutil.move``; when that folder is on another file system the move degrades to a
copy into the final path, which a crash can leave half-written, and nothing is fsynced.
:class:`AtomicCheckpointIO` writes beside the target, fsyncs and ``os.replace``-s, so the previous
checkpoint stays intact until the new one is complete. The task installs it on the trainer's
strategy at setup when the strategy uses the plain ``TorchCheckpointIO``.

Class paths: a checkpoint (and a recipe) names its method by class path. Before anything is
imported, that path is resolved against :data:`medrs_diff.methods.METHODS` (full path, shortest
import path such as ``medrs_diff.methods.SegDiff``, class name, registered name) or the
:data:`LEGACY_METHOD_PATHS` table of older spellings; a method class already imported by the
process (a user's own subclass) is accepted by its path too. Anything else is refused with the
list of valid methods, so a checkpoint can never make us import an arbitrary module. Older data
module paths (``medrs_diff.train.task_data.*``) map to their new homes through
:data:`LEGACY_CLASS_PATHS`; :func:`read_checkpoint` rewrites stored spellings to the current ones
in memory, so old checkpoints still load.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..diffusion.samplers.learned import attach_state
from ..errors import CheckpointError, MedrsError
from ..io.atomic import atomic_save, clean_stale_temporaries
from ..io.checkpoint_file import EMA_FORMAT, ema_shadow, read_checkpoint_file
from ..methods import METHODS
from ..methods.base import Method

__all__ = [
    "CHECKPOINT_FORMAT",
    "EMA_FORMAT",
    "LEARNED_KEY",
    "LEGACY_CLASS_PATHS",
    "LEGACY_METHOD_PATHS",
    "AtomicCheckpointIO",
    "CheckpointError",
    "RecipeConfigCallback",
    "atomic_torch_save",
    "build_method",
    "canonical_class_path",
    "canonical_method_config",
    "capture_rng_state",
    "check_finite_checkpoint",
    "checkpoint_data_config",
    "checkpoint_method_config",
    "checkpoint_nonfinite",
    "class_path_of",
    "clean_stale_temporaries",
    "ema_state_dict",
    "load_method_from_checkpoint",
    "method_config",
    "method_from_checkpoint",
    "nonfinite_tensors",
    "read_checkpoint",
    "resolve_method_class",
    "restore_rng_state",
    "upgrade_checkpoint",
    "valid_methods",
]

#: Checkpoint key of the few-step chains fitted after training (BDDM schedules, step masks):
#: ``{kind: {"<steps>": {"alphas_cumprod", "timesteps"}}}``, attached to ``method.schedule`` on rebuild.
LEARNED_KEY = "learned_schedules"
#: Version of the ``checkpoint["medrs_diff"]`` record.
CHECKPOINT_FORMAT = 1
MAX_LISTED_KEYS = 8

#: Method class paths that earlier releases wrote into recipes and checkpoints -> registered method name
#: (a key of :data:`medrs_diff.methods.METHODS`), so they resolve wherever the class lives now.
LEGACY_METHOD_PATHS: dict[str, str] = {
    "medrs_diff.methods.segdiff.SegDiff": "segdiff",
    "medrs_diff.methods.SegDiff": "segdiff",
    "medrs_diff.methods.srdiff.SRDiff": "srdiff",
    "medrs_diff.methods.SRDiff": "srdiff",
}

#: Other class paths that moved (data modules) -> their current full class path.
LEGACY_CLASS_PATHS: dict[str, str] = {
    f"medrs_diff.train.task_data.{name}": f"medrs_diff.datamodules.{module}.{name}"
    for module, name in (("nifti", "NiftiSegmentationDataModule"), ("geotiff", "GeoTiffSRDataModule"))
} | {
    "medrs_diff.train.datamodule.DictDataModule": "medrs_diff.datamodules.base.DictDataModule",
    "medrs_diff.train.DictDataModule": "medrs_diff.datamodules.base.DictDataModule",
}


# -- atomic writes -----------------------------------------------------------------------------------
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename onto ``path`` (``io.atomic``).

    An exception or kill at any point leaves ``path`` as it was (the old checkpoint or nothing) and
    removes the temporary file.
    """

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_save(path, save)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes local files atomically (see the module docstring).

    Remote paths (``s3://`` ...) fall back to Lightning's fsspec transaction. Use it explicitly with
    ``trainer.plugins: [medrs_diff.train.AtomicCheckpointIO]``; :class:`DiffusionTask` also installs it.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint does not take storage_options")
        bad = checkpoint_nonfinite(checkpoint)
        if bad:  # DiffusionTask refuses earlier on every rank; this also covers weights-only checkpoints
            raise CheckpointError(path, f"refused to write it: the weights hold NaN / inf in {len(bad)} tensor(s) "
                                  f"({_describe(bad)}); training diverged", "resume from the last checkpoint "
                                  "written (it is intact) with a lower model.init_args.lr or trainer.gradient_clip_val")
        if not _is_local(path):
            return super().save_checkpoint(checkpoint, path)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Local files go through :func:`read_checkpoint` (one-line errors for a missing, empty, truncated,
        foreign or code-carrying file); remote ones through Lightning."""
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return read_checkpoint(path, map_location=map_location, trusted=weights_only is False)


def _is_local(path: Any) -> bool:
    protocol = get_filesystem(path).protocol
    return "file" in ((protocol,) if isinstance(protocol, str) else tuple(protocol))


def install_atomic_io(trainer: Any) -> bool:
    """Replace a trainer strategy's plain ``TorchCheckpointIO`` by :class:`AtomicCheckpointIO`; True if replaced."""
    strategy = getattr(trainer, "strategy", None)
    if strategy is None:
        return False
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
        return True
    return False


# -- reading ---------------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", trusted: bool = False) -> dict[str, Any]:
    """Load a checkpoint file with clear errors (:func:`medrs_diff.io.checkpoint_file.read_checkpoint_file`;
    ``trusted=False`` uses ``torch.load(weights_only=True)``) and rewrite its stored class paths to their
    current spellings (:func:`upgrade_checkpoint`).

    Every failure is a one-line :class:`CheckpointError` naming the file: missing, a folder, empty,
    truncated / corrupted, not a PyTorch checkpoint at all (random bytes, text, a plain pickle), or a
    checkpoint holding Python objects a weights-only load refuses (the object is named; loading it
    would run code).
    """
    return upgrade_checkpoint(read_checkpoint_file(path, map_location=map_location, trusted=trusted))


# -- finite weights ----------------------------------------------------------------------------------
def nonfinite_tensors(state: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"<prefix><key> (n NaN, m inf of size)"`` for every floating tensor of ``state`` holding NaN or inf."""
    bad = []
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) and v.numel():
            finite = torch.isfinite(v)
            if not bool(finite.all()):
                n_nan = int(torch.isnan(v).sum())
                n_inf = int((~finite).sum()) - n_nan
                bad.append(f"{prefix}{k} ({n_nan} NaN, {n_inf} inf of {v.numel()})")
    return bad


def checkpoint_nonfinite(ckpt: Mapping[str, Any]) -> list[str]:
    """The non-finite tensors of a checkpoint's method weights (``state_dict`` ``method.*``) and EMA weights."""
    raw = ckpt.get("state_dict")
    bad = []
    if isinstance(raw, Mapping):
        bad += nonfinite_tensors({k: v for k, v in raw.items() if k.startswith("method.")})
    for state in (ckpt.get("callbacks") or {}).values():
        shadow = state.get("shadow") if isinstance(state, Mapping) else None
        if state.get("format") == EMA_FORMAT and isinstance(shadow, Mapping):
            bad += nonfinite_tensors(shadow, prefix="EMA ")
    return bad


def check_finite_checkpoint(ckpt: Mapping[str, Any], where: str | os.PathLike | None) -> None:
    """Raise :class:`CheckpointError` naming the file and the tensors when any weight is NaN or inf."""
    bad = checkpoint_nonfinite(ckpt)
    if bad:
        raise CheckpointError(
            where, f"holds non-finite weights (NaN / inf) in {len(bad)} tensor(s): {_describe(bad)}; a model "
            "loaded from it would output garbage", "the run diverged before this checkpoint was written: use an "
            "earlier checkpoint, and retrain from it with a lower model.init_args.lr or trainer.gradient_clip_val",
        )


# -- class paths -----------------------------------------------------------------------------------
def class_path_of(obj: Any) -> str:
    """``module.QualName`` of a class or of an object's class."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _import_paths(cls: type) -> set[str]:
    """The class's full path plus every shorter path an already-imported parent package exports it under."""
    paths = {class_path_of(cls)}
    parts = cls.__module__.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if getattr(sys.modules.get(parent), cls.__name__, None) is cls:  # no import: only loaded modules
            paths.add(f"{parent}.{cls.__name__}")
    return paths


def _imported_methods() -> Iterator[type[Method]]:
    """Every Method subclass (diffusion or not) this process has already imported (registered or not)."""
    seen: set[type] = set()
    todo = list(Method.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.add(cls)
            if cls.__module__ != Method.__module__:  # the bases themselves are not methods
                yield cls
            todo.extend(cls.__subclasses__())


def valid_methods() -> str:
    """The registered methods, for error messages: ``segdiff (SegDiff, medrs_diff.methods.segdiff.SegDiff), ...``."""
    return ", ".join(f"{name} ({cls.__name__}, {class_path_of(cls)})" for name, cls in METHODS.items())


def resolve_method_class(
    class_path: str, where: str | os.PathLike | None = "method config", error: type[MedrsError] = CheckpointError,
) -> type[Method]:
    """The method class a class path names, found WITHOUT importing anything.

    Accepted, in order: a full or shortest import path of a class in :data:`~medrs_diff.methods.METHODS`,
    its registered name (``"segdiff"``), its class name (``"SegDiff"``), an old spelling listed in
    :data:`LEGACY_METHOD_PATHS`, or the path / class name of a Method subclass the process has
    already imported (a user's own method). Anything else raises ``error`` (:class:`CheckpointError` by
    default, :class:`~medrs_diff.errors.RecipeError` for recipes) listing the valid methods.
    """
    if not isinstance(class_path, str) or not class_path.strip():
        raise error(where, f"the method class path must be a non-empty string, got {class_path!r}",
                    f"name one of the methods: {valid_methods()}")
    cp = class_path.strip()
    cp = LEGACY_METHOD_PATHS.get(cp, cp)
    registered = list(METHODS.items())
    for _, cls in registered:
        if cp in _import_paths(cls):
            return cls
    if cp in METHODS:
        return METHODS[cp]
    by_name = {cls for _, cls in registered if cls.__name__ == cp}
    if len(by_name) == 1:
        return by_name.pop()
    imported = list(_imported_methods())
    for cls in imported:
        if cp in _import_paths(cls):
            return cls
    by_name |= {cls for cls in imported if cls.__name__ == cp}
    if len(by_name) == 1:
        return by_name.pop()
    if len(by_name) > 1:
        paths = ", ".join(sorted(map(class_path_of, by_name)))
        raise error(where, f"the method class name {cp!r} is ambiguous ({paths})", "give the full class path")
    raise error(where, f"unknown method {class_path!r}; valid methods: {valid_methods()}",
                "use one of the valid methods (a class path, class name or registered name), or register your own "
                "class in medrs_diff.methods.METHODS before loading")


def canonical_method_config(config: Mapping[str, Any], where: str | os.PathLike | None = "method config",
                            error: type[MedrsError] = CheckpointError) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` with the class path rewritten to the resolved class's full path
    (``medrs_diff.methods.segdiff.SegDiff`` for ``SegDiff``, ``segdiff``, legacy spellings)."""
    if not isinstance(config, Mapping) or "class_path" not in config:
        raise error(where, f"a method config needs a 'class_path', got {config!r}",
                    "give {class_path: SegDiff, init_args: {...}} (see `medrs-diff list` for the methods)")
    cls = resolve_method_class(config["class_path"], where, error)
    return {"class_path": class_path_of(cls), "init_args": dict(config.get("init_args") or {})}


def canonical_class_path(class_path: str) -> str:
    """The current spelling of a non-method class path (data modules that moved); others unchanged."""
    return LEGACY_CLASS_PATHS.get(class_path, class_path)


def method_config(method: Method) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a method, from the constructor arguments it records."""
    return {"class_path": class_path_of(method), "init_args": dict(method.hparams())}


def build_method(config: Mapping[str, Any], where: str | os.PathLike | None = "method config") -> Method:
    """Instantiate a method from ``{"class_path", "init_args"}`` (nested class configs allowed) via jsonargparse.

    The class is resolved first (:func:`resolve_method_class`, import-free); unknown classes raise
    :class:`CheckpointError`.
    """
    from jsonargparse import ArgumentParser

    cfg = canonical_method_config(config, where)
    cls = resolve_method_class(cfg["class_path"], where)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "method", fail_untyped=False)
    parsed = parser.parse_object({"method": cfg["init_args"]})
    return parser.instantiate_classes(parsed).method


def _upgrade_method_entry(entry: Any) -> None:
    if isinstance(entry, dict) and isinstance(entry.get("class_path"), str):
        try:
            entry["class_path"] = class_path_of(resolve_method_class(entry["class_path"]))
        except MedrsError:  # unknown: left as stored; loading it refuses it with the list of valid methods
            pass


def upgrade_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Rewrite, in place, the class paths a checkpoint stores to their current spellings; returns ``ckpt``.

    Touches the method (``hyper_parameters.method`` and ``medrs_diff.method``), the task's and the data
    module's ``_class_path`` (LightningCLI's records). Unknown class paths are left as they are.
    """
    hp = ckpt.get("hyper_parameters")
    if isinstance(hp, dict):
        _upgrade_method_entry(hp.get("method"))
        if isinstance(hp.get("_class_path"), str):
            hp["_class_path"] = canonical_class_path(hp["_class_path"])
    record = ckpt.get("medrs_diff")
    if isinstance(record, dict):
        _upgrade_method_entry(record.get("method"))
    dm = ckpt.get("datamodule_hyper_parameters")
    if isinstance(dm, dict) and isinstance(dm.get("_class_path"), str):
        dm["_class_path"] = canonical_class_path(dm["_class_path"])
    return ckpt


def checkpoint_data_config(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The data module a checkpoint was trained with, ``{"class_path", "init_args"}`` in current spelling
    (``class_path`` is None when the run did not go through LightningCLI); None when none was saved."""
    dm = ckpt.get("datamodule_hyper_parameters")
    if not isinstance(dm, Mapping):
        return None
    cp = dm.get("_class_path")
    init_args = {k: v for k, v in dm.items() if k not in ("_class_path", "_instantiator")}
    return {"class_path": canonical_class_path(cp) if isinstance(cp, str) else None, "init_args": init_args}


def checkpoint_method_config(ckpt: Mapping[str, Any], where: str | os.PathLike = "checkpoint") -> dict[str, Any]:
    """The method config stored in a checkpoint (our record first, then the task's hyper-parameters)."""
    record = ckpt.get("medrs_diff")
    if isinstance(record, Mapping) and isinstance(record.get("method"), Mapping):
        return dict(record["method"])
    hp = ckpt.get("hyper_parameters") or {}
    method = hp.get("method") if isinstance(hp, Mapping) else None
    if isinstance(method, Mapping) and "class_path" in method:
        return {"class_path": method["class_path"], "init_args": dict(method.get("init_args") or {})}
    raise CheckpointError(
        where, "was not written by medrs_diff.train.DiffusionTask (no method class and arguments stored in it)",
        "pass a checkpoint from `medrs-diff fit`, or build the method yourself and load its state dict",
    )


def _describe(keys: list[str]) -> str:
    more = f" ... (+{len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else ""
    return ", ".join(keys[:MAX_LISTED_KEYS]) + more


def check_state_fits(method: Any, state: Mapping[str, torch.Tensor], where: str | os.PathLike, source: str) -> None:
    """Raise :class:`CheckpointError` naming missing / unexpected / mis-shaped keys of ``state`` for ``method``."""
    expected = {k: v for k, v in method.state_dict().items() if isinstance(v, torch.Tensor)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        k for k in set(expected) & set(state)
        if isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_describe(unexpected)}")
    if shapes:
        parts.append("shape mismatch: " + _describe(
            [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in shapes]))
    name = getattr(method, "name", type(method).__name__)
    raise CheckpointError(
        where,
        f"the {source} do not fit the {name} model ({class_path_of(method)}): " + "; ".join(parts),
        "use a checkpoint trained with this method and the same architecture arguments (check the recipe)",
    )


def _matches(expected: type | str, cls: type, class_path: str, name: str | None) -> bool:
    if isinstance(expected, type):
        return cls is expected
    registered = {k for k, v in METHODS.items() if v is cls}
    return expected in {class_path, class_path.rsplit(".", 1)[-1], name, cls.__name__, getattr(cls, "name", None),
                        *_import_paths(cls), *registered}


def load_method_from_checkpoint(
    path: str | os.PathLike,
    *,
    expected: type[Method] | str | None = None,
    ema: bool | None = None,
    map_location: Any = "cpu",
    trusted: bool = False,
) -> Method:
    """Rebuild the method stored in a training checkpoint, without the recipe, in eval mode.

    ``expected``: a method class, class path, class name or ``name`` (``"segdiff"``) the checkpoint
    must hold. ``ema``: None uses the EMA weights when the checkpoint has them (else the raw weights),
    True requires them, False loads the raw training weights. Errors name the file, the method found
    versus expected, the missing / unexpected keys, and any NaN / inf weights (model or EMA: refused).
    """
    ckpt = read_checkpoint(path, map_location=map_location, trusted=trusted)
    return method_from_checkpoint(ckpt, path, expected=expected, ema=ema)


def method_from_checkpoint(
    ckpt: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    expected: type[Method] | str | None = None,
    ema: bool | None = None,
) -> Method:
    """:func:`load_method_from_checkpoint` on a checkpoint dict already read from ``path`` (named in errors)."""
    cfg = checkpoint_method_config(ckpt, path)
    record = ckpt.get("medrs_diff") or {}
    found_name = record.get("method_name") if isinstance(record, Mapping) else None
    cls = resolve_method_class(cfg["class_path"], path)  # refuses unknown classes before importing anything
    check_finite_checkpoint(ckpt, path)  # NaN / inf weights would give garbage outputs with exit 0
    if expected is not None and not _matches(expected, cls, cfg["class_path"], found_name):
        want = class_path_of(expected) if isinstance(expected, type) else expected
        raise CheckpointError(
            path, f"holds a {found_name or '?'} model ({cfg['class_path']}), but {want} was expected",
            f"pass a {want} checkpoint, or choose the recipe / method that matches {cfg['class_path']}",
        )
    try:
        method = build_method(cfg, path)
    except MedrsError:
        raise
    except Exception as err:  # changed signatures
        raise CheckpointError(
            path, f"cannot rebuild the method {cfg['class_path']} from its stored arguments ({err})",
            "use the medrs_diff version the checkpoint was trained with, or a method that accepts its init_args",
        ) from err
    has_ema = ema_shadow(ckpt) is not None
    if ema and not has_ema:
        raise CheckpointError(
            path, "holds no EMA weights (the run had no medrs_diff.train.EMA callback, or it had not started)",
            "load the raw weights with ema=False (or ema=None), or train with the EMA callback",
        )
    if has_ema and ema is not False:
        state, source = ema_state_dict(ckpt, path), "EMA weights"
    else:
        raw = ckpt.get("state_dict")
        if not isinstance(raw, Mapping):
            raise CheckpointError(path, "has no 'state_dict'", "pass a Lightning checkpoint from `medrs-diff fit`")
        state = {k[len("method."):]: v for k, v in raw.items() if k.startswith("method.")}
        source = "model weights"
    check_state_fits(method, state, path, source)
    method.load_state_dict(state, strict=True)
    attach_learned(method, ckpt.get(LEARNED_KEY), path)
    return method.eval()


def attach_learned(method: Method, state: Any, where: str | os.PathLike) -> None:
    """Attach a checkpoint's learned chains (``checkpoint["learned_schedules"]``) to ``method.schedule``."""
    if not state:
        return
    schedule = getattr(method, "schedule", None)
    try:
        if schedule is None:
            raise ValueError(f"{type(method).__name__} has no diffusion schedule")
        if not isinstance(state, Mapping):
            raise ValueError(f"the entry is a {type(state).__name__}, not a dict")
        attach_state(schedule, state)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(where, f"holds learned schedules ({LEARNED_KEY!r}) that do not fit its model: {err}",
                              "refit them with `medrs-diff fit-schedule` on this checkpoint") from err


def ema_state_dict(
    checkpoint: Mapping[str, Any] | str | os.PathLike, where: str | os.PathLike | None = None,
) -> dict[str, torch.Tensor]:
    """The EMA weights stored in a Lightning checkpoint (dict or file), as a state dict of the method.

    Raises :class:`CheckpointError` naming the file when the run had no EMA callback (load the raw
    weights instead with ``load_method_from_checkpoint(path, ema=False)``).
    """
    is_dict = isinstance(checkpoint, Mapping)
    if where is None:
        where = "checkpoint" if is_dict else str(checkpoint)
    ckpt = checkpoint if is_dict else read_checkpoint(checkpoint)
    shadow = ema_shadow(ckpt)
    if shadow is not None:
        return shadow
    raise CheckpointError(
        where,
        "holds no EMA weights (the run had no medrs_diff.train.EMA callback, or it had not started)",
        "load the raw weights with load_method_from_checkpoint(path, ema=False), or train with the EMA callback",
    )


# -- RNG states --------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (initialised) CUDA generator states, as weights-only-loadable values."""
    py = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global state is what code may use
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))  # noqa: NPY002
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# -- the recipe ----------------------------------------------------------------------------------------
class RecipeConfigCallback(SaveConfigCallback):
    """LightningCLI ``save_config_callback`` that also stores the run's full YAML config in every checkpoint.

    Use as ``LightningCLI(..., save_config_callback=RecipeConfigCallback)``; the YAML lands in
    ``checkpoint["recipe"]`` (besides ``config.yaml`` in the log folder), so a checkpoint documents how
    it was trained even when the log folder is gone.
    """

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if not hasattr(self, "_recipe_yaml"):
            self._recipe_yaml = self.parser.dump(self.config, skip_none=False)
        checkpoint["recipe"] = self._recipe_yaml
