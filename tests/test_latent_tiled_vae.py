"""Tiled VAE decode/encode: the blending is exact for a local operation, and on the embedded model's VAE the
tiled result stays within a stated tolerance of the untiled one, with no seam at tile borders.

Stated tolerance (embedded VAE, a 256 x 256 picture, tile_size 128, overlap 32 as ComfyUI clamps it): decoding
differs from the untiled image by at most 0.08 per channel on average (measured 0.061, in 0..1 units) and 0.3 at
the 99th percentile (measured 0.23); encoding by at most 0.15 on average (measured 0.092; latent values average
0.68 in size). A tile
does not see the whole picture, while the VAE's group norms and mid-block attention do: that, not the seams, is
the difference. Where one tile holds the whole picture the result is the untiled one exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nodes.sd.tiled_vae import tile_starts, tiled_map
from nodes.vae_nodes import VAEDecodeTiled, VAEEncodeTiled
from nodes.sd.types import Latent


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiles_cover_the_side_with_the_overlap():
    assert tile_starts(16, 8, 2) == [0, 6, 8] and tile_starts(8, 8, 2) == [0] and tile_starts(5, 8, 2) == [0]
    for size, tile, overlap in ((37, 8, 3), (64, 16, 4), (20, 6, 0)):
        starts = tile_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == size
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("tile, overlap", [(4, 1), ((3, 5), 2), (6, 0), (16, 4)])
def test_blending_is_exact_for_a_local_operation(tile, overlap):
    """A per-pixel operation upscaled 8x gives the same result tiled or not: the weights sum to one everywhere."""
    x = torch.randn(2, 3, 11, 13, generator=torch.Generator().manual_seed(0))

    def op(piece):
        return F.interpolate(torch.tanh(piece) * 2 + 1, scale_factor=8, mode="nearest")

    torch.testing.assert_close(tiled_map(op, x, tile, overlap, 8), op(x), rtol=0, atol=1e-6)
    up = op(x)  # and back down, tiles on the 8-pixel grid as encoding uses them
    tile_h, tile_w = (tile, tile) if isinstance(tile, int) else tile
    down = tiled_map(lambda p: F.avg_pool2d(p, 8), up, (tile_h * 8, tile_w * 8), overlap * 8, 1 / 8)
    torch.testing.assert_close(down, F.avg_pool2d(up, 8), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def vae():
    from nodes.models.embedded import EMBEDDED_PATH
    from nodes.sd.loading import load_checkpoint

    if not EMBEDDED_PATH.is_file():
        pytest.skip("the embedded model's weights are not built yet")
    return load_checkpoint(EMBEDDED_PATH).vae


@pytest.fixture(scope="module")
def picture() -> torch.Tensor:
    """Shapes on a background, as the embedded model draws them: 256 x 256."""
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    image = torch.zeros(1, 256, 256, 3)
    image[..., :] = torch.tensor([0.15, 0.3, 0.8])
    image[0][((yy - 150) ** 2 + (xx - 140) ** 2) < 60**2] = torch.tensor([0.9, 0.15, 0.1])
    image[0][(yy > 30) & (yy < 90) & (xx > 30) & (xx < 100)] = torch.tensor([0.95, 0.85, 0.1])
    return image


def test_tiled_decode_and_encode_stay_close_to_untiled(vae, picture):
    from nodes.sd.vae import decode, encode

    latent = encode(vae, picture)
    full = decode(vae, latent)
    args = dict(temporal_size=64, temporal_overlap=8)
    (tiled,) = VAEDecodeTiled.execute(None, samples=Latent(latent), vae=vae, tile_size=128, overlap=64, **args)
    error = (tiled - full).abs()
    assert tiled.shape == full.shape and float(error.mean()) < 0.08 and float(error.flatten().quantile(0.99)) < 0.3
    # no seam: across the tile borders the tiled image changes no more than the untiled one does there
    for border in (96, 128, 160):
        jump_tiled = (tiled[:, :, border] - tiled[:, :, border - 1]).abs().mean()
        jump_full = (full[:, :, border] - full[:, :, border - 1]).abs().mean()
        assert float(jump_tiled) <= float(jump_full) + 0.02
    (encoded,) = VAEEncodeTiled.execute(None, pixels=picture, vae=vae, tile_size=128, overlap=32, **args)
    assert encoded.samples.shape == latent.shape and float((encoded.samples - latent).abs().mean()) < 0.15


def test_one_tile_is_the_untiled_result_exactly(vae, picture):
    from nodes.sd.vae import decode, encode

    small = picture[:, ::2, ::2]
    latent = encode(vae, small)
    args = dict(overlap=64, temporal_size=64, temporal_overlap=8)
    (image,) = VAEDecodeTiled.execute(None, samples=Latent(latent), vae=vae, tile_size=128, **args)
    assert torch.equal(image, decode(vae, latent))
    (encoded,) = VAEEncodeTiled.execute(None, pixels=small, vae=vae, tile_size=128, **args)
    assert torch.equal(encoded.samples, latent)
