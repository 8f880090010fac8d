"""A small cross-attention transformer that classifies the centre pixel of a feature patch (SpectralDiff's
classifier, after Chen et al. TGRS 2023: patch tokens of PCA-reduced diffusion features, dim 64, depth 2).

Each block runs self-attention over the patch tokens, then the centre-pixel query **cross-attends** to
them; the query goes through a linear head to class logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PatchCrossAttentionClassifier"]


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.tokens = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.nq, self.nkv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, q: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.tokens(tokens)
        kv = self.nkv(tokens)
        q = q + self.cross(self.nq(q), kv, kv, need_weights=False)[0]
        return q + self.mlp(q), tokens


class PatchCrossAttentionClassifier(nn.Module):
    """(N, in_dim, p, p) feature patches -> (N, num_classes) logits of their centre pixels."""

    def __init__(self, in_dim: int, num_classes: int, patch_size: int, dim: int = 64, depth: int = 2,
                 heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} does not split into {heads} heads")
        self.patch_size = patch_size
        self.embed = nn.Linear(in_dim, dim)
        self.pos = nn.Parameter(torch.zeros(1, patch_size * patch_size, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, patches: Tensor) -> Tensor:
        n, c, p, p2 = patches.shape
        if p != self.patch_size or p2 != self.patch_size:
            raise ValueError(f"expected {self.patch_size} x {self.patch_size} patches, got {p} x {p2}")
        tokens = self.embed(patches.flatten(2).transpose(1, 2)) + self.pos
        centre = tokens[:, (p * p) // 2 : (p * p) // 2 + 1]
        q = self.query + centre
        for block in self.blocks:
            q, tokens = block(q, tokens)
        return self.head(q[:, 0])
