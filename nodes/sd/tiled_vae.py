"""Tiled VAE decode and encode: bounded memory for large images, with seams blended away.

The image (or latent) is cut into overlapping tiles that cover it exactly (the last tile of a row or column is
moved back to end at the edge, so every tile has full size); each tile goes through the VAE on its own and the
results are averaged with weights that ramp linearly across the overlaps (a partition of unity after
normalisation), so no tile edge shows as a hard seam. As ComfyUI does, three tilings (square, tall and wide
tiles) are averaged, so no tile border falls at the same place in all of them.

A tile cannot see past its borders, while the VAE's mid-block attention and group norms see the whole image,
so tiled results differ a little from untiled ones; tests/test_latent_tiled_vae.py states the tolerance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from nodes.sd.types import VaeHandle

LATENT_SCALE = 8


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering 0..size with at least `overlap` shared between neighbours."""
    if size <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, size - tile, stride))
    return [*starts, size - tile]


def _ramp_weight(height: int, width: int, ramp: int, *, top: bool, bottom: bool, left: bool, right: bool) -> Tensor:
    """[1, 1, height, width] ones falling linearly toward the named edges over `ramp` pixels (never to 0)."""
    weight = torch.ones(1, 1, height, width)
    for t in range(min(ramp, height // 2, width // 2)):
        value = (t + 1) / (ramp + 1)
        if top:
            weight[..., t, :] *= value
        if bottom:
            weight[..., height - 1 - t, :] *= value
        if left:
            weight[..., :, t] *= value
        if right:
            weight[..., :, width - 1 - t] *= value
    return weight


def tiled_map(fn: Callable[[Tensor], Tensor], x: Tensor, tile: int | tuple[int, int], overlap: int,
              scale: float) -> Tensor:
    """Apply `fn` to overlapping tiles of x [B, C, H, W] and blend the outputs into one [B, C', H*scale, W*scale].

    Args:
        fn: maps a [B, C, h, w] tile to [B, C', h*scale, w*scale].
        x: the input (latents to decode, or pixels channels-first to encode).
        tile: tile side, or (height, width), in x's pixels.
        overlap: pixels neighbouring tiles share (in x's pixels).
        scale: output pixels per input pixel (8 to decode, 1/8 to encode).
    """
    height, width = x.shape[-2:]
    tile_h, tile_w = (tile, tile) if isinstance(tile, int) else tile
    total: Tensor | None = None
    weights: Tensor | None = None
    ramp = round(overlap * scale)
    for top in tile_starts(height, tile_h, overlap):
        for left in tile_starts(width, tile_w, overlap):
            piece = x[..., top : top + tile_h, left : left + tile_w]
            out = fn(piece)
            if total is None:
                total = torch.zeros(*out.shape[:2], round(height * scale), round(width * scale), dtype=out.dtype)
                weights = torch.zeros(1, 1, *total.shape[-2:], dtype=out.dtype)
            assert weights is not None
            o_top, o_left = round(top * scale), round(left * scale)
            o_h, o_w = out.shape[-2:]
            weight = _ramp_weight(o_h, o_w, ramp, top=top > 0, bottom=top + piece.shape[-2] < height,
                                  left=left > 0, right=left + piece.shape[-1] < width).to(out)
            total[..., o_top : o_top + o_h, o_left : o_left + o_w] += out.to(total) * weight
            weights[..., o_top : o_top + o_h, o_left : o_left + o_w] += weight
    assert total is not None and weights is not None
    return total / weights


def _three_shapes(tile: int, multiple: int) -> list[tuple[int, int]]:
    """ComfyUI's tiled VAE averages three tilings: square tiles, tall ones and wide ones (each half one side
    and twice the other), so no tile border falls at the same place in all three and seams average out."""
    half = max(multiple, tile // 2 // multiple * multiple)
    return [(tile, tile), (2 * tile, half), (half, 2 * tile)]


def tiled_overlap(tile_size: int, overlap: int) -> int:
    """ComfyUI's rule: an overlap above a quarter of the tile becomes a quarter of the tile."""
    return tile_size // 4 if tile_size < overlap * 4 else overlap


def decode_tiled(vae: VaeHandle, latents: Tensor, tile_size: int, overlap: int) -> Tensor:
    """Latents [B, 4, h, w] -> IMAGE [B, 8h, 8w, 3], decoding tile_size-pixel tiles that share `overlap` pixels."""
    from nodes.sd.vae import decode

    overlap = tiled_overlap(tile_size, overlap)
    tile, shared = max(1, tile_size // LATENT_SCALE), overlap // LATENT_SCALE

    def run(piece: Tensor) -> Tensor:
        return decode(vae, piece).movedim(-1, 1)

    if max(latents.shape[-2:]) <= tile:  # one tile holds it all: the untiled result exactly
        return decode(vae, latents)

    out = sum(tiled_map(run, latents, shape, shared, LATENT_SCALE) for shape in _three_shapes(tile, 1))
    return (out / 3.0).movedim(1, -1).clamp(0.0, 1.0)


def encode_tiled(vae: VaeHandle, pixels: Tensor, tile_size: int, overlap: int) -> Tensor:
    """IMAGE [B, H, W, 3] (sides multiples of 8) -> latents [B, 4, H/8, W/8] from overlapping pixel tiles.

    Tile sides and overlaps are whole latent pixels (multiples of 8 image pixels), so tiles line up on the
    latent grid.
    """
    from nodes.sd.vae import encode

    overlap = tiled_overlap(tile_size, overlap)
    tile = max(LATENT_SCALE, tile_size // LATENT_SCALE * LATENT_SCALE)
    shared = overlap // LATENT_SCALE * LATENT_SCALE

    def run(piece: Tensor) -> Tensor:
        return encode(vae, piece.movedim(1, -1))

    if max(pixels.shape[1:3]) <= tile:
        return encode(vae, pixels)

    channels_first = pixels.movedim(-1, 1)
    out = sum(tiled_map(run, channels_first, shape, shared, 1 / LATENT_SCALE)
              for shape in _three_shapes(tile, LATENT_SCALE))
    return out / 3.0
