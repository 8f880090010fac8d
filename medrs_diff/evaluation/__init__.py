"""Score prediction files against reference files: ``evaluate(pred, ref, task, ...)``.

PRED and REF are two files or two folders of any type :mod:`medrs_diff.io` reads (NIfTI, GeoTIFF,
PNG / JPEG / TIFF, ``.npy``, cubes, ...); in folders, files are paired by name without extension
(:mod:`.pairing`), and every prediction needs a reference and vice versa. Each pair's geometry is
checked (:mod:`.arrays`: NIfTI shape and affine within 1e-4; GeoTIFF shape, CRS and transform;
otherwise shape), and NaN / infinite values, empty or unreadable files stop with one line naming the
file. A file without geometry (``.npy``, PNG, plain TIFF) paired with one that has it is refused, and
geometry-less label maps that match far better transposed or flipped are refused, unless
``assume_same_grid=True`` / ``--assume-same-grid`` (every task takes it).
Per-case scores and the data-set aggregate (the streaming classes of :mod:`medrs_diff.metrics`,
so pooled metrics are pooled over the whole set) are returned and written as CSV (long format: case,
group, metric, value; case ``ALL`` holds the aggregate) and JSON (settings, definitions, aggregate,
cases) by :mod:`.report`, atomically.

One module per task, each with a typed option class:

* ``seg`` (:mod:`.seg`, :class:`SegOptions`): integer label maps (2-D or 3-D) per label or BraTS
  region; a float map in [0, 1] is a probability map of a binary task; the mask is a field of view.
  A prediction label no reference has (0/255 masks) is refused unless ``label_map={255: 1}`` /
  ``--label-map 255:1`` maps it; logits (floats outside [0, 1]) are refused.
* ``spectral`` (:mod:`.spectral`, :class:`SpectralOptions`): band stacks (C, H, W); the mask restricts SAM.
* ``forecast`` (:mod:`.forecast`, :class:`ForecastOptions`): fields (H, W) or (T, H, W), NaN = no data,
  an ensemble member axis first with ``ensemble``; the mask marks the verification domain.
* ``image`` (:mod:`.image`, :class:`ImageOptions`): 2-D or 3-D images; the mask restricts PSNR / SSIM /
  NRMSE and gives the SUV bias inside it.
* ``class`` (:mod:`.classification`, :class:`ClassOptions`): integer class maps or label vectors; the mask
  selects the pixels to score.
* ``fusion`` (:mod:`.fusion`, :class:`FusionOptions`): fused 2-D images against their two sources (REF and
  ``second_source``), no fused reference: EN, SD, MI, VIF, Qabf, SSIM.

Example::

    from medrs_diff.evaluation import evaluate
    res = evaluate("pred/", "labels/", "seg", out="report", tolerance=1.0)
    res = evaluate("sr/", "hr/", "spectral", data_range=10000, resolution_ratio=0.25)
    print(res["aggregate"])
"""

from .api import TASKS, Task, TaskOptions, evaluate, make_options
from .arrays import AFFINE_TOL, check_pair, load, mask_on_grid
from .classification import ClassOptions
from .forecast import ForecastOptions
from .fusion import FusionOptions
from .image import ImageOptions
from .options import CommonOptions
from .pairing import Case, MissingFileError, find_cases, find_masks, find_pairs
from .report import TaskResult, csv_text, format_table, json_text, write_report
from .seg import SegOptions
from .spectral import SpectralOptions

__all__ = [
    "AFFINE_TOL", "TASKS", "Case", "ClassOptions", "CommonOptions", "ForecastOptions", "FusionOptions", "ImageOptions",
    "MissingFileError",
    "SegOptions", "SpectralOptions", "Task", "TaskOptions", "TaskResult", "check_pair", "csv_text", "evaluate",
    "find_cases", "find_masks", "find_pairs", "format_table", "json_text", "load", "make_options", "mask_on_grid",
    "write_report",
]
