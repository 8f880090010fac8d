"""Data layer: reading, scaling into model space, writing with geometry kept.

Modules (import them directly; this package stays light so ``from medrs_diff.data import keys`` is cheap):

- ``keys``: names of batch-dict keys; ``errors``: ``DataError`` (file, problem, fix); ``atomic``: safe outputs
  (alias of ``medrs_diff.io.atomic``).
- ``scaling``: invertible, recorded model-space scalings (CT window, MRI percentiles, PET SUV, reflectance, dB).
- ``readers`` / ``writers``: back-compatible re-exports of the NIfTI / GeoTIFF / 2-D image readers and writers,
  which live in :mod:`medrs_diff.io` (one registry of file formats, atomic writers keeping geometry).
- ``medical``: MONAI dictionary pipelines for NIfTI; ``clinical2d``: PNG/JPEG/TIFF/GIF with masks (DRIVE).
- ``geo``: TorchGeo RasterDataset, intersections, LR/HR pairs, samplers; ``radar``: xarray radar sequences;
  ``hyperspectral``: cubes and spatially disjoint patch splits; ``synthetic``: phantoms for every task.
"""
