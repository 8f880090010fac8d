"""Sentinel-1 + Sentinel-2 time series for cloud removal (SeqDMs): units, checks, readers, simulated clouds.

Units are owned here and recorded with every sample:

- **S1** is sigma0 backscatter in **dB** (VV, VH). Linear power (or amplitude / DN) is refused by range
  (:func:`check_s1_db`), never converted silently. Model space: VV -25..0 dB and VH -32.5..0 dB onto
  [-1, 1], clipped (the SEN12MS-CR / DSen2-CR clipping ranges), :func:`s1_scaling`.
- **S2** is L1C/L2A DN = reflectance x 1e4; model space: reflectance clipped to [0, 1] onto [-1, 1]
  (:func:`s2_scaling`; DSen2-CR clips S2 to 0..10000 DN the same way).

A **series** (:class:`Series`) is one site: ``s2`` (T, C, H, W) reflectance of the (cloudy) dates,
``sar`` (T, 2, H, W) dB or None, ``cloud`` (T, 1, H, W) cloud masks (1 = cloud or shadow),
``target`` (C, H, W) clear reflectance (None at inference), all on one pixel grid.

Readers: SEN12MS-CR triplets (S1 + cloudy S2 + mask -> clear S2, no georeferencing), SEN12MS-CR pairs
(cloudy / clear S2 GeoTIFFs), the eo-learn 5-date series, BigEarthNet S1/S2 patches, and a stack of
GeoTIFFs of several dates (:func:`read_series` in memory, :func:`open_series` window by window; both
refuse dates on different grids or CRSs, naming the files). A date's pixels holding its S2 file's declared
nodata value (in any band) are **missing**: read as cloud (cloud mask 1, reflectance 0) and recorded in
``Series.nodata``; inference writes nodata where every date is missing. Training at scale: :func:`simulate_clouds`
puts procedural clouds and their shadows on a clear image (seeded).
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from ..io.geometry import compare_grids
from ..io.geotiff import is_georeferenced, open_geotiff, read_geotiff
from .errors import DataError
from .scaling import Scaling, linear, reflectance

#: Sentinel-2 L1C bands in the SEN12MS-CR order (13; L2A lacks B10).
S2_L1C_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
S1_POLS = ("VV", "VH")
#: dB clipping ranges of VV and VH (SEN12MS-CR / DSen2-CR preprocessing).
S1_DB_RANGE = {"VV": (-25.0, 0.0), "VH": (-32.5, 0.0)}
#: cloud-cover bins (fractions) of the per-bin tables, EMRDM / UnCRtainTS style.
COVER_BINS = (0.0, 0.1, 0.5, 0.9, 1.0001)

PathLike = str | os.PathLike


def s1_scaling() -> Scaling:
    """VV -25..0 dB and VH -32.5..0 dB onto [-1, 1], clipped."""
    lo = [S1_DB_RANGE[p][0] for p in S1_POLS]
    hi = [S1_DB_RANGE[p][1] for p in S1_POLS]
    return linear(lo, hi, kind="s1_db")


def s2_scaling() -> Scaling:
    """Reflectance x 1e4 (DN) clipped to 0..1e4 onto [-1, 1]. Arrays here are reflectance: use ``reflectance(1, 1)``."""
    return reflectance(1e4, 1.0)


def refl_scaling() -> Scaling:
    """Reflectance (0..1, clipped) onto [-1, 1]: the model space of every S2 array of this module."""
    return reflectance(1.0, 1.0)


def band_indices(available: Sequence[str], wanted: Sequence[str], where: Any) -> list[int]:
    """Indices of ``wanted`` bands in ``available``; ``DataError`` naming the missing band(s) otherwise."""
    missing = [b for b in wanted if b not in available]
    if missing:
        raise DataError(where, f"band(s) {missing} missing (it holds {list(available)})",
                        "give files with every requested band, or drop those bands from `bands`")
    return [list(available).index(b) for b in wanted]


def check_s1_db(s1: np.ndarray, where: Any) -> np.ndarray:
    """``s1`` (..., 2, H, W) as float32 if it looks like dB; ``DataError`` for linear power / amplitude / DN.

    dB backscatter is mostly negative (VV median about -10 dB); linear sigma0 is >= 0 with a median well
    below 1, amplitude DN is in the hundreds. Rule: refuse when >= 99 % of the finite pixels are >= 0
    (linear), or when any finite value lies outside -60..+40 dB. NaN / inf are refused (a series stack reads its
    declared nodata as missing S1 instead, :func:`open_series`).
    """
    a = np.asarray(s1, dtype=np.float32)
    finite = np.isfinite(a)
    if not finite.all():
        raise DataError(where, "S1 holds NaN or inf", "fill those pixels (in a series stack, declare them nodata: "
                        "they are read as missing S1)")
    v = a[finite]
    s1_db_verdict(S1Stats.of(v), lambda: float(np.median(v)), where)
    return a


@dataclass
class S1Stats:
    """Counts and range of the finite S1 values seen so far (block by block: :meth:`add`)."""

    finite: int = 0
    nonneg: int = 0
    lo: float = np.inf
    hi: float = -np.inf

    @classmethod
    def of(cls, values: np.ndarray) -> S1Stats:
        return cls().add(values)

    def add(self, values: np.ndarray) -> S1Stats:
        v = values[np.isfinite(values)]
        if v.size:
            self.finite += int(v.size)
            self.nonneg += int((v >= 0).sum())
            self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))
        return self


def s1_db_verdict(stats: S1Stats, median: Callable[[], float], where: Any) -> None:
    """The rule of :func:`check_s1_db` on ``stats``; ``median`` gives the median for the message only."""
    if stats.finite == 0:
        raise DataError(where, "S1 holds no finite pixel", "give S1 sigma0 in dB with valid pixels")
    nonneg = stats.nonneg / stats.finite
    if nonneg >= 0.99:
        raise DataError(where, f"S1 looks linear, not dB ({100 * nonneg:.0f} % of pixels >= 0, median "
                        f"{median():.3g})", "convert sigma0 to dB first: 10 * log10(sigma0)")
    if stats.lo < -60 or stats.hi > 40:
        raise DataError(where, f"S1 values {stats.lo:.3g}..{stats.hi:.3g} are outside the dB range -60..40",
                        "give calibrated sigma0 in dB (10 * log10 of linear power)")


def check_reflectance(s2: np.ndarray, where: Any) -> np.ndarray:
    """S2 reflectance (float32): refuse DN given as reflectance (values > 2) and non-finite pixels."""
    a = np.asarray(s2, dtype=np.float32)
    if not np.isfinite(a).all():
        raise DataError(where, "S2 holds NaN or inf", "fill nodata before cloud removal")
    if a.max() > 2.0:
        raise DataError(where, f"S2 reaches {a.max():.4g}: DN, not reflectance", "divide DN by 1e4 (the reader's "
                        "`quantification`)")
    return a


@dataclass
class Series:
    """One site: the dates' S2 (T, C, H, W) reflectance, S1 (T, 2, H, W) dB or None, cloud masks (T, 1, H, W),
    the clear target (C, H, W) or None, and the grid (``crs``, ``transform``, ``reference`` file). ``nodata``
    (T, H, W) bool or None marks pixels a date has no data for (the S2 file's nodata value; :func:`open_series`):
    they are also cloud (1) with reflectance 0, so a model fills them from the other dates. S1 pixels holding the
    S1 file's nodata are NaN in ``sar`` (S1 missing there; inference packs them as absent S1)."""

    s2: np.ndarray
    cloud: np.ndarray
    sar: np.ndarray | None = None
    target: np.ndarray | None = None
    name: str = "series"
    crs: Any = None
    transform: Any = None
    reference: Path | None = None
    times: list[str] = field(default_factory=list)
    nodata: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_series(self)

    @property
    def cover(self) -> float:
        """Cloud cover of the series: the fraction of pixels cloudy in every date (nothing clear seen)."""
        return float(self.cloud.min(axis=0).mean())


def check_series(s: Series) -> None:
    """One clear ``DataError`` for an empty sequence, a cloud mask of another size, S1 of another size/date count."""
    if s.s2.ndim != 4 or s.s2.shape[0] == 0:
        raise DataError(s.name, f"S2 sequence has shape {tuple(s.s2.shape)}: empty or not (T, C, H, W)",
                        "give at least one S2 date")
    t, _, h, w = s.s2.shape
    if s.cloud.shape != (t, 1, h, w):
        raise DataError(s.name, f"cloud mask shape {tuple(s.cloud.shape)} differs from (T, 1, H, W) = {(t, 1, h, w)} "
                        "of the S2 dates", "give one cloud mask per date on the S2 grid")
    if s.sar is not None and s.sar.shape != (t, len(S1_POLS), h, w):
        raise DataError(s.name, f"S1 shape {tuple(s.sar.shape)} differs from (T, 2, H, W) = {(t, 2, h, w)}",
                        "give VV and VH per S2 date on the S2 grid")
    if s.nodata is not None and s.nodata.shape != (t, h, w):
        raise DataError(s.name, f"nodata mask shape {tuple(s.nodata.shape)} differs from (T, H, W) = {(t, h, w)}",
                        "give one nodata mask per date on the S2 grid")
    if s.target is not None and s.target.shape != s.s2.shape[1:]:
        raise DataError(s.name, f"target shape {tuple(s.target.shape)} differs from {tuple(s.s2.shape[1:])}",
                        "give the clear image on the S2 grid with the same bands")


# -- cloud masks -------------------------------------------------------------------------------------

def brightness_cloud_mask(s2: np.ndarray, bands: Sequence[str] = S2_L1C_BANDS, threshold: float = 0.2) -> np.ndarray:
    """A crude cloud mask (1 = cloud) from reflectance (..., C, H, W) where no s2cloudless mask exists: mean
    of B02, B03, B04 above ``threshold`` and B11 above it too (snow is bright in visible but dark in SWIR).
    A heuristic, not s2cloudless: it misses thin cloud and shadow."""
    idx = band_indices(bands, ("B02", "B03", "B04", "B11"), "brightness_cloud_mask")
    vis = s2[..., idx[:3], :, :].mean(axis=-3)
    swir = s2[..., idx[3], :, :]
    return ((vis > threshold) & (swir > threshold))[..., None, :, :].astype(np.float32)


def fractal_noise(shape: tuple[int, int], rng: np.random.Generator, octaves: int = 5,
                  persistence: float = 0.5) -> np.ndarray:
    """Sum of Gaussian-smoothed white noise at halving scales (a Perlin-like field), zero mean, unit std."""
    from scipy.ndimage import gaussian_filter

    h, w = shape
    out = np.zeros(shape)
    for o in range(octaves):
        sigma = max(h, w) / 8 / 2**o
        f = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
        out += persistence**o * f / max(f.std(), 1e-12)
    return (out - out.mean()) / max(out.std(), 1e-12)


#: relative cloud reflectance per band (flat in VNIR, lower in SWIR; cirrus B10 raised)
_CLOUD_PROFILE = {"B10": 0.35, "B11": 0.8, "B12": 0.65}


def simulate_clouds(clear: np.ndarray, rng: np.random.Generator, *, coverage: float | None = None,
                    bands: Sequence[str] = S2_L1C_BANDS, shadow: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Procedural clouds and shadows on a clear reflectance image (C, H, W); returns ``(cloudy, mask)``.

    Cloud opacity is a fractal-noise field thresholded at the quantile giving ``coverage`` (uniform in
    0..1 when None) with soft edges; cloud reflectance is bright (0.35..0.7, flat over VNIR, lower in
    SWIR). The shadow is the opacity shifted along a random sun azimuth (4..12 % of the side), darkening
    by 35..70 % outside the cloud. ``mask`` (1, H, W) is 1 where cloud or shadow opacity exceeds 0.1.
    Deterministic given ``rng``.
    """
    c, h, w = clear.shape
    if len(bands) != c:
        raise DataError("simulate_clouds", f"{c} channels but {len(bands)} band names", "pass the image's bands")
    cov = float(rng.uniform(0.0, 1.0)) if coverage is None else float(coverage)
    if not 0.0 <= cov <= 1.0:
        raise DataError("simulate_clouds", f"coverage {cov} outside [0, 1]", "give a fraction")
    noise = fractal_noise((h, w), rng)
    if cov <= 0:
        alpha = np.zeros((h, w))
    else:
        thr = np.quantile(noise, 1.0 - cov)
        alpha = np.clip((noise - thr) / 0.3 + 0.5, 0.0, 1.0) if cov < 1 else np.ones((h, w))
    level = rng.uniform(0.35, 0.7)
    profile = np.array([_CLOUD_PROFILE.get(b, 1.0) for b in bands])[:, None, None]
    cloudy = clear * (1 - alpha) + alpha * level * profile
    shade = np.zeros((h, w))
    if shadow and cov > 0:
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.04, 0.12) * max(h, w)
        dy, dx = int(round(dist * np.sin(ang))), int(round(dist * np.cos(ang)))
        shade = np.roll(alpha, (dy, dx), axis=(0, 1)) * (1 - alpha) * rng.uniform(0.35, 0.7)
        cloudy = cloudy * (1 - shade)
    mask = ((alpha > 0.1) | (shade > 0.1)).astype(np.float32)[None]
    return cloudy.astype(np.float32), mask


# -- readers -----------------------------------------------------------------------------------------

def read_triplet(root: PathLike, sample_id: str, bands: Sequence[str] = S2_L1C_BANDS) -> Series:
    """A SEN12MS-CR triplet ``ID_input.tif`` (VV, VH dB + cloudy S2 DN), ``ID_target.tif``, ``ID_mask.tif``."""
    root = Path(root)
    paths = [root / f"{sample_id}_{k}.tif" for k in ("input", "target", "mask")]
    for p in paths:
        if not p.is_file():
            raise DataError(p, "is missing", "give the triplet's input, target and mask files")
    inp = read_geotiff(paths[0], expected_bands=2 + len(S2_L1C_BANDS)).data.astype(np.float32)
    tgt = read_geotiff(paths[1], expected_bands=len(S2_L1C_BANDS)).data.astype(np.float32)
    mask = read_geotiff(paths[2], expected_bands=1).data.astype(np.float32)
    idx = band_indices(S2_L1C_BANDS, bands, paths[0])
    if mask.shape[1:] != inp.shape[1:]:
        raise DataError(paths[2], f"cloud mask {mask.shape[1:]} differs from the image {inp.shape[1:]}",
                        "give the mask on the image's grid")
    sar = check_s1_db(inp[:2], paths[0])
    s2 = check_reflectance(inp[2:][idx] / 1e4, paths[0])
    target = check_reflectance(tgt[idx] / 1e4, paths[1])
    return Series(s2=s2[None], cloud=(mask > 0.5).astype(np.float32)[None], sar=sar[None], target=target,
                  name=f"triplet_{sample_id}", reference=paths[1])


def triplet_ids(root: PathLike) -> list[str]:
    ids = sorted(p.name[: -len("_input.tif")] for p in Path(root).glob("*_input.tif"))
    if not ids:
        raise DataError(root, "holds no *_input.tif triplets", "point it at sen12mscr_triplets/")
    return ids


def read_pairs(root: PathLike, bands: Sequence[str] = S2_L1C_BANDS) -> list[tuple[str, Series]]:
    """The SEN12MS-CR cloudy / clear pairs listed in ``root/pairs.csv`` as (category, Series); the cloud mask of
    the cloudy date is :func:`brightness_cloud_mask` (the pairs carry none); no S1."""
    root = Path(root)
    table = root / "pairs.csv"
    if not table.is_file():
        raise DataError(table, "is missing", "point it at sen12mscr_pairs/ (it lists the pairs)")
    out = []
    with open(table, newline="") as f:
        for row in csv.DictReader(f):
            clear, cloudy = read_geotiff(root / row["clear"]), read_geotiff(root / row["cloudy"])
            compare_grids(root / row["cloudy"], root / row["clear"], shape=cloudy.data.shape[1:],
                          ref_shape=clear.data.shape[1:], crs=cloudy.geometry.crs, ref_crs=clear.geometry.crs,
                          transform=cloudy.geometry.transform, ref_transform=clear.geometry.transform)
            idx = band_indices(S2_L1C_BANDS[: clear.data.shape[0]], bands, root / row["clear"])
            s2 = check_reflectance(cloudy.data[idx].astype(np.float32) / 1e4, root / row["cloudy"])
            tgt = check_reflectance(clear.data[idx].astype(np.float32) / 1e4, root / row["clear"])
            name = Path(row["clear"]).stem
            out.append((row["category"], Series(
                s2=s2[None], cloud=brightness_cloud_mask(s2[None], bands), target=tgt, name=name,
                crs=clear.geometry.crs, transform=clear.geometry.transform, reference=root / row["clear"])))
    return out


def read_eolearn(root: PathLike) -> np.ndarray:
    """The eo-learn series (5, 13, 101, 100) TOA reflectance (dates 0-1 cloudy, 2-4 clear)."""
    path = Path(root) / "REFERENCE_SCENES.npy"
    if not path.is_file():
        raise DataError(path, "is missing", "point it at sentinel2_eolearn/")
    a = np.load(path).astype(np.float32)
    return check_reflectance(np.moveaxis(a, -1, 1), path)


def read_bigearthnet(root: PathLike, bands: Sequence[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """BigEarthNet S2 L2A (20/60 m bands upsampled bilinearly to 10 m) + S1 (dB) per patch, paired by the patch
    suffix and checked on one grid: list of (name, s2 reflectance (C, 120, 120), s1 dB (2, 120, 120))."""
    from scipy.ndimage import zoom

    root = Path(root)
    s2_dirs = sorted(p for p in (root / "BigEarthNet-S2-Example").glob("S2*") if p.is_dir())
    s1_dirs = {"_".join(p.name.split("_")[-2:]): p for p in (root / "BigEarthNet-S1-Example").glob("S1*")}
    if not s2_dirs:
        raise DataError(root, "holds no BigEarthNet-S2-Example patches", "point it at bigearthnet_s1_s2/")
    out = []
    for d in s2_dirs:
        key = "_".join(d.name.split("_")[-2:])
        s1d = s1_dirs.get(key)
        if s1d is None:
            raise DataError(d, f"has no S1 patch ending in {key}", "add its BigEarthNet-S1 folder")
        ref = read_geotiff(s1d / f"{s1d.name}_VV.tif")
        s1 = np.concatenate([read_geotiff(s1d / f"{s1d.name}_{p}.tif").data for p in S1_POLS]).astype(np.float32)
        planes = []
        for b in bands:
            f = d / f"{d.name}_{b}.tif"
            if not f.is_file():
                raise DataError(f, f"band {b} missing", "drop it from `bands` (BigEarthNet L2A has no B10)")
            r = read_geotiff(f)
            compare_grids(f, s1d, crs=r.geometry.crs, ref_crs=ref.geometry.crs)
            a = r.data[0].astype(np.float32)
            if a.shape != ref.data.shape[1:]:
                a = zoom(a, (ref.data.shape[1] / a.shape[0], ref.data.shape[2] / a.shape[1]), order=1)
            planes.append(a / 1e4)
        out.append((d.name, check_reflectance(np.stack(planes), d), check_s1_db(s1, s1d)))
    return out


def nodata_pixels(raw: np.ndarray, nodata: float | None) -> np.ndarray:
    """(H, W) bool from (C, H, W) as stored: True where any band holds the declared ``nodata`` (NaN included
    when that is the nodata value); all False when the file declares none."""
    if nodata is None:
        return np.zeros(raw.shape[1:], bool)
    hit = np.isnan(raw) if np.isnan(nodata) else raw == nodata
    return hit.any(axis=0)


#: bytes of one file a bounded-memory scan reads at a time (:meth:`SeriesFiles.check_values`)
SCAN_BYTES = 32 * 2**20
#: largest side of the decimated S1 view whose median a refusal message reports
MEDIAN_VIEW = 1024


@dataclass
class SeriesFiles:
    """A stack of GeoTIFFs, one S2 (+ S1, + cloud mask) per date, on one grid, open for windowed reads
    (:func:`open_series`): :meth:`read` returns any window as a :class:`Series`, so memory holds a window,
    never the scene. ``band_index`` holds the 1-based S2 bands read from each date's file. Pixels holding an S2
    file's declared nodata are missing for that date (:class:`Series` ``nodata``)."""

    s2: list[Path]
    sar: list[Path] | None
    masks: list[Path] | None
    band_index: list[list[int]]
    bands: tuple[str, ...]
    quantification: float
    height: int
    width: int
    crs: Any
    transform: Any
    georeferenced: bool
    sources: dict[Path, Any]
    closer: contextlib.ExitStack

    @property
    def name(self) -> str:
        return self.s2[0].stem

    @property
    def declares_nodata(self) -> bool:
        """Whether any date's S2 file declares a nodata value (so missing pixels can occur)."""
        return any(self.sources[p].nodata is not None for p in self.s2)

    @property
    def inputs(self) -> list[Path]:
        """Every file of the stack (outputs must never overwrite one)."""
        return [*self.s2, *(self.sar or []), *(self.masks or [])]

    def _read(self, path: Path, bands: Sequence[int], window: Window | None) -> np.ndarray:
        try:
            return self.sources[path].read(list(bands), window=window)
        except rasterio.errors.RasterioError as exc:
            raise DataError(path, f"pixel data cannot be read ({exc})", "the file is truncated or corrupt") from exc

    def read(self, y0: int = 0, x0: int = 0, h: int | None = None, w: int | None = None) -> Series:
        """The window of ``h`` x ``w`` pixels at row ``y0``, column ``x0`` (default: the whole scene) as a
        :class:`Series`: S2 reflectance (DN / ``quantification``), S1 dB, cloud masks (or
        :func:`brightness_cloud_mask`) on the window's grid; a date's nodata pixels are cloud with reflectance 0
        (``nodata`` set when a file declares one). Values are checked once by :meth:`check_values`."""
        h = self.height - y0 if h is None else h
        w = self.width - x0 if w is None else w
        win = Window(x0, y0, w, h)
        raw = [self._read(p, idx, win) for p, idx in zip(self.s2, self.band_index, strict=True)]
        missing = np.stack([nodata_pixels(r, self.sources[p].nodata) for r, p in zip(raw, self.s2, strict=True)])
        s2 = np.stack([np.where(m, np.float32(0), r.astype(np.float32) / self.quantification)
                       for r, m in zip(raw, missing, strict=True)])
        sar = None if self.sar is None else np.stack([self._s1(p, win) for p in self.sar])
        cloud = (brightness_cloud_mask(s2, self.bands) if self.masks is None else
                 np.stack([(self._read(p, [1], win) > 0.5).astype(np.float32) for p in self.masks]))
        cloud = np.maximum(cloud, missing[:, None].astype(np.float32))
        src = self.sources[self.s2[0]]
        return Series(s2=s2, cloud=cloud, sar=sar, name=self.name, crs=self.crs,
                      transform=src.window_transform(win) if self.georeferenced else None,
                      reference=self.s2[0], times=[p.stem for p in self.s2],
                      nodata=missing if self.declares_nodata else None)

    def _s1(self, path: Path, window: Window | None) -> np.ndarray:
        """VV, VH dB (2, h, w) float32 of one S1 file, NaN where it holds its declared nodata."""
        raw = self._read(path, [1, 2], window)
        return np.where(nodata_pixels(raw, self.sources[path].nodata)[None], np.float32(np.nan),
                        raw.astype(np.float32))

    def _strips(self, n_bands: int) -> Iterator[Window]:
        """Windows of whole rows holding at most :data:`SCAN_BYTES` of ``n_bands`` float32 bands."""
        rows = max(1, SCAN_BYTES // (4 * n_bands * self.width))
        for y in range(0, self.height, rows):
            yield Window(0, y, self.width, min(rows, self.height - y))

    def check_values(self) -> None:
        """Every date's S2 reflectance outside its nodata (:func:`check_reflectance`) and S1 dB outside its nodata
        (:func:`check_s1_db`, the rule on the whole file; undeclared NaN refused) in a bounded-memory scan (strips
        of :data:`SCAN_BYTES`), one ``DataError`` naming the file; a stack with no S2 data pixel is refused.
        The median in an S1 message is that of a decimated view (at most :data:`MEDIAN_VIEW` a side)."""
        seen = False
        for p, idx in zip(self.s2, self.band_index, strict=True):
            for win in self._strips(len(idx)):
                raw = self._read(p, idx, win)
                keep = ~nodata_pixels(raw, self.sources[p].nodata)
                if keep.any():
                    check_reflectance(raw[:, keep].astype(np.float32) / self.quantification, p)
                    seen = True
        if not seen:
            raise DataError(self.s2[0], "every S2 date holds only nodata pixels", "check the files and their nodata "
                            "value")
        for p in self.sar or []:
            stats = S1Stats()
            for win in self._strips(2):
                raw = self._read(p, [1, 2], win).astype(np.float32)
                vals = raw[:, ~nodata_pixels(raw, self.sources[p].nodata)]
                if not np.isfinite(vals).all():
                    raise DataError(p, "S1 holds NaN or inf that the file does not declare as nodata",
                                    "fill those pixels or set the file's nodata to NaN")
                stats.add(vals)

            def median(path: Path = p) -> float:
                src = self.sources[path]
                view = src.read([1, 2], out_shape=(2, min(src.height, MEDIAN_VIEW), min(src.width, MEDIAN_VIEW)))
                return float(np.median(view[np.isfinite(view)]))

            s1_db_verdict(stats, median, p)

    def close(self) -> None:
        self.closer.close()

    def __enter__(self) -> SeriesFiles:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_series(s2_paths: Sequence[PathLike], *, sar_paths: Sequence[PathLike] | None = None,
                mask_paths: Sequence[PathLike] | None = None, bands: Sequence[str] = S2_L1C_BANDS,
                quantification: float = 1e4, check_values: bool = True) -> SeriesFiles:
    """Open a stack of GeoTIFFs, one per date (module notes of :func:`read_series`), checked from the headers
    (same size, CRS and transform as the first S2 file, the message naming both files; ``bands`` present; VV,
    VH in S1) and, with ``check_values``, by the bounded-memory scan :meth:`SeriesFiles.check_values`, all
    before any pixel is used. Use as a context manager (the files stay open for windowed reads)."""
    if len(s2_paths) == 0:
        raise DataError("s2", "the sequence is empty", "give at least one S2 GeoTIFF")
    for name, other in (("S1", sar_paths), ("cloud mask", mask_paths)):
        if other is not None and len(other) != len(s2_paths):
            raise DataError(name, f"{len(other)} files for {len(s2_paths)} S2 dates", "give one per S2 date")
    s2 = [Path(p) for p in s2_paths]
    sar = None if sar_paths is None else [Path(p) for p in sar_paths]
    masks = None if mask_paths is None else [Path(p) for p in mask_paths]
    stack = contextlib.ExitStack()
    sources: dict[Path, Any] = {}
    try:
        for p in [*s2, *(sar or []), *(masks or [])]:
            if p not in sources:
                sources[p] = stack.enter_context(open_geotiff(p))
        ref = sources[s2[0]]

        def same_grid(path: Path) -> None:
            r = sources[path]
            compare_grids(path, s2[0], shape=r.shape, ref_shape=ref.shape, crs=r.crs, ref_crs=ref.crs,
                          transform=r.transform, ref_transform=ref.transform, shape_label="size",
                          hints={"crs": "no silent reprojection here"})

        band_index = []
        for i, p in enumerate(s2):
            same_grid(p)
            src = sources[p]
            names = [n for n in src.descriptions if n]
            avail = names if len(names) == src.count else list(S2_L1C_BANDS[: src.count])
            band_index.append([j + 1 for j in band_indices(avail, bands, p)])
            if sar is not None:
                same_grid(sar[i])
                if sources[sar[i]].count != 2:
                    raise DataError(sar[i], f"has {sources[sar[i]].count} band(s); VV and VH expected", "give VV, VH")
            if masks is not None:
                m = sources[masks[i]]
                if m.shape != src.shape:
                    raise DataError(masks[i], f"cloud mask size {m.shape} differs from {src.shape} of {p}",
                                    "give the mask on the S2 grid")
                same_grid(masks[i])
        files = SeriesFiles(s2=s2, sar=sar, masks=masks, band_index=band_index, bands=tuple(bands),
                            quantification=float(quantification), height=ref.height, width=ref.width, crs=ref.crs,
                            transform=ref.transform, georeferenced=is_georeferenced(ref), sources=sources,
                            closer=stack)
        if check_values:
            files.check_values()
    except BaseException:
        stack.close()
        raise
    return files


def read_series(s2_paths: Sequence[PathLike], *, sar_paths: Sequence[PathLike] | None = None,
                mask_paths: Sequence[PathLike] | None = None, bands: Sequence[str] = S2_L1C_BANDS,
                quantification: float = 1e4) -> Series:
    """A site from GeoTIFFs, one per date: S2 (DN; ``bands`` in file order, or band descriptions when set),
    optional S1 VV/VH dB files and cloud masks (1 = cloud) per date. Every file must share the first S2
    file's CRS, transform and size (no silent reprojection: the message names both files). Without masks,
    :func:`brightness_cloud_mask`. The whole scene in memory: :func:`open_series` reads it window by window."""
    with open_series(s2_paths, sar_paths=sar_paths, mask_paths=mask_paths, bands=bands,
                     quantification=quantification) as files:
        return files.read()


def cover_bin(cover: float, edges: Sequence[float] = COVER_BINS) -> str:
    """Label of the cloud-cover bin of ``cover`` (a fraction), e.g. ``"10-50%"``."""
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if lo <= cover < hi:
            return f"{round(100 * lo)}-{min(100, round(100 * hi))}%"
    raise DataError("cover", f"{cover} outside the bins {list(edges)}", "give a fraction in [0, 1]")


def scene_phantom(size: int, n_bands: int, seed: int, n_regions: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic clear S2 scene (n_bands, size, size) reflectance in 0.02..0.6 (Voronoi land-cover regions, one
    spectrum each) and its S1 (2, size, size) dB, a function of the same regions (VV -20..-5, VH 7 dB lower),
    so S1 tells the regions apart under clouds. Float32, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(0, size, (n_regions, 2))
    region = np.argmin((yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2, axis=-1)
    spectra = rng.uniform(0.02, 0.6, (n_regions, n_bands))
    clear = np.moveaxis(spectra[region], -1, 0)
    vv = np.linspace(-20, -5, n_regions)[rng.permutation(n_regions)][region]
    sar = np.stack([vv, vv - 7.0])
    return clear.astype(np.float32), sar.astype(np.float32)
