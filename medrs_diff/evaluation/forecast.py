"""Task ``forecast``: precipitation-like fields (H, W) or (T, H, W); NaN marks no data.

With ``ensemble`` the prediction has a leading member axis (M, ...): CRPS is scored on the members and
the deterministic scores on the ensemble mean. The mask marks the verification domain. Contingency
tables and FSS sums are pooled over the whole test set, ratios taken once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import metrics as M
from ..errors import ArgumentError, DataError
from .arrays import band_first, check_pair, iter_cases, mask_on_grid, require_finite, scoring
from .options import CommonOptions, flag, int_tuple
from .pairing import Case
from .report import TaskResult

__all__ = ["ForecastOptions", "evaluate_forecast"]


@dataclass
class ForecastOptions(CommonOptions):
    """Options of task ``forecast``.

    ``thresholds`` (required, strictly increasing): event thresholds (value >= threshold, e.g. mm/h);
    ``scales``: max-pool sizes for CSI, FSS neighbourhood sizes and CRPS average-pool sizes;
    ``ensemble``: the prediction has a leading ensemble-member axis.
    """

    thresholds: Sequence[float] | None = None
    scales: Sequence[int] = (1, 4, 16)
    ensemble: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.thresholds is None or (not isinstance(self.thresholds, int | float) and not list(self.thresholds)):
            raise ArgumentError(flag("thresholds"), "task 'forecast' needs event thresholds",
                                "pass thresholds= / --thresholds, e.g. --thresholds 0.5 2 5 10 30 (mm/h)")
        try:
            self.thresholds = tuple(M.check_thresholds(self.thresholds, "thresholds"))
        except ValueError:
            raise ArgumentError(flag("thresholds"), f"must be finite and strictly increasing, got "
                                f"{list(np.atleast_1d(self.thresholds))}",
                                "sort them and drop duplicates, e.g. --thresholds 0.5 2 5") from None
        self.scales = int_tuple(self.scales, "scales", low=1)
        self.ensemble = bool(self.ensemble)


def evaluate_forecast(cases: list[Case], opts: ForecastOptions) -> TaskResult:
    """Per-field scores, and the pooled (contingency, FSS, CRPS) and mean (RALSD) aggregates."""
    thresholds, scales = list(opts.thresholds), list(opts.scales)
    res = TaskResult(settings={
        "thresholds": thresholds, "scales": scales, "ensemble": opts.ensemble,
        "definitions": {
            "events": "value >= threshold; NaN and pixels outside --mask left out",
            "csi/pod/far/hss/ets/bias": "contingency tables summed over the whole test set, ratios taken once",
            "csi_poolK": "CSI after KxK max pooling (stride K)",
            "fss_N": "Roberts-Lean FSS, NxN neighbourhood, sums pooled over the set",
            "crps": "ensemble CRPS of the empirical distribution (pysteps), pooled over all pixels; "
                    "crps_avgpoolK after KxK average pooling",
            "ralsd": "radially averaged log spectral distance in dB, mean over fields",
            "deterministic scores with --ensemble": "computed on the ensemble mean",
        },
    })
    cat = M.CategoricalMetric(thresholds, scales)
    fss_metric = M.FSSMetric(thresholds, scales)
    ralsd_metric = M.RALSDMetric()
    crps_metric = M.CRPSMetric(scales) if opts.ensemble else None
    for case, lp, lr, lm in iter_cases(cases):
        require_finite(lp, "prediction", allow_nan=True)
        require_finite(lr, "reference", allow_nan=True)
        check_pair(lp, lr, assume_same_grid=opts.assume_same_grid, skip_leading=1 if opts.ensemble else 0)
        pred = lp.data.astype(np.float64)
        ref = lr.data.astype(np.float64)
        if ref.ndim < 2:
            raise DataError(lr.path, f"forecast fields need (H, W) axes, got shape {ref.shape}",
                            "write (H, W) or (T, H, W) fields")
        if lm is not None:
            grid = ref.shape if lm.data.ndim == ref.ndim and not band_first(lm) else ref.shape[-2:]
            outside = ~mask_on_grid(lm, lr, grid, assume_same_grid=opts.assume_same_grid)
            ref = np.where(outside, np.nan, ref)
            pred = np.where(outside, np.nan, pred)
        det = np.nanmean(pred, axis=0) if opts.ensemble else pred
        p_b, r_b = det[None], ref[None]
        out: dict[str, float] = {}
        with scoring(case):
            table = M.contingency_table(p_b, r_b, thresholds)
            for name, values in M.categorical_scores(table).items():
                out.update({f"{name}@{t:g}": float(v) for t, v in zip(thresholds, values)})
            f = M.fss(p_b, r_b, thresholds, scales)
            out.update({f"fss_{n}@{t:g}": float(f[i, j]) for i, t in enumerate(thresholds)
                        for j, n in enumerate(scales)})
            cat.update(p_b, r_b)
            fss_metric.update(p_b, r_b)
            if np.isfinite(det).all() and np.isfinite(ref).all():
                v = M.ralsd(det, ref)
                out["ralsd"] = float(v.mean())
                ralsd_metric.update(det, ref)
            if crps_metric is not None:
                e = pred[None]
                for k, v in M.pooled_crps(e, r_b, scales, "avg").items():
                    out["crps" if k == 1 else f"crps_avgpool{k}"] = float(v[0])
                crps_metric.update(e, r_b)
        res.cases[case.name] = {"all": out}
    agg = cat.compute()
    agg.update(fss_metric.compute())
    agg.update(ralsd_metric.compute())
    if crps_metric is not None:
        agg.update(crps_metric.compute())
    res.aggregate["all"] = agg
    res.extra["contingency_tables"] = {
        str(k): {f"{t:g}": dict(zip(("hits", "misses", "false_alarms", "correct_negatives"), map(int, row)))
                 for t, row in zip(thresholds, tab)} for k, tab in cat.tables.items()}
    return res
