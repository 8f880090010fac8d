"""The model-space scaling record stored beside an array (NIfTI comment extension, GeoTIFF tag).

io cannot import :mod:`medrs_diff.data.scaling`, so records travel as plain dicts / JSON here;
``Scaling.from_dict`` turns one back into a ``Scaling``.
"""

from __future__ import annotations

import json
from typing import Any

#: GeoTIFF metadata tag / NIfTI comment-extension prefix holding the scaling record.
SCALING_TAG = "MEDRS_SCALING"


def scaling_json(scaling: Any) -> str:
    """The JSON text of a scaling record: a ``Scaling`` (``to_json``), a dict or JSON text."""
    if isinstance(scaling, str):
        return scaling
    if isinstance(scaling, dict):
        return json.dumps(scaling)
    return scaling.to_json()
