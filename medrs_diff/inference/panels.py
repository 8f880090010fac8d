"""One PNG panel per inferred case (``medrs-diff infer --panels``): ``OUT/panels/<case>.png``.

The panel is drawn from what infer wrote (read back, so it shows exactly the files on disk) and the
input: the method's own columns where it has them (``panel_columns(batch, out)``, e.g. EI-DDPM: each
modality, each branch's mask, the fused mask, the uncertainty), else input / prediction / uncertainty.
A volume shows the axial slice (after reorienting to RAS) with the most predicted foreground (the
middle slice when none); a 2-D image shows whole. Written atomically by
:func:`~medrs_diff.viz.panels.save_panel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from .. import io
from ..methods.base import Method
from ..viz.panels import save_panel
from .cases import ModalityCase, stack_case
from .tiling import channel_first

__all__ = ["PANELS_DIR", "panel_path", "write_case_panel"]

#: The folder under the output folder that holds the panels.
PANELS_DIR = "panels"


def panel_path(main_output: Path, output_is_file: bool, output: Path) -> Path:
    """``OUT/panels/<case>.png`` (beside a single output file: ``<its folder>/panels/<stem>.png``)."""
    folder = (output.parent if output_is_file else output) / PANELS_DIR
    return folder / f"{io.stem_of(main_output)}.png"


def _channel_first(f: io.ArrayFile, n_spatial: int) -> np.ndarray:
    """``(C, *spatial)`` of a written output or an input: NIfTI keeps channels last, other files as infer reads them."""
    data = np.asarray(f.data, dtype=np.float32)
    if f.kind == "nifti":
        if data.ndim == n_spatial:
            return data[None]
        data = data.reshape(*data.shape[:n_spatial], -1)
        return np.moveaxis(data, -1, 0)
    return channel_first(data, f.geometry.layout, n_spatial, f.path)[0].astype(np.float32)


def _axial(volume: np.ndarray, affine: np.ndarray | None) -> np.ndarray:
    """``(C, x, y, z)`` in stored order -> RAS order (the third spatial axis is inferior -> superior)."""
    if affine is None:
        return volume
    ornt = nib.orientations.io_orientation(affine)
    return np.moveaxis(nib.orientations.apply_orientation(np.moveaxis(volume, 0, -1), ornt), -1, 0)


def _slice(volume: np.ndarray, z: int, depth: int) -> np.ndarray:
    """Axial slice ``z`` of ``depth`` slices, scaled to this volume's depth, as ``(C, H, W)`` with anterior up."""
    zi = min(volume.shape[3] - 1, max(0, round((z + 0.5) * volume.shape[3] / depth - 0.5)))
    return np.ascontiguousarray(np.rot90(volume[:, :, :, zi], k=1, axes=(1, 2)))


def write_case_panel(method: Method, src: Path | ModalityCase, outputs: Mapping[str, Path], main: str,
                     path: Path) -> Path:
    """Draw the panel of one case from its written ``outputs`` ({key: path}; ``main`` is the label map) and
    its input ``src``; write it to ``path`` (atomically) and return it."""
    spec = method.io_spec
    pred = io.read(outputs[main])
    shape = np.shape(pred.data)
    volume = pred.kind == "nifti" and len(shape) >= 3 and shape[2] > 1  # a 2-D model's slice-wise volume too
    n_spatial = 3 if spec.spatial_dims == 3 or volume else 2
    image = stack_case(src) if isinstance(src, ModalityCase) else io.read(src)
    arrays: dict[str, np.ndarray] = {key: _channel_first(io.read(p) if key != main else pred, n_spatial)
                                     for key, p in outputs.items()}
    arrays["_input"] = _channel_first(image, n_spatial)
    title = f"{method.name} {io.stem_of(outputs[main])}"
    if n_spatial == 3:
        affine = pred.geometry.affine
        vols = {k: _axial(v, affine) for k, v in arrays.items()}
        fg = (vols[main][0] != 0).sum(axis=(0, 1))
        depth = int(fg.shape[0])
        z = int(fg.argmax()) if fg.any() else depth // 2
        arrays = {k: _slice(v, z, depth) for k, v in vols.items()}
        title += f", axial slice {z} of {depth} ({int(fg[z])} foreground voxels)"
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v))[None] for k, v in arrays.items()}
    batch: dict[str, Any] = {spec.input_key: tensors.pop("_input")}
    if isinstance(src, ModalityCase):  # column titles name the modalities
        batch["modalities"] = list(src.modalities)
    own = getattr(method, "panel_columns", None)
    shared: tuple[str, ...] = ("prediction", "reference")
    if own is not None:
        cols, shared = own(batch, tensors)
    else:
        cols = {"input": batch[spec.input_key], "prediction": tensors.get(main),
                "uncertainty": tensors.get("uncertainty")}
    cols = {k: v for k, v in cols.items() if isinstance(v, torch.Tensor)}
    return save_panel(path, cols, max_rows=1, title=title, shared=shared)
