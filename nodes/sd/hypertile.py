"""HyperTile (tfernd's HyperTile, as ComfyUI's node): self-attention on tiles of the latent's token grid.

At the UNet depths chosen (`max_depth` levels below the top, by channel count), each attn1 call splits its
queries into nh x nw tiles (random divisors of the token grid near `tile_size / 8` tokens, re-drawn every call
from a counter-seeded generator, as ComfyUI does) and puts the tiles in the batch; attention then runs per tile,
which costs (tokens / tiles)^2 instead of tokens^2. As in ComfyUI only the queries are regrouped: with attention
split into heads by the queries' batch (attention_patches.attention), each tile attends to the same number of
keys taken in memory order. The output is put back in place after the output projection. The counter starts
at 1 in every sampling run (ComfyUI's keeps counting across runs of the node), so a seed gives one image.
"""

from __future__ import annotations

import math
import random
from functools import cache

from torch import Tensor

from nodes.sd.attention_patches import AttentionInfo, Attn1Patch, attn1_patch
from nodes.sd.types import ModelPatch


def random_divisor(value: int, min_value: int, max_options: int, counter: int) -> int:
    """value // d for a divisor d >= min(min_value, value) among the `max_options` smallest, picked by a
    generator seeded with `counter` (Python's Mersenne Twister, as ComfyUI's random.seed + randint)."""
    low = min(min_value, value)
    divisors = [d for d in range(low, value + 1) if value % d == 0]
    choices = [value // d for d in divisors[:max_options]]
    return choices[random.Random(counter).randint(0, len(choices) - 1)]


@cache
def grid_shape(tokens: int, aspect_ratio: float) -> tuple[int, int]:
    """ComfyUI's find_hw_candidates: h = round(sqrt(tokens * aspect_ratio)), w = tokens / h (or the divisor pair
    whose w / h is closest to aspect_ratio). With aspect_ratio = W / H this makes h the larger side of a wide
    latent: ComfyUI tiles non-square token grids as if transposed, and so do we, to give its images."""
    h, w = round(math.sqrt(tokens * aspect_ratio)), round(math.sqrt(tokens / aspect_ratio))
    if h * w == tokens:
        return h, w
    if (tokens / h).is_integer():
        return h, int(tokens / h)
    if (tokens / w).is_integer():
        return int(tokens / w), w
    pairs = [(d, tokens // d) for d in range(2, tokens + 1) if tokens % d == 0]
    ratios = [pw / ph for ph, pw in pairs]
    best = min(ratios, key=lambda ratio: abs(ratio - aspect_ratio))
    return pairs[ratios.index(best)]


def to_tiles(x: Tensor, nh: int, nw: int, h: int, w: int) -> Tensor:
    """[B, (nh h' nw w'), C] row-major tokens -> [(B nh nw), (h' w'), C] with h' = h / nh, w' = w / nw."""
    b, _, c = x.shape
    th, tw = h // nh, w // nw
    return x.reshape(b, nh, th, nw, tw, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, th * tw, c)


def from_tiles(x: Tensor, nh: int, nw: int, h: int, w: int) -> Tensor:
    """Inverse of `to_tiles`."""
    _, _, c = x.shape
    th, tw = h // nh, w // nw
    b = x.shape[0] // (nh * nw)
    return x.reshape(b, nh, nw, th, tw, c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * th * nw * tw, c)


class HyperTile(Attn1Patch):
    """One run's HyperTile state: the tile counter and the tiling of the attn1 call in progress."""

    def __init__(self, tile_size: int, swap_size: int, max_depth: int, scale_depth: bool) -> None:
        self.latent_tile = max(32, tile_size) // 8
        self.swap_size, self.max_depth, self.scale_depth = swap_size, max_depth, scale_depth
        self.counter = 1
        self.tiling: tuple[int, int, int, int] | None = None

    def before(self, q: Tensor, k: Tensor, v: Tensor, info: AttentionInfo) -> tuple[Tensor, Tensor, Tensor]:
        channels = int(q.shape[-1])
        if channels not in {info.model_channels * 2**depth for depth in range(self.max_depth + 1)}:
            return q, k, v
        shape = info.original_shape
        h, w = grid_shape(int(q.shape[1]), shape[-1] / shape[-2])
        factor = 2 ** ((channels // info.model_channels) - 1) if self.scale_depth else 1
        nh = random_divisor(h, self.latent_tile * factor, self.swap_size, self.counter)
        nw = random_divisor(w, self.latent_tile * factor, self.swap_size, self.counter + 1)
        self.counter += 2
        if nh * nw > 1:
            self.tiling = (nh, nw, h, w)
            q = to_tiles(q, nh, nw, h, w)
        return q, k, v

    def after(self, out: Tensor, info: AttentionInfo) -> Tensor:
        if self.tiling is None:
            return out
        tiling, self.tiling = self.tiling, None
        return from_tiles(out, *tiling)


def hypertile_patch(tile_size: int, swap_size: int, max_depth: int, scale_depth: bool) -> ModelPatch:
    return attn1_patch("hypertile", lambda: HyperTile(tile_size, swap_size, max_depth, scale_depth),
                       {"tile_size": tile_size, "swap_size": swap_size, "max_depth": max_depth,
                        "scale_depth": scale_depth})
