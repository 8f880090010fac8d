"""Pair prediction, reference and mask files by case name.

Two files make one case. Two folders are matched by file name without its registered suffix
(``case.nii.gz`` and ``case.tif`` both give ``case``); every prediction needs a reference and vice
versa. A mask is one file for every case or a folder paired with the references by name (``case`` or, as
the field-of-view masks of HRF / DRIVE-style layouts, ``case_mask``). Any file
type that :mod:`medrs_diff.io` reads is accepted; hidden and temporary (``.tmp-*``) files are skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import io
from ..errors import DataError

__all__ = ["Case", "MissingFileError", "find_cases", "find_masks", "find_pairs"]

PathLike = str | os.PathLike


class MissingFileError(DataError, FileNotFoundError):
    """A prediction, reference or mask that does not exist or has no partner (also a FileNotFoundError)."""


@dataclass(frozen=True)
class Case:
    """One scored case: its name and the prediction, reference and (optional) mask files."""

    name: str
    pred: Path
    ref: Path
    mask: Path | None = None


def _list_folder(folder: Path, role: str) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in io.list_inputs(folder, what=role):
        key = io.stem_of(p)
        if key in files:
            raise DataError(folder, f"{role} folder holds two files for case {key!r} ({files[key].name}, {p.name})",
                            "keep one file per case name")
        files[key] = p
    return files


def _list(names: list[str]) -> str:
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")


def find_pairs(pred: PathLike, ref: PathLike) -> list[tuple[str, Path, Path]]:
    """Match prediction and reference files by name; ``(case, pred_path, ref_path)`` sorted by case.

    Two files make one pair named after the reference. Two folders are matched by file name without
    extension; a prediction without reference or a reference without prediction raises
    :class:`MissingFileError` naming them.
    """
    pred, ref = Path(pred), Path(ref)
    for p, role in ((pred, "prediction"), (ref, "reference")):
        if not p.exists():
            raise MissingFileError(p, f"{role} does not exist", "check the path (and the working directory)")
    if pred.is_file() and ref.is_file():
        io.format_for(pred), io.format_for(ref)  # an unknown suffix: DataError naming the known ones
        return [(io.stem_of(ref), pred, ref)]
    if pred.is_dir() and ref.is_dir():
        fp, fr = _list_folder(pred, "prediction"), _list_folder(ref, "reference")
        no_ref, no_pred = sorted(set(fp) - set(fr)), sorted(set(fr) - set(fp))
        if no_pred:
            raise MissingFileError(ref, f"no prediction in {pred} for reference(s) {_list(no_pred)}"
                                   + (f"; no reference for prediction(s) {_list(no_ref)}" if no_ref else ""),
                                   "files are paired by name without extension: add the missing files or "
                                   "remove the unpaired ones")
        if no_ref:
            raise MissingFileError(pred, f"no reference in {ref} for prediction(s) {_list(no_ref)}",
                                   "files are paired by name without extension: add the missing references "
                                   "or remove the unpaired predictions")
        return [(k, fp[k], fr[k]) for k in sorted(fp)]
    raise DataError(pred, f"prediction ({'file' if pred.is_file() else 'folder'}) and reference {ref} "
                    f"({'file' if ref.is_file() else 'folder'}) must both be files or both be folders",
                    "pass two files or two folders")


def find_masks(mask: PathLike | None, cases: list[str]) -> dict[str, Path | None]:
    """Mask file per case: one file for all cases, or a folder paired with the cases by name: ``<case>`` first,
    else ``<case>_mask`` (the FOV masks of HRF, ``NN_h_mask.tif`` for ``NN_h``)."""
    if mask is None:
        return dict.fromkeys(cases)
    mask = Path(mask)
    if not mask.exists():
        raise MissingFileError(mask, "mask does not exist", "check the path or drop the mask")
    if mask.is_file():
        io.format_for(mask)
        return dict.fromkeys(cases, mask)
    return pair_folder(mask, cases, "mask", ("", "_mask"))


def pair_folder(folder: Path, cases: list[str], what: str, suffixes: tuple[str, ...] = ("",)) -> dict[str, Path]:
    """The file of ``folder`` named ``<case><suffix>`` (without its extension; the first suffix that exists) for
    every case; one error listing the cases without one."""
    files = _list_folder(folder, what)
    found = {c: next((files[c + s] for s in suffixes if c + s in files), None) for c in cases}
    missing = [c for c, f in found.items() if f is None]
    if missing:
        names = " or ".join(f"<case>{s}" for s in suffixes)
        raise MissingFileError(folder, f"no {what} file for case(s) {_list(missing)}",
                               f"{what} files are paired with the cases by name without extension ({names}): "
                               "add them")
    return found  # type: ignore[return-value]


def find_cases(pred: PathLike, ref: PathLike, mask: PathLike | None = None) -> list[Case]:
    """:func:`find_pairs` plus :func:`find_masks`, as :class:`Case` records sorted by name."""
    pairs = find_pairs(pred, ref)
    masks = find_masks(mask, [c for c, _, _ in pairs])
    return [Case(c, p, r, masks[c]) for c, p, r in pairs]
