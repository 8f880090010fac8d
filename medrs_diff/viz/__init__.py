"""Pictures: validation / inference PNG panels (:mod:`.panels`)."""

from .panels import save_panel, to_display

__all__ = ["save_panel", "to_display"]
