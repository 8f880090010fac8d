"""MedSegDiff V1 network (Wu et al., MIDL 2023, arXiv 2211.00611), paper-faithful, 2-D and 3-D.

``eps_theta(x_t, I, t) = D(E_x(x_t, t) + E_I(I, x_t), t)``: a diffusion UNet encoder ``E_x`` over the
noisy mask x_t (with the time embedding), a condition encoder ``E_I`` over the image, the two
bottleneck embeddings **summed** and decoded by ``D`` with the skips of ``E_x``.

**Dynamic conditional encoding** at every encoder scale k (paper Eq. 3): with m_I^k the condition
(image) features and m_x^k the mask (x_t) features of that scale,

    A(m_I^k, m_x^k) = (LN(m_I^k) ⊙ LN(m_x^k)) ⊙ m_I^k

(⊙ element-wise), and A replaces m_I^k on the image path, which goes on to the next scale: the
noisy mask tells the condition encoder where to look, step by step. LN is a layer norm over
(C, *spatial) per sample (``GroupNorm(1, C)``, resolution-agnostic). Its affine gains start at 0 and
biases at 1 so that A = m_I at initialisation (the image path starts as a plain encoder and learns
how much to let x_t re-weight it); the formula itself is the paper's.

**FF-Parser** (:class:`~medrs_diff.nets.ffparser.FFParser`, the paper's Fourier-domain filter): the mask features pass
through a learnable Fourier filter before they enter the conditional encoding, to damp the
high-frequency noise that x_t carries; it sits on that branch only (the diffusion encoder itself goes
on with the unfiltered features), at the first ``ff_parser_levels`` scales (default: all). Filters are
stored at ``ff_base_size / 2**k`` and resampled to any input size.

Because A needs x_t at every scale, the condition encoder runs at every sampling step. What does not
depend on x_t is computed once: :meth:`MedSegDiffUNet.image_features` (the image stem and the
first-scale blocks, the costliest part at full resolution); ``forward(x_t, t, features=...)`` takes it.

Optional **image in the diffusion encoder** (the official repository's input path, off unless
``image_in_diffusion_encoder=True``): in ImprintLab/MedSegDiff (``UNetModel_newpreview.forward``) the
model input is the concatenation [image, x_t] and the diffusion encoder runs on all of it, so E_x and
the skips it hands the decoder see the image at full resolution (the image channels are also split
off for the condition encoder). The paper's Eq. 2 has E_x over x_t alone, where image information
reaches the decoder only through the bottleneck sum; that is the default here. Under the switch the
first convolution of E_x takes ``in_channels + mask_channels`` channels, [image, x_t]; nothing else
changes. :meth:`MedSegDiffUNet.image_features` then returns the cached condition features with the
raw image appended as its last ``in_channels`` channels, so the image travels with the features
(one tensor, computed once per image, repeated per sample like them). The repository's other
difference, the calibration head and its blend, is a separate switch (below).

Optional **calibration head** (the official repository's, off unless ``calibration_head=True``): a
small decoder over the (dynamically encoded) condition features with the condition encoder's own
skips, ending in a sigmoid (1 channel) or softmax (K channels) mask; ``forward(...,
return_calibration=True)`` returns ``(eps, mask_probability)``.

Built from MONAI blocks (``DiffusionUNetResnetBlock`` with the time embedding on the mask path,
``UnetResBlock`` on the image path, ``SpatialAttentionBlock``, ``DiffusionUnetDownsample``); no module is
ever built inside ``forward`` (the official code builds random convolutions there on every call).
Spatial sizes must be multiples of :attr:`MedSegDiffUNet.size_multiple` = 2**(levels-1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, SpatialAttentionBlock, UnetResBlock
from monai.networks.nets.diffusion_model_unet import (
    DiffusionUnetDownsample,
    DiffusionUNetResnetBlock,
    get_timestep_embedding,
)
from torch import Tensor, nn

from ..errors import ArgumentError, DataError
from .ffparser import FFParser

__all__ = ["DynamicConditionalEncoding", "MedSegDiffUNet"]


class DynamicConditionalEncoding(nn.Module):
    """``A(c, m) = (LN(c) ⊙ LN(m)) ⊙ c`` (paper Eq. 3) for condition features c and mask features m of one scale.

    LN: ``GroupNorm(1, channels)`` (layer norm over C×spatial per sample); gains start at 0 and biases at 1
    so that ``A(c, m) = c`` at initialisation.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm_cond = nn.GroupNorm(1, channels)
        self.norm_mask = nn.GroupNorm(1, channels)
        for norm in (self.norm_cond, self.norm_mask):
            nn.init.zeros_(norm.weight)
            nn.init.ones_(norm.bias)

    def forward(self, cond: Tensor, mask: Tensor) -> Tensor:
        if cond.shape != mask.shape:
            raise DataError("DynamicConditionalEncoding", f"condition features {tuple(cond.shape)} and mask features "
                            f"{tuple(mask.shape)} differ", "feed features of the same scale and width")
        return self.norm_cond(cond) * self.norm_mask(mask) * cond


