"""Token merging for Stable Diffusion, ToMe (Bolya & Hoffman 2023, "Token Merging for Fast Stable Diffusion",
arXiv 2303.17603), as ComfyUI's TomePatchModel applies it: in the self-attention of the highest-resolution
level only, a fraction `ratio` of the query tokens is merged into similar ones before attention and copied back
after it (keys and values keep every token).

Bipartite soft matching with a random 2-D partition: the token grid is cut into 2x2 cells; one token per cell (at
random) is a destination, the rest are sources. Each source finds its most cosine-similar destination; the r
sources with the highest similarity are averaged into their destinations, the others stay. Unmerging gives each
merged source its destination's value. The partition comes from a generator seeded per run (ComfyUI draws it
from torch's global generator), so a seed gives the same image every time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from nodes.sd.attention_patches import AttentionInfo, Attn1Patch, attn1_patch
from nodes.sd.types import ModelPatch

Merge = Callable[[Tensor], Tensor]


def _identity(x: Tensor) -> Tensor:
    return x


def bipartite_soft_matching_2d(metric: Tensor, w: int, h: int, sx: int, sy: int, r: int,
                               generator: torch.Generator | None = None) -> tuple[Merge, Merge]:
    """(merge, unmerge) for tokens [B, N, C] on an h x w grid, removing r tokens.

    Args:
        metric: [B, N, C] features whose cosine similarity decides the matching.
        w, h: the token grid's width and height (N == h * w).
        sx, sy: cell size; one destination per cell.
        r: tokens to remove (capped at the number of sources).
        generator: draws each cell's destination; None takes the top-left token of every cell.
    """
    batch, tokens, _ = metric.shape
    if r <= 0 or w == 1 or h == 1:
        return _identity, _identity
    device = metric.device
    with torch.no_grad():
        cells_h, cells_w = h // sy, w // sx
        if generator is None:
            chosen = torch.zeros(cells_h, cells_w, 1, dtype=torch.int64)
        else:
            chosen = torch.randint(sy * sx, size=(cells_h, cells_w, 1), generator=generator)
        cell_buffer = torch.zeros(cells_h, cells_w, sy * sx, dtype=torch.int64)
        cell_buffer.scatter_(dim=2, index=chosen, src=-torch.ones_like(chosen))
        cell_buffer = cell_buffer.view(cells_h, cells_w, sy, sx).transpose(1, 2).reshape(cells_h * sy, cells_w * sx)
        grid = torch.zeros(h, w, dtype=torch.int64)  # tokens outside whole cells are sources
        grid[: cells_h * sy, : cells_w * sx] = cell_buffer
        order = grid.reshape(1, -1, 1).argsort(dim=1, stable=True).to(device)  # destinations (-1) first
        num_dst = cells_h * cells_w
        src_idx_all, dst_idx_all = order[:, num_dst:, :], order[:, :num_dst, :]

        def split(x: Tensor) -> tuple[Tensor, Tensor]:
            c = x.shape[-1]
            src = torch.gather(x, 1, src_idx_all.expand(x.shape[0], tokens - num_dst, c))
            dst = torch.gather(x, 1, dst_idx_all.expand(x.shape[0], num_dst, c))
            return src, dst

        unit = metric / metric.norm(dim=-1, keepdim=True)
        a, b = split(unit)
        scores = a @ b.transpose(-1, -2)
        r = min(a.shape[1], r)
        best, best_dst = scores.max(dim=-1)
        ranked = best.argsort(dim=-1, descending=True)[..., None]
        kept, merged = ranked[..., r:, :], ranked[..., :r, :]
        merged_dst = torch.gather(best_dst[..., None], dim=-2, index=merged)

    def merge(x: Tensor) -> Tensor:
        src, dst = split(x)
        n, sources, c = src.shape
        unmerged = torch.gather(src, -2, kept.expand(n, sources - r, c))
        moving = torch.gather(src, -2, merged.expand(n, r, c))
        dst = dst.scatter_reduce(-2, merged_dst.expand(n, r, c), moving, reduce="mean")
        return torch.cat([unmerged, dst], dim=1)

    def unmerge(x: Tensor) -> Tensor:
        count = kept.shape[1]
        unmerged, dst = x[..., :count, :], x[..., count:, :]
        c = unmerged.shape[-1]
        restored = torch.gather(dst, -2, merged_dst.expand(batch, r, c))
        out = torch.zeros(batch, tokens, c, device=x.device, dtype=x.dtype)
        src_positions = src_idx_all.expand(batch, src_idx_all.shape[1], 1)
        out.scatter_(-2, dst_idx_all.expand(batch, num_dst, c), dst)
        out.scatter_(-2, torch.gather(src_positions, 1, kept).expand(batch, count, c), unmerged)
        out.scatter_(-2, torch.gather(src_positions, 1, merged).expand(batch, r, c), restored)
        return out

    return merge, unmerge


def tome_functions(x: Tensor, ratio: float, original_shape: tuple[int, ...],
                   generator: torch.Generator | None) -> tuple[Merge, Merge]:
    """ComfyUI's choice: merge only at the top level (downsampling 1, 2x2 cells), r = int(tokens * ratio)."""
    original_h, original_w = original_shape[-2], original_shape[-1]
    downsample = int(math.ceil(math.sqrt((original_h * original_w) // x.shape[1])))
    if downsample > 1:
        return _identity, _identity
    w, h = int(math.ceil(original_w / downsample)), int(math.ceil(original_h / downsample))
    return bipartite_soft_matching_2d(x, w, h, 2, 2, int(x.shape[1] * ratio), generator)


class TokenMerging(Attn1Patch):
    """One run's ToMe: merges the queries of each top-level attn1 call and unmerges its output."""

    def __init__(self, ratio: float, seed: int = 0) -> None:
        self.ratio = ratio
        self.generator = torch.Generator().manual_seed(seed)
        self.unmerge: Merge = _identity

    def before(self, q: Tensor, k: Tensor, v: Tensor, info: AttentionInfo) -> tuple[Tensor, Tensor, Tensor]:
        merge, self.unmerge = tome_functions(q, self.ratio, info.original_shape, self.generator)
        return merge(q), k, v

    def after(self, out: Tensor, info: AttentionInfo) -> Tensor:
        unmerge, self.unmerge = self.unmerge, _identity
        return unmerge(out)


def tome_patch(ratio: float) -> ModelPatch:
    return attn1_patch("tome", lambda: TokenMerging(ratio), {"ratio": ratio})
