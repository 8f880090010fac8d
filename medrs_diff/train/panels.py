"""Moved to :mod:`medrs_diff.viz.panels`; this re-export keeps older imports working."""

from ..viz.panels import save_panel, to_display

__all__ = ["save_panel", "to_display"]
