"""Reading a training checkpoint file: one-line errors for every way it can be unusable, and its weights.

A leaf: it knows the file layout Lightning and :class:`~medrs_diff.train.task.DiffusionTask` write
(``state_dict`` with the method under ``method.``, the EMA callback's ``shadow`` marked by
:data:`EMA_FORMAT`, the ``medrs_diff`` record naming the method) but no method class, so both the
training layer (:mod:`medrs_diff.train.checkpoint`, which adds class-path upgrades) and methods that
reuse another run's weights (latent diffusion's autoencoder) read files through it.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

__all__ = ["EMA_FORMAT", "ema_shadow", "method_weights", "read_checkpoint_file", "stored_method"]

#: Marker stored with the EMA callback's state (:class:`~medrs_diff.train.ema.EMA` writes it).
EMA_FORMAT = "medrs_diff.ema/1"

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's (default) zip archive
_PICKLE_PROTO = 0x80  # a pickle stream (torch's legacy format, or a plain pickle.dump)
_FIX_FILE = "pass a .ckpt file written by `medrs-diff fit` (e.g. last.ckpt or an earlier step)"


def _unsupported_global(err: BaseException) -> str | None:
    """The blocked ``module.name`` a weights-only load refused, when the error names one."""
    m = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", str(err))
    return (m.group(1) or m.group(2)).rstrip(".,") if m else None


def _pickle_globals(path: Path, limit: int = 4) -> list[str]:
    """The ``module.name`` callables a pickle stream imports (GLOBAL / STACK_GLOBAL), parsed with
    :mod:`pickletools` (nothing is executed or imported); ``[]`` when none or unparsable."""
    import pickletools

    found: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL" and isinstance(arg, str):
                    found.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
                if len(found) >= limit or op.name == "STOP":
                    break
    except Exception:  # noqa: BLE001 - a damaged stream: report what was found so far
        pass
    return found


def read_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu", trusted: bool = False) -> dict[str, Any]:
    """Load a checkpoint file as stored (no class-path upgrade). ``trusted=False`` loads weights only.

    Every failure is a one-line :class:`CheckpointError` naming the file: missing, a folder, empty,
    truncated / corrupted, not a PyTorch checkpoint at all (random bytes, text, a plain pickle), or a
    checkpoint holding Python objects a weights-only load refuses (the object is named; loading it
    would run code).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "checkpoint file not found", "check the path (e.g. <log_dir>/checkpoints/last.ckpt)")
    if not p.is_file():
        raise CheckpointError(p, "is a folder, not a checkpoint file", "pass a .ckpt file (e.g. <folder>/last.ckpt)")
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise CheckpointError(p, f"cannot be read ({err.strerror or err})", "check the file permissions") from err
    if not head:
        raise CheckpointError(p, "is empty (0 bytes), probably left by an interrupted write",
                              "delete it and use the previous checkpoint (e.g. last.ckpt or an earlier step)")
    is_zip, is_pickle = head == _ZIP_MAGIC, head[0] == _PICKLE_PROTO
    if not (is_zip or is_pickle):
        raise CheckpointError(p, f"is not a PyTorch checkpoint (its first bytes {head!r} are neither a torch.save "
                              "archive nor a pickle)", "pass a .ckpt file written by `medrs-diff fit`")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(p, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as err:
        blocked = _unsupported_global(err) or next(iter(_pickle_globals(p) if is_pickle else []), None)
        if blocked is not None:
            raise CheckpointError(
                p, f"holds a Python object ({blocked}) that is not a tensor or plain data: loading it would run "
                "code, so it is refused", "use a checkpoint written by `medrs-diff fit`; only for a file you made "
                "yourself, read_checkpoint(path, trusted=True) loads it anyway",
            ) from err
        what = "a truncated or corrupted checkpoint" if is_zip else "not a PyTorch checkpoint (a pickle of other data)"
        raise CheckpointError(p, f"is {what}", _FIX_FILE) from err
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError, TypeError) as err:
        detail = " ".join(str(err).split()).split(". ")[0][:160]
        raise CheckpointError(
            p, f"is not a readable PyTorch checkpoint, probably truncated or corrupted ({type(err).__name__}: "
            f"{detail})", "use the previous checkpoint (e.g. last.ckpt or an earlier step) or re-run training",
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(p, f"holds a {type(ckpt).__name__}, not a checkpoint dict", "pass a Lightning .ckpt file")
    return ckpt


def stored_method(ckpt: Mapping[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """``(method_name, {"class_path", "init_args"})`` from a checkpoint's ``medrs_diff`` record (either
    None when absent)."""
    record = ckpt.get("medrs_diff")
    if not isinstance(record, Mapping):
        return None, None
    method = record.get("method")
    name = record.get("method_name")
    cfg = ({"class_path": method.get("class_path"), "init_args": dict(method.get("init_args") or {})}
           if isinstance(method, Mapping) else None)
    return (name if isinstance(name, str) else None), cfg


def ema_shadow(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
    """The EMA callback's shadow weights (detached, on the CPU), keys as stored; None without them."""
    for state in (ckpt.get("callbacks") or {}).values():
        if isinstance(state, Mapping) and state.get("format") == EMA_FORMAT and state.get("shadow"):
            return {k: v.detach().cpu() for k, v in state["shadow"].items()}
    return None


def method_weights(ckpt: Mapping[str, Any], ema: bool = True) -> dict[str, torch.Tensor] | None:
    """The method's state dict: the EMA weights when ``ema`` and present (an EMA of the whole task is
    stripped of its ``method.`` prefix), else the raw ``state_dict``'s ``method.*`` entries; None when
    the checkpoint holds neither."""
    shadow = ema_shadow(ckpt) if ema else None
    if shadow:
        if all(k.startswith("method.") for k in shadow):
            shadow = {k[len("method."):]: v for k, v in shadow.items()}
        return shadow
    raw = ckpt.get("state_dict")
    if not isinstance(raw, Mapping):
        return None
    state = {k[len("method."):]: v for k, v in raw.items() if k.startswith("method.")}
    return state or None