def _conv(spatial_dims: int, cin: int, cout: int, kernel: int = 3) -> Convolution:
    return Convolution(spatial_dims, cin, cout, strides=1, kernel_size=kernel, padding=kernel // 2, conv_only=True)


def _image_block(spatial_dims: int, cin: int, cout: int, groups: int) -> UnetResBlock:
    return UnetResBlock(spatial_dims, cin, cout, kernel_size=3, stride=1, norm_name=("group", {"num_groups": groups}),
                        act_name="swish")


class _Upsample(nn.Module):
    """Nearest x2 then a 3×3 convolution (the diffusion-UNet upsampler)."""

    def __init__(self, spatial_dims: int, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _conv(spatial_dims, cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class MedSegDiffUNet(nn.Module):
    """MedSegDiff V1 denoiser (see the module doc).

    ``image_features(image)`` -> the x_t-independent condition features (compute once per image);
    ``forward(x_t, t, features, return_calibration=False)`` -> eps (B, mask_channels, *spatial), or
    ``(eps, mask_probability)`` with the calibration head. With ``image_in_diffusion_encoder`` the
    features carry the raw image too (:attr:`feature_channels` = channels[0] + in_channels).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        mask_channels: int,
        channels: Sequence[int] = (64, 128, 256, 256),
        attention_levels: Sequence[bool] | None = None,
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        ff_parser_levels: int | None = None,
        ff_base_size: int | Sequence[int] = 64,
        calibration_head: bool = False,
        image_in_diffusion_encoder: bool = False,
    ) -> None:
        super().__init__()
        chans = [int(c) for c in channels]
        levels = len(chans)
        if spatial_dims not in (2, 3):
            raise ArgumentError("spatial_dims", f"MedSegDiff works in 2-D or 3-D, got {spatial_dims}", "use 2 or 3")
        if levels < 1 or any(c % norm_num_groups for c in chans):
            raise ArgumentError("channels", f"{chans} must be non-empty multiples of norm_num_groups={norm_num_groups}",
                                "pick widths divisible by norm_num_groups")
        attn = [False] * levels if attention_levels is None else [bool(a) for a in attention_levels]
        if len(attn) != levels:
            raise ArgumentError("attention_levels", f"has {len(attn)} entries for {levels} levels",
                                "give one flag per entry of channels")
        ff_levels = levels if ff_parser_levels is None else int(ff_parser_levels)
        if not 0 <= ff_levels <= levels:
            raise ArgumentError("ff_parser_levels", f"must be in 0 .. {levels}, got {ff_parser_levels}",
                                "give how many encoder scales (from the first) get an FF-Parser")
        if not isinstance(image_in_diffusion_encoder, bool):
            raise ArgumentError("image_in_diffusion_encoder",
                                f"must be true or false, got {image_in_diffusion_encoder!r}",
                                "true feeds [image, x_t] to the diffusion encoder (official code), false x_t (paper)")
        base = (ff_base_size,) * spatial_dims if isinstance(ff_base_size, int) else tuple(ff_base_size)
        self.spatial_dims, self.in_channels, self.mask_channels = spatial_dims, in_channels, mask_channels
        self.channels, self.levels, self.ff_parser_levels = tuple(chans), levels, ff_levels
        #: spatial sizes must be multiples of this (one stride-2 downsampling between levels)
        self.size_multiple = 2 ** (levels - 1)
        self.image_in_diffusion_encoder = image_in_diffusion_encoder
        #: channels of :meth:`image_features` (the raw image appended under ``image_in_diffusion_encoder``)
        self.feature_channels = chans[0] + (in_channels if image_in_diffusion_encoder else 0)
        g, temb = norm_num_groups, 4 * chans[0]

        def attention(c: int, on: bool) -> nn.Module:
            if not on:
                return nn.Identity()
            return SpatialAttentionBlock(spatial_dims, c, num_head_channels=min(num_head_channels, c),
                                         norm_num_groups=g, use_flash_attention=True)

        self.time_embed = nn.Sequential(nn.Linear(chans[0], temb), nn.SiLU(), nn.Linear(temb, temb))
        # diffusion (mask) encoder
        # (input [image, x_t] under image_in_diffusion_encoder, the official code's; x_t alone, the paper's)
        self.mask_in = _conv(spatial_dims, mask_channels + (in_channels if image_in_diffusion_encoder else 0), chans[0])
        self.mask_blocks = nn.ModuleList()
        self.mask_attn = nn.ModuleList()
        self.mask_down = nn.ModuleList()
        # condition (image) encoder
        self.image_in = _conv(spatial_dims, in_channels, chans[0])
        self.image_blocks = nn.ModuleList()
        self.image_down = nn.ModuleList()
        self.ff_parsers = nn.ModuleList()
        self.encodings = nn.ModuleList()
        cin = chans[0]
        for k, c in enumerate(chans):
            self.mask_blocks.append(nn.ModuleList(
                DiffusionUNetResnetBlock(spatial_dims, cin if i == 0 else c, temb, c, norm_num_groups=g)
                for i in range(num_res_blocks)))
            self.mask_attn.append(attention(c, attn[k]))
            self.image_blocks.append(nn.Sequential(*(
                _image_block(spatial_dims, cin if i == 0 else c, c, g) for i in range(num_res_blocks))))
            level_base = tuple(max(2, b // 2**k) for b in base)
            self.ff_parsers.append(FFParser(c, spatial_dims, level_base) if k < ff_levels else nn.Identity())
            self.encodings.append(DynamicConditionalEncoding(c))
            if k < levels - 1:
                self.mask_down.append(DiffusionUnetDownsample(spatial_dims, c, use_conv=True))
                self.image_down.append(DiffusionUnetDownsample(spatial_dims, c, use_conv=True))
            cin = c
        # bottleneck (after the sum) and decoder with the mask encoder's skips
        self.mid = nn.ModuleList(DiffusionUNetResnetBlock(spatial_dims, chans[-1], temb, chans[-1], norm_num_groups=g)
                                 for _ in range(2))
        self.mid_attn = attention(chans[-1], attn[-1])
        self.up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        for k in reversed(range(levels - 1)):
            c = chans[k]
            self.up.append(_Upsample(spatial_dims, chans[k + 1], c))
            self.up_blocks.append(nn.ModuleList(
                DiffusionUNetResnetBlock(spatial_dims, 2 * c if i == 0 else c, temb, c, norm_num_groups=g)
                for i in range(num_res_blocks)))
            self.up_attn.append(attention(c, attn[k]))
        self.out = nn.Sequential(nn.GroupNorm(g, chans[0]), nn.SiLU(), _conv(spatial_dims, chans[0], mask_channels))
        nn.init.zeros_(self.out[-1].conv.weight)
        nn.init.zeros_(self.out[-1].conv.bias)
        # optional calibration head (official repository): decodes the condition path into a mask
        self.calibration = None
        if calibration_head:
            head = nn.Module()
            ups = list(reversed(range(levels - 1)))
            head.up = nn.ModuleList(_Upsample(spatial_dims, chans[k + 1], chans[k]) for k in ups)
            head.blocks = nn.ModuleList(_image_block(spatial_dims, 2 * chans[k], chans[k], g) for k in ups)
            head.out = _conv(spatial_dims, chans[0], mask_channels, kernel=1)
            self.calibration = head

    # -- condition path ------------------------------------------------------------------------------
    def check_size(self, x: Tensor, where: str = "input") -> None:
        """Raise :class:`DataError` unless every spatial size is a multiple of :attr:`size_multiple`."""
        bad = [s for s in x.shape[2:] if s % self.size_multiple]
        if x.ndim != self.spatial_dims + 2 or bad:
            raise DataError(where, f"spatial shape {tuple(x.shape[2:])} is not {self.spatial_dims}-D with sizes that "
                            f"are multiples of {self.size_multiple} (2**(levels-1))",
                            f"crop or pad the image / patch to a multiple of {self.size_multiple}")

    def image_features(self, image: Tensor) -> Tensor:
        """The condition features that do not depend on x_t: image stem and first-scale blocks (B, channels[0], ...),
        followed by the image itself under ``image_in_diffusion_encoder`` (B, :attr:`feature_channels`, ...)."""
        self.check_size(image, "image")
        if image.shape[1] != self.in_channels:
            raise DataError("image", f"the network expects {self.in_channels} image channel(s), got {image.shape[1]}",
                            f"pass an image with {self.in_channels} channel(s)")
        features = self.image_blocks[0](self.image_in(image))
        return torch.cat([features, image], 1) if self.image_in_diffusion_encoder else features

    def forward(self, x: Tensor, t: Tensor, features: Tensor, return_calibration: bool = False):
        """eps for ``x`` (B, mask_channels, *spatial) at timesteps ``t`` (B,), conditioned by ``features``
        (:meth:`image_features` of the image, same batch and grid)."""
        self.check_size(x, "x_t")
        want = (x.shape[0], self.feature_channels, *x.shape[2:])
        if tuple(features.shape) != want:
            raise DataError("features", f"condition features {tuple(features.shape)} do not match x_t "
                            f"{tuple(x.shape)}: expected {want}", "pass image_features(image) of the same batch")
        if return_calibration and self.calibration is None:
            raise ArgumentError("return_calibration", "this network has no calibration head",
                                "build it with calibration_head=True")
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        temb = self.time_embed(get_timestep_embedding(t, self.channels[0]).to(x.dtype))
        c = features[:, : self.channels[0]]
        # the official code's input path: [image, x_t] into the diffusion encoder (the paper's: x_t alone)
        h = self.mask_in(torch.cat([features[:, self.channels[0]:], x], 1) if self.image_in_diffusion_encoder else x)
        skips, cond_skips = [], []
        for k in range(self.levels):
            for block in self.mask_blocks[k]:
                h = block(h, temb)
            h = self.mask_attn[k](h)
            if k > 0:
                c = self.image_blocks[k](c)
            c = self.encodings[k](c, self.ff_parsers[k](h))
            if k < self.levels - 1:
                skips.append(h)
                cond_skips.append(c)
                h, c = self.mask_down[k](h), self.image_down[k](c)
        cal = self._calibrate(c, cond_skips) if return_calibration else None
        h = h + c  # the two embeddings summed at the bottleneck
        h = self.mid[0](h, temb)
        h = self.mid_attn(h)
        h = self.mid[1](h, temb)
        for up, blocks, attn, skip in zip(self.up, self.up_blocks, self.up_attn, reversed(skips)):
            h = torch.cat([up(h), skip], 1)
            for block in blocks:
                h = block(h, temb)
            h = attn(h)
        eps = self.out(h)
        return (eps, cal) if return_calibration else eps

    def _calibrate(self, c: Tensor, cond_skips: list[Tensor]) -> Tensor:
        head = self.calibration
        for up, block, skip in zip(head.up, head.blocks, reversed(cond_skips)):
            c = block(torch.cat([up(c), skip], 1))
        logits = head.out(c)
        return torch.sigmoid(logits) if self.mask_channels == 1 else torch.softmax(logits, 1)
