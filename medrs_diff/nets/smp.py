"""segmentation-models-pytorch UNets with offline encoder weights.

Nothing here downloads: encoders are built with ``encoder_weights=None`` and pretrained weights come
only from a local ``.pth`` state dict (:func:`load_encoder_weights`). A 3-channel (RGB) state dict
loads into an encoder with another number of input channels through smp's own first-conv patch
(``set_in_channels(..., pretrained=True)``: summed for one channel, repeated and rescaled for more).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ArgumentError, CheckpointError

_FIX_WEIGHTS = "pass the path of a local .pth file holding the encoder's state dict (nothing is downloaded)"


def build_unet(
    encoder_name: str,
    in_channels: int,
    classes: int,
    encoder_depth: int = 5,
    decoder_channels: Sequence[int] | None = None,
) -> nn.Module:
    """``smp.Unet`` with a randomly initialised encoder (``encoder_weights=None``, no download)."""
    import segmentation_models_pytorch as smp

    if not 1 <= encoder_depth <= 5:
        raise ArgumentError("encoder_depth", f"must lie in 1..5, got {encoder_depth}", "use e.g. 5 (smp's default)")
    if decoder_channels is None:
        decoder_channels = (256, 128, 64, 32, 16)[5 - encoder_depth:]
    if len(decoder_channels) != encoder_depth:
        raise ArgumentError(
            "decoder_channels", f"has {len(decoder_channels)} entries for encoder_depth={encoder_depth}",
            "give one decoder width per encoder stage (or leave decoder_channels unset)",
        )
    try:
        return smp.Unet(encoder_name=encoder_name, encoder_depth=encoder_depth, encoder_weights=None,
                        decoder_channels=list(decoder_channels), in_channels=in_channels, classes=classes)
    except KeyError as err:
        raise ArgumentError(
            "encoder_name", f"segmentation-models-pytorch has no encoder {encoder_name!r}",
            "pick one of segmentation_models_pytorch.encoders.get_encoder_names() (e.g. resnet18, resnet34)",
        ) from err


def _state_dict_from(obj: object, path: Path) -> dict[str, Tensor]:
    """The tensor state dict in a loaded file: bare, or under ``state_dict`` / ``model``; ``encoder.`` stripped."""
    state = obj
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(path, "does not hold a state dict of tensors", _FIX_WEIGHTS)
    keys = list(state)
    if all(k.startswith("encoder.") for k in keys):
        return {k[len("encoder."):]: v for k, v in state.items()}
    return dict(state)


def load_encoder_weights(
    unet: nn.Module, path: str | os.PathLike, encoder_name: str, in_channels: int, encoder_depth: int,
) -> None:
    """Load a local ``.pth`` state dict into ``unet.encoder`` (weights-only load; clear errors when the file
    is missing, unreadable or does not fit the encoder)."""
    from segmentation_models_pytorch.encoders import get_encoder

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, "encoder weights file not found",
                              _FIX_WEIGHTS + ", or leave encoder_weights_path unset")
    try:
        raw = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip / EOF errors
        raise CheckpointError(p, f"is not a readable weights-only PyTorch file ({err})", _FIX_WEIGHTS) from err
    state = _state_dict_from(raw, p)
    encoder = unet.encoder
    try:
        encoder.load_state_dict(dict(state), strict=True)
        return
    except RuntimeError as err:
        first_error = err
    if in_channels != 3:  # an RGB state dict: patch the first conv the way smp does for its own weights
        try:
            rgb = get_encoder(encoder_name, in_channels=3, depth=encoder_depth, weights=None)
            rgb.load_state_dict(dict(state), strict=True)
            # pretrained=True only tells smp to adapt the weights just loaded from the local file (sum / repeat the
            # first conv's RGB kernels) instead of re-initialising them; nothing is downloaded (weights=None above)
            rgb.set_in_channels(in_channels, pretrained=True)
            encoder.load_state_dict(rgb.state_dict(), strict=True)
            return
        except RuntimeError:
            pass
    problem = str(first_error).split("\n\t")
    raise CheckpointError(
        p, f"does not fit the {encoder_name} encoder ({'; '.join(s.strip() for s in problem[:3])})",
        f"use weights of a {encoder_name} encoder with {in_channels} or 3 input channels",
    ) from first_error
