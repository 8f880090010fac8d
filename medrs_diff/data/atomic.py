"""Back-compatible alias of :mod:`medrs_diff.io.atomic`."""

from ..io.atomic import atomic_output, atomic_outputs, atomic_write_bytes, atomic_write_text, check_output_path

__all__ = ["atomic_output", "atomic_outputs", "atomic_write_bytes", "atomic_write_text", "check_output_path"]
