"""The denoiser: MONAI's ``DiffusionModelUNet`` with SDPA attention on and a place to inject
condition features.

SegDiff adds an image encoding to the noisy-mask features right after the first convolution;
SRDiff adds its LR-encoder features after the UNet's first residual block. MONAI's ControlNet
residuals reach only the skip connections, so :class:`ConditionedUNet` wraps the chosen inner
module and adds the features to its output (``cond_at='conv_in'`` or ``'first_block'``).

``downsample='wavelet'`` swaps MONAI's stride-2 conv downsamplers and nearest+conv upsamplers for
Haar DWT + conv / conv + IDWT (:mod:`.wavelet`, the "slim" frequency-domain UNet); time embedding,
attention and conditioning are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from monai.networks.nets import DiffusionModelUNet
from torch import Tensor, nn

from ..errors import ArgumentError
from .wavelet import WaveletDownsample, WaveletUpsample

DOWNSAMPLES = ("conv", "wavelet")


class _Slot:
    """Holds the condition features of the current forward pass (not a module: no parameters)."""

    value: Tensor | None = None


class _AddFromSlot(nn.Module):
    def __init__(self, inner: nn.Module, slot: _Slot) -> None:
        super().__init__()
        self.inner = inner
        self._slot = slot

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if self._slot.value is not None:
            if self._slot.value.shape != out.shape:
                raise ValueError(
                    f"condition features {tuple(self._slot.value.shape)} do not match the UNet features "
                    f"{tuple(out.shape)}; the encoder must output {out.shape[1]} channels at this resolution"
                )
            out = out + self._slot.value
        return out


class ConditionedUNet(nn.Module):
    """``forward(x_t, t, cond=None, features=None)``: ``cond`` is concatenated to x_t as channels,
    ``features`` (B, channels[0], *spatial) are added at ``cond_at``."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 64, 128),
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        cond_channels: int = 0,
        cond_at: Literal["conv_in", "first_block"] = "conv_in",
        downsample: Literal["conv", "wavelet"] = "conv",
        wavelet_kernel: int = 1,
    ) -> None:
        super().__init__()
        #: spatial sizes must be multiples of this (one stride-2 downsampling between levels)
        self.size_multiple = 2 ** (len(channels) - 1)
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels + cond_channels,
            out_channels=out_channels,
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            num_res_blocks=num_res_blocks,
            num_head_channels=num_head_channels,
            norm_num_groups=norm_num_groups,
            use_flash_attention=True,  # F.scaled_dot_product_attention: fused kernels, far less memory
        )
        check_downsample(downsample)
        if downsample == "wavelet":
            _use_wavelets(self.unet, spatial_dims, wavelet_kernel)
        self.downsample = downsample
        self._slot = _Slot()
        if cond_at == "conv_in":
            self.unet.conv_in = _AddFromSlot(self.unet.conv_in, self._slot)
        elif cond_at == "first_block":
            first = self.unet.down_blocks[0].resnets
            first[0] = _AddFromSlot(first[0], self._slot)
        else:
            raise ValueError(f"cond_at must be 'conv_in' or 'first_block', got {cond_at!r}")
        self.feature_channels = channels[0]
        self.cond_channels = cond_channels

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, features: Tensor | None = None) -> Tensor:
        if self.cond_channels:
            if cond is None or cond.shape[1] != self.cond_channels:
                raise ValueError(f"this UNet concatenates a {self.cond_channels}-channel condition to x_t")
            x = _cat(x, cond)
        self._slot.value = features
        try:
            return self.unet(x, t)
        finally:
            self._slot.value = None


def check_downsample(downsample: str) -> None:
    """Recipe-facing check of the ``downsample`` key (one line naming the fix)."""
    if downsample not in DOWNSAMPLES:
        raise ArgumentError("downsample", f"must be one of {DOWNSAMPLES}, got {downsample!r}",
                            "use 'conv' (MONAI strided conv / interpolation) or 'wavelet' (Haar DWT / IDWT)")


def _use_wavelets(unet: DiffusionModelUNet, spatial_dims: int, kernel: int) -> None:
    """Replace every down/up-sampler of ``unet`` (channel-preserving in MONAI) by its wavelet twin."""
    if kernel not in (1, 3):
        raise ValueError(f"wavelet_kernel must be 1 or 3, got {kernel}")
    for block in unet.down_blocks:
        if block.downsampler is not None:
            ch = block.downsampler.num_channels
            block.downsampler = WaveletDownsample(spatial_dims, ch, ch, kernel)
    for block in unet.up_blocks:
        if block.upsampler is not None:
            ch = block.resnets[-1].out_channels
            block.upsampler = WaveletUpsample(spatial_dims, ch, ch, kernel)


def _cat(a: Tensor, b: Tensor) -> Tensor:
    import torch

    return torch.cat([a, b], 1)
