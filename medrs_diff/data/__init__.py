"""Data layer: reading, scaling into model space, writing with geometry kept.

Modules (import them directly; this package stays light so ``from medrs_diff.data import keys`` is cheap):

- ``keys``: names of batch-dict keys; ``errors``: ``DataError`` (file, problem, fix); ``atomic``: safe outputs.
- ``scaling``: invertible, recorded model-space scalings (CT window, MRI percentiles, PET SUV, reflectance, dB).
- ``readers`` / ``writers``: NIfTI and GeoTIFF single files keeping affine / CRS / transform / nodata.
- ``medical``: MONAI dictionary pipelines for NIfTI; ``clinical2d``: PNG/JPEG/TIFF/GIF with masks (DRIVE).
- ``geo``: TorchGeo RasterDataset, intersections, LR/HR pairs, samplers; ``radar``: xarray radar sequences;
  ``hyperspectral``: cubes and spatially disjoint patch splits; ``synthetic``: phantoms for every task.
"""
