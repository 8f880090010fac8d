"""medrs-diff: conditioned diffusion models for medical imaging and remote sensing."""

__version__ = "0.1.0"
