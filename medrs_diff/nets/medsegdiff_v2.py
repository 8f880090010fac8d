"""MedSegDiff-V2 nets (Wu et al., AAAI 2024, arXiv 2301.11798), **paper-faithful**: the official
repository's default path (``--version new``) has neither the SS-Former nor the FF-Parser; these nets
follow the paper's description instead. Details the paper leaves open are marked ≈ below (the
formulas were written from the paper's description without its full text at hand: check them against
the PDF before quoting equation numbers).

Two UNets. The **condition model** (:class:`ConditionUNet`, a MONAI ``BasicUNet`` over the image)
returns its segmentation logits (supervised by the anchor loss), its last decoded feature
``f_c^{-1}`` (full resolution) and its deepest embedding ``c^0``. The **diffusion model**
(:class:`MedSegDiffV2Net`, MONAI's ``DiffusionModelUNet`` over the noisy mask x_t, with its time
embedding) receives both:

- **anchor condition** through *uncertain spatial attention* (:class:`UncertainSpatialAttention`,
  paper Eq. "U-SA") on the diffusion encoder's first feature ``f_d^0`` (full resolution)::

      f_anc  = max(G_sigma * f_c^{-1}, f_c^{-1})                 (element-wise max)
      f_d^0' = sigmoid(k_{C x 1 x 1} * f_anc) . f_d^0 + f_d^0

  ``G_sigma`` is a normalised Gaussian kernel (``kernel_size`` taps per axis, depth-wise) whose standard
  deviation sigma is **learned** (stored as log sigma); ``k_{C x 1 x 1}`` a 1x1 convolution from the
  anchor's C channels to one spatial attention map, broadcast over the channels of ``f_d^0``
  (``usa_gate="spatial"``). ≈ ``usa_gate="channel"``: one map per channel of ``f_d^0`` (the 1x1
  convolution then has that many outputs). One map orders the K classes of a K-class task on a line and
  the class in the middle is hard to read back: on the 3-class phantom (300 steps, seed 0) the
  spatial gate gave mean foreground Dice 0.30, the channel gate 0.86 (0.93 / 0.89 at seeds 1 / 2). ≈ which
  feature is ``f_d^0``: by default (``anchor_at="first_block"``) the output of the first residual block
  of the first level (it carries the time embedding); ``anchor_at="conv_in"`` takes the first
  convolution's output instead. The default learned faster on the phantom task (one seed, EMA Dice after
  300 / 400 steps: 0.72 / 0.88 against 0.58 / 0.80 with ``conv_in``).
- **semantic condition** through the *SS-Former* (:class:`SSFormer`) on the diffusion bottleneck
  (after the UNet's middle block): ``depth`` blocks, each two cross-attentions, first the condition
  embedding attending to the diffusion embedding (noise -> semantics), then the diffusion embedding
  attending to the updated condition embedding (semantics -> noise), each followed by an MLP (pre-norm,
  residual). Each cross-attention computes its affinity **in the Fourier domain** and filters it with
  the *neural band-pass filter* (NBP-Filter, :class:`NeuralBandPassFilter`)::

      A   = Re( F^H [ M_t ⊙ (F Q)(F K)^H ] F ) / sqrt(d)
      out = softmax(A) V

  with Q = LN(x_q) W_q, K = LN(x_kv) W_k, V = LN(x_kv) W_v over the N tokens of the bottleneck grid, F
  the unitary N-point DFT over that grid (``fftn``, ``norm="ortho"``) and ``M_t(u, v) = g_q(|u|, t)
  g_k(|v|, t)`` the NBP-Filter between query frequency u and key frequency v. ≈ choices: the filter is
  **separable** and **radial** (it depends on the normalised frequency radius rho in [0, 1]) so it works at
  any grid size: ``g(rho, t) = sum_b phi_b(rho) (gamma_b + delta_b(t))``, hat functions ``phi_b`` at
  ``bands`` centres evenly spaced in [0, 1] (a partition of unity), learned gains ``gamma_b`` (start 1)
  and a time-embedding shift ``delta(t)`` (a linear layer, start 0), so the filter starts all-pass
  (M = 1) and the attention is then exactly the Fourier-free ``softmax(Q K^T / sqrt d) V`` (unitary DFT).
  For a separable, conjugate-symmetric M the Fourier product equals ``Q_f K_f^T`` with ``Q_f = F^H G_q F
  Q`` (each channel of Q filtered by g_q), which is how it is computed by default; ``literal=True``
  evaluates the Fourier-domain product itself (O(N^2) complex memory; the tests check the two agree).
  Other ≈ choices: no positional embedding (the filters carry the spatial structure); the condition
  embedding ``c^0`` is resampled to the bottleneck grid (area / linear interpolation) and projected by a
  1x1 convolution to the bottleneck width; the SS-Former output replaces the bottleneck (it contains the
  residual path).

2-D and 3-D (``spatial_dims``). Spatial sizes must be multiples of :attr:`MedSegDiffV2Net.size_multiple`
(the condition BasicUNet pools four times: 16; the diffusion UNet ``2 ** (levels - 1)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, DiffusionModelUNet
from torch import Tensor, nn

from ..errors import ArgumentError, DataError
from .conv import conv

__all__ = [
    "ConditionUNet",
    "LearnableGaussian",
    "MedSegDiffV2Net",
    "NeuralBandPassFilter",
    "SSFormer",
    "SSFormerBlock",
    "SpectralCrossAttention",
    "UncertainSpatialAttention",
    "fourier_domain_affinity",
    "radial_frequency",
]

#: the condition BasicUNet halves the grid four times
CONDITION_POOLINGS = 4


def _check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ArgumentError("spatial_dims", f"MedSegDiff-V2 works in 2-D or 3-D, got {spatial_dims!r}", "use 2 or 3")
    return spatial_dims


# -- anchor condition: uncertain spatial attention ---------------------------------------------------------
class LearnableGaussian(nn.Module):
    """Depth-wise smoothing by a normalised Gaussian of **learnable** standard deviation (zero padding).

    The kernel has ``kernel_size`` taps per axis, ``w(x) = exp(-|x|^2 / (2 sigma^2)) / sum`` over the
    window (separable, so the N-D kernel is the outer product of the 1-D one); sigma = exp(log_sigma).
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 5, sigma: float = 1.0) -> None:
        super().__init__()
        self.spatial_dims = _check_dims(spatial_dims)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 3 or kernel_size % 2 == 0:
            raise ArgumentError("usa_kernel_size", f"must be an odd integer >= 3, got {kernel_size!r}",
                                "use e.g. 5 (taps per axis of the Gaussian)")
        if not (isinstance(sigma, int | float) and not isinstance(sigma, bool) and sigma > 0):
            raise ArgumentError("usa_sigma", f"must be a positive number, got {sigma!r}", "use e.g. 1.0 (pixels)")
        self.kernel_size = kernel_size
        self.log_sigma = nn.Parameter(torch.tensor(math.log(float(sigma))))

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    def kernel(self) -> Tensor:
        """The normalised N-D kernel, shape (kernel_size,) * spatial_dims."""
        r = self.kernel_size // 2
        x = torch.arange(-r, r + 1, dtype=self.log_sigma.dtype, device=self.log_sigma.device)
        w = torch.exp(-(x**2) / (2 * self.sigma**2))
        w = w / w.sum()
        k = w
        for _ in range(self.spatial_dims - 1):
            k = k[..., None] * w
        return k

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        k = self.kernel().to(x.dtype)
        weight = k.expand(c, 1, *k.shape)
        fn = F.conv2d if self.spatial_dims == 2 else F.conv3d
        return fn(x, weight, padding=self.kernel_size // 2, groups=c)


class UncertainSpatialAttention(nn.Module):
    """U-SA: ``sigmoid(k_1x1 * max(G_sigma * anchor, anchor)) . feature + feature`` (see the module doc).

    ``forward(feature, anchor)``: feature (B, C_d, *S), anchor (B, ``anchor_channels``, *S) -> (B, C_d, *S).
    ``maps``: 1 (one spatial map over every channel, the paper) or C_d (one map per feature channel).
    """

    def __init__(self, spatial_dims: int, anchor_channels: int, kernel_size: int = 5, sigma: float = 1.0,
                 maps: int = 1) -> None:
        super().__init__()
        self.smooth = LearnableGaussian(spatial_dims, kernel_size, sigma)
        self.proj = conv(spatial_dims, anchor_channels, maps, kernel=1)
        self.anchor_channels, self.maps = anchor_channels, maps

    def relaxed_anchor(self, anchor: Tensor) -> Tensor:
        """f_anc = max(G_sigma * anchor, anchor): the anchor widened where it is uncertain, never weakened."""
        return torch.maximum(self.smooth(anchor), anchor)

    def forward(self, feature: Tensor, anchor: Tensor) -> Tensor:
        if anchor.shape[1] != self.anchor_channels or anchor.shape[2:] != feature.shape[2:]:
            raise DataError("anchor condition", f"anchor feature {tuple(anchor.shape)} does not fit the diffusion "
                            f"feature {tuple(feature.shape)} ({self.anchor_channels} channels on its grid expected)",
                            "pass the condition model's last decoded feature for the same image size")
        if self.maps not in (1, feature.shape[1]):
            raise DataError("anchor condition", f"{self.maps} attention maps for a feature of {feature.shape[1]} "
                            "channels", "build U-SA with maps=1 or maps equal to the feature's channels")
        attention = torch.sigmoid(self.proj(self.relaxed_anchor(anchor)))
        return attention * feature + feature


# -- semantic condition: SS-Former with the NBP-Filter ----------------------------------------------------
def radial_frequency(grid: Sequence[int], device: torch.device | None = None) -> Tensor:
    """Normalised radius rho in [0, 1] of every ``fftn`` bin of ``grid`` (FFT order): |f| / (0.5 sqrt(dims)),
    f in cycles per pixel; 0 at DC, 1 at the all-Nyquist corner. Symmetric under f -> -f."""
    axes = torch.meshgrid(*[torch.fft.fftfreq(n, device=device) for n in grid], indexing="ij")
    r2 = sum(a**2 for a in axes)
    return (r2.sqrt() / (0.5 * math.sqrt(len(grid)))).clamp(0, 1)


class NeuralBandPassFilter(nn.Module):
    """Radial, time-conditioned gain over frequencies: ``g(rho, t) = sum_b phi_b(rho) (gamma_b + delta_b(t))``.

    ``phi_b`` are hat functions at ``bands`` centres linspace(0, 1) (a partition of unity; one band = a
    constant gain); ``gamma`` starts at 1 and ``delta = Linear(t_emb)`` at 0, so the filter starts
    all-pass. ``forward(grid, t_emb=None)`` -> gains (B or 1, *grid) in FFT order.
    """

    def __init__(self, bands: int = 4, time_dim: int | None = None) -> None:
        super().__init__()
        if isinstance(bands, bool) or not isinstance(bands, int) or bands < 1:
            raise ArgumentError("nbp_bands", f"must be an integer >= 1, got {bands!r}",
                                "use e.g. 4 radial frequency bands")
        self.bands = bands
        self.gain = nn.Parameter(torch.ones(bands))
        self.time = nn.Linear(time_dim, bands) if time_dim else None
        if self.time is not None:
            nn.init.zeros_(self.time.weight)
            nn.init.zeros_(self.time.bias)

    def basis(self, grid: Sequence[int], device: torch.device | None = None) -> Tensor:
        """phi_b(rho) of every bin: (bands, *grid)."""
        rho = radial_frequency(grid, device)
        if self.bands == 1:
            return torch.ones(1, *rho.shape, device=device)
        centres = torch.linspace(0, 1, self.bands, device=device)
        dist = (rho[None] - centres.view(-1, *([1] * rho.ndim))).abs()
        return (1 - dist * (self.bands - 1)).clamp_min(0)

    def forward(self, grid: Sequence[int], t_emb: Tensor | None = None) -> Tensor:
        gains = self.gain[None]  # (1, bands)
        if self.time is not None and t_emb is not None:
            gains = gains + self.time(t_emb.float())  # (B, bands)
        phi = self.basis(grid, self.gain.device)  # (bands, *grid)
        return torch.einsum("nb,b...->n...", gains, phi)


def _grid_to_tokens(x: Tensor) -> Tensor:
    return x.flatten(2).transpose(1, 2)


def _tokens_to_grid(x: Tensor, grid: Sequence[int]) -> Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


def spectral_filter(tokens: Tensor, gains: Tensor, grid: Sequence[int]) -> Tensor:
    """``F^H G F x`` for every channel of tokens (B, N, C) on ``grid``, with real gains (B or 1, *grid)."""
    dims = tuple(range(2, 2 + len(grid)))
    x = _tokens_to_grid(tokens.float(), grid)
    y = torch.fft.ifftn(torch.fft.fftn(x, dim=dims, norm="ortho") * gains[:, None], dim=dims, norm="ortho")
    return _grid_to_tokens(y.real).to(tokens.dtype)


def fourier_domain_affinity(q: Tensor, k: Tensor, g_q: Tensor, g_k: Tensor, grid: Sequence[int]) -> Tensor:
    """The SS-Former affinity computed literally: ``Re(F^H [M ⊙ (F Q)(F K)^H] F)``, M(u, v) = g_q(u) g_k(v).

    q, k: (B, H, N, d) tokens of ``grid`` (N = prod(grid)); g_q, g_k: (B or 1, *grid) -> (B, H, N, N),
    before the 1/sqrt(d) scale.
    """
    n, nd = q.shape[2], len(grid)

    def fourier(x: Tensor) -> Tensor:  # (B, H, N, d) -> F x along the token axis
        g = x.float().transpose(2, 3).reshape(*x.shape[:2], x.shape[3], *grid)
        dims = tuple(range(3, 3 + nd))
        return torch.fft.fftn(g, dim=dims, norm="ortho").reshape(*x.shape[:2], x.shape[3], n).transpose(2, 3)

    a_hat = fourier(q) @ fourier(k).conj().transpose(2, 3)  # (B, H, N_u, N_v)
    m = g_q.reshape(g_q.shape[0], 1, n, 1) * g_k.reshape(g_k.shape[0], 1, 1, n)
    a_hat = a_hat * m
    b, h = a_hat.shape[:2]
    # F^H (.) : inverse DFT along the query axis; (.) F : DFT along the key axis (F is symmetric).
    a = torch.fft.ifftn(a_hat.reshape(b, h, *grid, n), dim=tuple(range(2, 2 + nd)), norm="ortho").reshape(b, h, n, n)
    a = torch.fft.fftn(a.reshape(b, h, n, *grid), dim=tuple(range(3, 3 + nd)), norm="ortho").reshape(b, h, n, n)
    return a.real


class SpectralCrossAttention(nn.Module):
    """Multi-head cross-attention whose affinity lives in the Fourier domain, filtered by two NBP-Filters.

    ``forward(x_q, x_kv, grid, t_emb=None)``: token sets (B, N, C) of one grid (N = prod(grid)) ->
    (B, N, C) (the output projection of ``softmax(A) V``; see the module doc for A).
    """

    def __init__(self, channels: int, heads: int = 4, time_dim: int | None = None, bands: int = 4,
                 literal: bool = False) -> None:
        super().__init__()
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or channels % heads:
            raise ArgumentError("ssformer_heads", f"{heads!r} heads do not divide the {channels} bottleneck channels",
                                "choose a head count that divides the last UNet width")
        self.heads, self.literal = heads, literal
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        self.nbp_q = NeuralBandPassFilter(bands, time_dim)
        self.nbp_k = NeuralBandPassFilter(bands, time_dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x_q: Tensor, x_kv: Tensor, grid: Sequence[int], t_emb: Tensor | None = None) -> Tensor:
        if x_q.shape != x_kv.shape:
            raise DataError("SS-Former", f"query tokens {tuple(x_q.shape)} and key tokens {tuple(x_kv.shape)} differ",
                            "give both embeddings on the same bottleneck grid with the same width")
        g_q, g_k = self.nbp_q(grid, t_emb), self.nbp_k(grid, t_emb)
        q, k, v = self.to_q(x_q), self.to_k(x_kv), self.to_v(x_kv)
        d = q.shape[-1] // self.heads
        if self.literal:
            a = fourier_domain_affinity(self._heads(q), self._heads(k), g_q, g_k, grid) / math.sqrt(d)
            out = torch.softmax(a, dim=-1).to(v.dtype) @ self._heads(v)
        else:  # the same product, via the filtered Q and K (exact for the separable radial M)
            qf, kf = spectral_filter(q, g_q, grid), spectral_filter(k, g_k, grid)
            out = F.scaled_dot_product_attention(self._heads(qf), self._heads(kf), self._heads(v))
        b, n = x_q.shape[:2]
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _MLP(nn.Sequential):
    def __init__(self, channels: int, ratio: int = 2) -> None:
        super().__init__(nn.LayerNorm(channels), nn.Linear(channels, ratio * channels), nn.GELU(),
                         nn.Linear(ratio * channels, channels))


class SSFormerBlock(nn.Module):
    """One SS-Former block: c += attn(LN c, LN e); c += MLP(c); e += attn(LN e, LN c); e += MLP(e)."""

    def __init__(self, channels: int, heads: int = 4, time_dim: int | None = None, bands: int = 4,
                 literal: bool = False) -> None:
        super().__init__()
        self.norm_c, self.norm_e = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.noise_to_semantic = SpectralCrossAttention(channels, heads, time_dim, bands, literal)
        self.mlp_c = _MLP(channels)
        self.norm_c2, self.norm_e2 = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.semantic_to_noise = SpectralCrossAttention(channels, heads, time_dim, bands, literal)
        self.mlp_e = _MLP(channels)

    def forward(self, e: Tensor, c: Tensor, grid: Sequence[int], t_emb: Tensor | None = None) -> tuple[Tensor, Tensor]:
        c = c + self.noise_to_semantic(self.norm_c(c), self.norm_e(e), grid, t_emb)
        c = c + self.mlp_c(c)
        e = e + self.semantic_to_noise(self.norm_e2(e), self.norm_c2(c), grid, t_emb)
        e = e + self.mlp_e(e)
        return e, c


class SSFormer(nn.Module):
    """Spectrum-space transformer fusing the diffusion bottleneck e (B, C, *S) with the condition
    embedding c (B, C_c, *S'), resampled to S and projected to C; returns the fused e (B, C, *S)."""

    def __init__(self, spatial_dims: int, channels: int, cond_channels: int, depth: int = 1, heads: int = 4,
                 time_dim: int | None = None, bands: int = 4, literal: bool = False) -> None:
        super().__init__()
        self.spatial_dims = _check_dims(spatial_dims)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ArgumentError("ssformer_depth", f"must be an integer >= 1, got {depth!r}", "use e.g. 1 or 2 blocks")
        self.cond_proj = conv(spatial_dims, cond_channels, channels, kernel=1)
        self.blocks = nn.ModuleList(SSFormerBlock(channels, heads, time_dim, bands, literal) for _ in range(depth))
        self.cond_channels = cond_channels

    def resample(self, c: Tensor, grid: Sequence[int]) -> Tensor:
        if tuple(c.shape[2:]) == tuple(grid):
            return c
        if all(s >= g for s, g in zip(c.shape[2:], grid, strict=True)):
            return F.interpolate(c, size=tuple(grid), mode="area")
        return F.interpolate(c, size=tuple(grid), mode="bilinear" if self.spatial_dims == 2 else "trilinear",
                             align_corners=False)

    def forward(self, e: Tensor, c: Tensor, t_emb: Tensor | None = None) -> Tensor:
        if c.ndim != e.ndim or c.shape[0] != e.shape[0] or c.shape[1] != self.cond_channels:
            raise DataError("semantic condition", f"condition embedding {tuple(c.shape)} does not fit the bottleneck "
                            f"{tuple(e.shape)} ({self.cond_channels} channels expected)",
                            "pass the condition model's deepest embedding for the same batch")
        grid = tuple(e.shape[2:])
        ct = _grid_to_tokens(self.cond_proj(self.resample(c, grid)))
        et = _grid_to_tokens(e)
        for block in self.blocks:
            et, ct = block(et, ct, grid, t_emb)
        return _tokens_to_grid(et, grid)


# -- the two UNets -----------------------------------------------------------------------------------------
#: where the anchor condition enters the diffusion encoder (both at full resolution): after the first
#: residual block of the first level (the default) or right after the first conv
ANCHOR_POINTS = ("first_block", "conv_in")
#: U-SA attention maps: one spatial map over every channel (the paper) or one per feature channel
USA_GATES = ("spatial", "channel")
#: normalisations of the condition BasicUNet
CONDITION_NORMS = ("instance", "group", "batch")


class ConditionUNet(nn.Module):
    """The condition model: a MONAI ``BasicUNet`` over the image; ``forward(image)`` -> (logits, last decoded
    feature f_c^{-1} (B, features[5], *S), deepest embedding c^0 (B, features[4], *S / 16)).

    ``norm``: ``instance`` (MONAI's default; in training it needs more than one voxel at the 1/16
    bottleneck, i.e. sizes >= 32 per axis), ``group`` (the largest group count <= 8 dividing every width;
    any size) or ``batch``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 features: Sequence[int] = (32, 32, 64, 128, 256, 32), norm: str = "instance") -> None:
        super().__init__()
        _check_dims(spatial_dims)
        if len(features) != 6 or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in features):
            raise ArgumentError("cond_features", f"needs six positive widths (BasicUNet), got {list(features)}",
                                "pass e.g. (32, 32, 64, 128, 256, 32)")
        if norm not in CONDITION_NORMS:
            raise ArgumentError("cond_norm", f"unknown normalisation {norm!r}",
                                f"choose one of {', '.join(CONDITION_NORMS)}")
        if norm == "group":
            groups = max(g for g in range(1, 9) if all(f % g == 0 for f in features))
            spec: tuple | str = ("group", {"num_groups": groups})
        else:
            spec = (norm, {"affine": True}) if norm == "instance" else norm
        self.norm = norm
        self.net = BasicUNet(spatial_dims, in_channels, out_channels, tuple(features), norm=spec)
        self.anchor_channels, self.embed_channels = int(features[5]), int(features[4])

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = self.net
        x0 = n.conv_0(image)
        x1 = n.down_1(x0)
        x2 = n.down_2(x1)
        x3 = n.down_3(x2)
        x4 = n.down_4(x3)
        u1 = n.upcat_1(n.upcat_2(n.upcat_3(n.upcat_4(x4, x3), x2), x1), x0)
        return n.final_conv(u1), u1, x4


class _Condition:
    """The condition tensors of the current forward pass (a plain holder: no parameters, no module)."""

    def __init__(self) -> None:
        self.anchor: Tensor | None = None
        self.semantic: Tensor | None = None


class _AnchorAfter(nn.Module):
    """``inner`` (the UNet's first conv or first residual block), then U-SA with the anchor of the current pass."""

    def __init__(self, inner: nn.Module, usa: UncertainSpatialAttention, state: _Condition) -> None:
        super().__init__()
        self.inner, self.usa = inner, usa
        self._state = state

    def forward(self, *args: Tensor) -> Tensor:
        out = self.inner(*args)
        if self._state.anchor is None:
            raise DataError("MedSegDiffV2Net", "no anchor condition for this forward pass",
                            "call the net as net(x_t, t, anchor=..., semantic=...)")
        return self.usa(out, self._state.anchor)


class _SSFormerAfter(nn.Module):
    """``inner`` (the UNet's middle block), then the SS-Former with the semantic condition of the current pass."""

    def __init__(self, inner: nn.Module, ssformer: SSFormer, state: _Condition) -> None:
        super().__init__()
        self.inner, self.ssformer = inner, ssformer
        self._state = state

    def forward(self, hidden_states: Tensor, temb: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.inner(hidden_states=hidden_states, temb=temb, context=context)
        if self._state.semantic is None:
            raise DataError("MedSegDiffV2Net", "no semantic condition for this forward pass",
                            "call the net as net(x_t, t, anchor=..., semantic=...)")
        return self.ssformer(h, self._state.semantic, temb)


class MedSegDiffV2Net(nn.Module):
    """The diffusion model: ``forward(x_t, t, anchor, semantic)`` -> the prediction (B, out_channels, *S).

    MONAI ``DiffusionModelUNet`` over x_t (SDPA attention), with U-SA after ``conv_in`` (anchor:
    (B, ``anchor_channels``, *S)) and the SS-Former after the middle block (semantic: (B,
    ``semantic_channels``, ...), any grid; its NBP-Filters take the UNet's time embedding).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        anchor_channels: int,
        semantic_channels: int,
        channels: Sequence[int] = (64, 128, 256, 256),
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_res_blocks: int = 2,
        num_head_channels: int = 32,
        norm_num_groups: int = 32,
        usa_kernel_size: int = 5,
        usa_sigma: float = 1.0,
        ssformer_depth: int = 1,
        ssformer_heads: int = 4,
        nbp_bands: int = 4,
        literal_fourier: bool = False,
        anchor_at: str = "first_block",
        usa_gate: str = "spatial",
    ) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        if anchor_at not in ANCHOR_POINTS:
            raise ArgumentError("anchor_at", f"unknown injection point {anchor_at!r}",
                                f"choose one of {', '.join(ANCHOR_POINTS)}")
        if usa_gate not in USA_GATES:
            raise ArgumentError("usa_gate", f"unknown U-SA gate {usa_gate!r}", f"choose one of {', '.join(USA_GATES)}")
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
            attention_levels=tuple(attention_levels), num_res_blocks=num_res_blocks,
            num_head_channels=num_head_channels, norm_num_groups=norm_num_groups, use_flash_attention=True,
        )
        time_dim = int(self.unet.time_embed[-1].out_features)
        self._state = _Condition()
        usa = UncertainSpatialAttention(spatial_dims, anchor_channels, usa_kernel_size, usa_sigma,
                                        maps=1 if usa_gate == "spatial" else int(channels[0]))
        ssformer = SSFormer(spatial_dims, channels[-1], semantic_channels, ssformer_depth, ssformer_heads,
                            time_dim, nbp_bands, literal_fourier)
        if anchor_at == "conv_in":
            self.unet.conv_in = _AnchorAfter(self.unet.conv_in, usa, self._state)
        else:
            first = self.unet.down_blocks[0].resnets
            first[0] = _AnchorAfter(first[0], usa, self._state)
        self.anchor_at = anchor_at
        self.unet.middle_block = _SSFormerAfter(self.unet.middle_block, ssformer, self._state)
        #: diffusion UNet levels halve the grid (levels - 1) times; the condition UNet 4 times
        self.size_multiple = max(2 ** (len(channels) - 1), 2**CONDITION_POOLINGS)

    @property
    def usa(self) -> UncertainSpatialAttention:
        """The anchor condition's U-SA (it lives inside the wrapped ``conv_in``)."""
        host = self.unet.conv_in if self.anchor_at == "conv_in" else self.unet.down_blocks[0].resnets[0]
        return host.usa

    @property
    def ssformer(self) -> SSFormer:
        """The SS-Former (it lives inside the wrapped middle block)."""
        return self.unet.middle_block.ssformer

    def forward(self, x: Tensor, t: Tensor, anchor: Tensor | None = None, semantic: Tensor | None = None) -> Tensor:
        self._state.anchor, self._state.semantic = anchor, semantic
        try:
            return self.unet(x, t)
        finally:
            self._state.anchor = self._state.semantic = None
