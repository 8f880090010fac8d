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
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..methods.base import DiffusionMethod
from .ema import EMA_FORMAT, ema_state_dict

#: Version of the ``checkpoint["medrs_diff"]`` record.
CHECKPOINT_FORMAT = 1
MAX_LISTED_KEYS = 8


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: names the file, what is wrong and how to fix it."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(f"{path}: {problem}; {fix}")


# -- atomic writes -----------------------------------------------------------------------------------
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace`` onto ``path``.

    An exception or kill at any point leaves ``path`` as it was (the old checkpoint or nothing) and
    removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{secrets.token_hex(4)}-{path.name}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX; best effort elsewhere)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes local files atomically (see the module docstring).

    Remote paths (``s3://`` ...) fall back to Lightning's fsspec transaction. Use it explicitly with
    ``trainer.plugins: [medrs_diff.train.AtomicCheckpointIO]``; :class:`DiffusionTask` also installs it.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint does not take storage_options")
        protocol = get_filesystem(path).protocol
        if "file" not in ((protocol,) if isinstance(protocol, str) else tuple(protocol)):
            return super().save_checkpoint(checkpoint, path)
        atomic_torch_save(checkpoint, path)


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
    """Load a checkpoint file with clear errors. ``trusted=False`` uses ``torch.load(weights_only=True)``."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, "checkpoint file not found", "check the path (e.g. <log_dir>/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            p, f"holds objects that a weights-only load refuses ({str(err).splitlines()[0]})",
            "load it with trusted=True only if you trust where the file comes from",
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(
            p, f"is not a readable PyTorch checkpoint, probably truncated or corrupted ({err})",
            "use the previous checkpoint (e.g. last.ckpt or an earlier step) or re-run training",
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(p, f"holds a {type(ckpt).__name__}, not a checkpoint dict", "pass a Lightning .ckpt file")
    return ckpt


# -- methods <-> configs ---------------------------------------------------------------------------
def class_path_of(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def method_config(method: DiffusionMethod) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a method, from the constructor arguments it records."""
    return {"class_path": class_path_of(method), "init_args": dict(method.hparams())}


def build_method(config: Mapping[str, Any]) -> DiffusionMethod:
    """Instantiate a method from ``{"class_path", "init_args"}`` (nested class configs allowed) via jsonargparse."""
    from jsonargparse import ArgumentParser

    config = dict(config)
    if "class_path" not in config:
        raise ValueError(f"a method config needs a 'class_path' (e.g. medrs_diff.methods.segdiff.SegDiff): {config}")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(DiffusionMethod, "method", fail_untyped=False, required=True)
    init_args = config.get("init_args") or {}
    cfg = parser.parse_object({"method": {"class_path": config["class_path"], "init_args": init_args}})
    return parser.instantiate_classes(cfg).method


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


def _matches(expected: type | str, class_path: str, name: str | None) -> bool:
    if isinstance(expected, type):
        return class_path == class_path_of(expected)
    return expected in (class_path, class_path.rsplit(".", 1)[-1], name)


def load_method_from_checkpoint(
    path: str | os.PathLike,
    *,
    expected: type[DiffusionMethod] | str | None = None,
    ema: bool | None = None,
    map_location: Any = "cpu",
    trusted: bool = False,
) -> DiffusionMethod:
    """Rebuild the method stored in a training checkpoint, without the recipe, in eval mode.

    ``expected``: a method class, class path, class name or ``name`` (``"segdiff"``) the checkpoint
    must hold. ``ema``: None uses the EMA weights when the checkpoint has them (else the raw weights),
    True requires them, False loads the raw training weights. Errors name the file, the method found
    versus expected, and the missing / unexpected keys.
    """
    ckpt = read_checkpoint(path, map_location=map_location, trusted=trusted)
    cfg = checkpoint_method_config(ckpt, path)
    record = ckpt.get("medrs_diff") or {}
    found_name = record.get("method_name") if isinstance(record, Mapping) else None
    if expected is not None and not _matches(expected, cfg["class_path"], found_name):
        want = class_path_of(expected) if isinstance(expected, type) else expected
        raise CheckpointError(
            path, f"holds a {found_name or '?'} model ({cfg['class_path']}), but {want} was expected",
            f"pass a {want} checkpoint, or choose the recipe / method that matches {cfg['class_path']}",
        )
    try:
        method = build_method(cfg)
    except Exception as err:  # import errors, changed signatures
        raise CheckpointError(
            path, f"cannot rebuild the method {cfg['class_path']} from its stored arguments ({err})",
            "make sure the class is importable and accepts the stored init_args (same medrs_diff version)",
        ) from err
    has_ema = any(
        isinstance(s, Mapping) and s.get("format") == EMA_FORMAT and s.get("shadow")
        for s in (ckpt.get("callbacks") or {}).values()
    )
    if ema and not has_ema:
        raise CheckpointError(
            path, "holds no EMA weights (the run had no medrs_diff.train.EMA callback, or it had not started)",
            "load the raw weights with ema=False (or ema=None), or train with the EMA callback",
        )
    if has_ema and ema is not False:
        state, source = ema_state_dict(ckpt), "EMA weights"
    else:
        raw = ckpt.get("state_dict")
        if not isinstance(raw, Mapping):
            raise CheckpointError(path, "has no 'state_dict'", "pass a Lightning checkpoint from `medrs-diff fit`")
        state = {k[len("method."):]: v for k, v in raw.items() if k.startswith("method.")}
        source = "model weights"
    check_state_fits(method, state, path, source)
    method.load_state_dict(state, strict=True)
    return method.eval()


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
