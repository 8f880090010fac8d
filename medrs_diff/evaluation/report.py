"""Evaluation reports: a printed table, a long-format CSV and a JSON file, written atomically.

CSV columns: ``case, group, metric, value``; case ``ALL`` holds the data-set aggregate. JSON holds the
whole results dict (settings with the metric definitions, aggregate, cases and task extras such as
contingency tables or the confusion matrix); NaN is written as ``null`` and infinities as ``"inf"`` /
``"-inf"``. Both files are written under temporary names and renamed together, so a crash never leaves
half a report.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_outputs, stem_of

__all__ = ["TaskResult", "csv_text", "default_out", "format_table", "json_text", "report_paths", "write_report"]


@dataclass
class TaskResult:
    """What a task evaluator returns: settings (with definitions), per-case and aggregate scores, extras.

    ``cases`` is case -> group -> metric -> value; ``aggregate`` is group -> metric -> value (a group is
    a label, a BraTS region, or ``"all"``); ``extra`` entries are merged into the results dict.
    """

    settings: dict[str, Any]
    cases: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    aggregate: dict[str, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _json_value(v: Any) -> Any:
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    return v


def json_text(results: dict[str, Any]) -> str:
    """The results dict as JSON (NaN -> null, ±inf -> "inf" / "-inf")."""
    return json.dumps(_json_value(results), indent=2, default=str) + "\n"


def csv_text(results: dict[str, Any]) -> str:
    """Long-format CSV: ``case, group, metric, value``; the aggregate first, as case ``ALL``."""
    buf = _stdio.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", "group", "metric", "value"])
    for group, metrics in results["aggregate"].items():
        for k, v in metrics.items():
            w.writerow(["ALL", group, k, repr(float(v))])
    for case, groups in results["cases"].items():
        for group, metrics in groups.items():
            for k, v in metrics.items():
                w.writerow([case, group, k, repr(float(v))])
    return buf.getvalue()


def format_table(results: dict[str, Any]) -> str:
    """The aggregate as a text table: one row per metric, one column per group."""
    groups = list(results["aggregate"])
    names: list[str] = []
    for g in groups:
        names += [k for k in results["aggregate"][g] if k not in names]
    width = max([len("metric")] + [len(n) for n in names])
    head = f"{'metric':<{width}}  " + "  ".join(f"{g:>12}" for g in groups)
    lines = [f"medrs-diff evaluate --task {results['task']}: {results['n_cases']} case(s)", head, "-" * len(head)]
    for n in names:
        vals = [results["aggregate"][g].get(n, float("nan")) for g in groups]
        lines.append(f"{n:<{width}}  " + "  ".join(f"{v:>12.6g}" for v in vals))
    return "\n".join(lines)


def default_out(pred: Path) -> Path:
    """``<PRED stem>_evaluation`` beside the prediction file or folder, else ``./evaluation_out``."""
    pred = Path(pred)
    candidate = pred.parent / f"{stem_of(pred) if pred.is_file() else pred.name}_evaluation"
    try:
        candidate.mkdir(parents=True, exist_ok=True)
    except OSError:
        return Path("evaluation_out")
    return candidate if os.access(candidate, os.W_OK) else Path("evaluation_out")


def report_paths(out: Path, task: str) -> tuple[Path, Path]:
    """``(out/evaluation_<task>.csv, out/evaluation_<task>.json)``."""
    out = Path(out)
    return out / f"evaluation_{task}.csv", out / f"evaluation_{task}.json"


def write_report(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write CSV and JSON into ``out`` (created if needed), both renamed into place only once complete."""
    csv_path, json_path = report_paths(out, results["task"])
    with atomic_outputs([csv_path, json_path]) as (tmp_csv, tmp_json):
        for tmp, text in ((tmp_csv, csv_text(results)), (tmp_json, json_text(results))):
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
    return csv_path, json_path
