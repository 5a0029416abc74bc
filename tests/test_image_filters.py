"""Post-processing and filter nodes against ComfyUI's formulas, pillow's quantizer and plain-torch references."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nodes.image import (Canny, ImageBlend, ImageBlur, ImageQuantize, ImageRGBToYUV, ImageSharpen, ImageYUVToRGB,
                         Morphology)
from nodes.image.ops.filters import BLEND_MODES, bayer_matrix


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# W3C Compositing and Blending Level 1, separable modes B(base, layer); ComfyUI's "difference" is signed.
def w3c_soft_light(a, b):
    d = np.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, np.sqrt(a))
    return np.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (d - a))


BLENDS = {
    "normal": lambda a, b: b,
    "multiply": lambda a, b: a * b,
    "screen": lambda a, b: a + b - a * b,
    "overlay": lambda a, b: np.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b)),  # hard-light with a, b swapped
    "soft_light": w3c_soft_light,
    "difference": lambda a, b: a - b,
}


@pytest.mark.parametrize("mode", BLEND_MODES)
def test_blend_modes_follow_the_w3c_formulas(mode):
    base, layer = rand(1, 6, 5, 3, seed=1), rand(1, 6, 5, 3, seed=2)
    (out,) = ImageBlend.execute(None, image1=base, image2=layer, blend_factor=0.7, blend_mode=mode)
    a, b = base.double().numpy(), layer.double().numpy()
    expected = np.clip(a * 0.3 + BLENDS[mode](a, b) * 0.7, 0, 1)
    assert np.allclose(out.numpy(), expected, atol=1e-6)


def test_blend_resizes_a_different_second_image():
    base = torch.zeros(1, 4, 4, 3)
    (out,) = ImageBlend.execute(None, image1=base, image2=torch.ones(1, 8, 16, 3), blend_factor=1.0,
                                blend_mode="normal")
    assert out.shape == base.shape and torch.allclose(out, torch.ones_like(base))
    rgba = torch.cat([base, torch.full((1, 4, 4, 1), 0.5)], dim=-1)
    (with_alpha,) = ImageBlend.execute(None, image1=rgba, image2=torch.ones(1, 4, 4, 3), blend_factor=0.5,
                                       blend_mode="multiply")
    assert with_alpha.shape == (1, 4, 4, 4) and with_alpha[..., 3].eq(0.5).all() and with_alpha[..., :3].eq(0).all()


def comfy_gaussian(kernel_size, sigma):
    x, y = torch.meshgrid(torch.linspace(-1, 1, kernel_size), torch.linspace(-1, 1, kernel_size), indexing="ij")
    g = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return g / g.sum()


def comfy_convolve(image, kernel, radius):
    """ComfyUI's way: mirror-pad by the radius, depthwise conv2d, cut the padding off again."""
    channels = image.shape[-1]
    weight = kernel.repeat(channels, 1, 1).unsqueeze(1)
    x = F.pad(image.permute(0, 3, 1, 2), (radius,) * 4, "reflect")
    out = F.conv2d(x, weight, padding=radius, groups=channels)[:, :, radius:-radius, radius:-radius]
    return out.permute(0, 2, 3, 1)


@pytest.mark.parametrize("radius,sigma", [(1, 1.0), (3, 0.5), (2, 4.0)])
def test_blur_is_comfyuis_normalised_gaussian_over_a_mirrored_border(radius, sigma):
    image = rand(2, 9, 11, 3, seed=3)
    (out,) = ImageBlur.execute(None, image=image, blur_radius=radius, sigma=sigma)
    assert torch.allclose(out, comfy_convolve(image, comfy_gaussian(2 * radius + 1, sigma), radius), atol=1e-6)
    flat = torch.full((1, 7, 7, 3), 0.3)
    assert torch.allclose(ImageBlur.execute(None, image=flat, blur_radius=radius, sigma=sigma)[0], flat, atol=1e-6)
    assert out.std() < image.std()
    with pytest.raises(ValueError, match="radius of 4 needs a picture wider and taller than 4 pixels, got 11x4"):
        ImageBlur.execute(None, image=image[:, :4], blur_radius=4, sigma=sigma)


@pytest.mark.parametrize("radius,sigma,alpha", [(1, 1.0, 1.0), (2, 0.5, 0.3), (3, 2.0, 0.0)])
def test_sharpen_is_comfyuis_unsharp_kernel(radius, sigma, alpha):
    image = rand(1, 9, 10, 3, seed=4)
    (out,) = ImageSharpen.execute(None, image=image, sharpen_radius=radius, sigma=sigma, alpha=alpha)
    kernel = comfy_gaussian(2 * radius + 1, sigma) * -(alpha * 10)
    kernel[radius, radius] = kernel[radius, radius] - kernel.sum() + 1.0
    assert torch.allclose(out, torch.clamp(comfy_convolve(image, kernel, radius), 0, 1), atol=1e-5)
    if alpha == 0:
        assert torch.allclose(out, image, atol=1e-6)


def pillow_quantized(picture, colors, dither):
    pil = Image.fromarray((picture * 255).to(torch.uint8).numpy(), mode="RGB")
    palette = pil.quantize(colors=colors)
    return np.asarray(pil.quantize(palette=palette, dither=dither).convert("RGB"), dtype=np.float32) / 255


@pytest.mark.parametrize("dither,pillow_dither", [("none", Image.Dither.NONE),
                                                  ("floyd-steinberg", Image.Dither.FLOYDSTEINBERG)])
def test_quantize_matches_pillow_with_and_without_dither(dither, pillow_dither):
    image = rand(2, 12, 16, 3, seed=5)
    (out,) = ImageQuantize.execute(None, image=image, colors=6, dither=dither)
    for b in range(2):
        assert np.array_equal(out[b].numpy(), pillow_quantized(image[b], 6, pillow_dither))
    assert len(np.unique(out[0].numpy().reshape(-1, 3), axis=0)) <= 6


def test_quantize_dither_spreads_error_and_keeps_alpha():
    gradient = torch.linspace(0, 1, 32).view(1, 1, 32, 1).expand(1, 16, 32, 3).contiguous()
    rgba = torch.cat([gradient, torch.full((1, 16, 32, 1), 0.25)], dim=-1)
    (plain,) = ImageQuantize.execute(None, image=rgba, colors=2, dither="none")
    (diffused,) = ImageQuantize.execute(None, image=rgba, colors=2, dither="floyd-steinberg")
    assert plain.shape == rgba.shape and diffused[..., 3].eq(0.25).all()
    # with two colours (about 0.22 and 0.74) the column means follow the gradient only when the error is spread
    error = lambda out: (out[0, :, :, 0].mean(dim=0) - gradient[0, 0, :, 0]).abs().mean()  # noqa: E731
    assert error(diffused) < 0.7 * error(plain)


def test_bayer_matrices_are_the_ordered_dither_threshold_maps():
    assert np.allclose(bayer_matrix(2), np.array([[0, 2], [3, 1]]) / 4 + 0.125 - 0.5)
    for order in (2, 4, 8, 16):
        levels = np.sort(bayer_matrix(order).ravel())
        assert np.allclose(levels, (np.arange(order * order) + 0.5) / order ** 2 - 0.5)


def test_bayer_dither_adds_the_scaled_map_before_mapping_to_the_palette():
    image = rand(1, 8, 8, 3, seed=6)
    (out,) = ImageQuantize.execute(None, image=image, colors=4, dither="bayer-4")
    pil = Image.fromarray((image[0] * 255).to(torch.uint8).numpy(), mode="RGB")
    palette = pil.quantize(colors=4)
    spread = 2 * 256 / (len(palette.getpalette()) // 3)
    threshold = np.tile(spread * bayer_matrix(4) + 0.5, (2, 2))[:, :, None].astype(np.float32)
    shifted = np.asarray(pil, dtype=np.float32) + threshold
    mapped = Image.fromarray(np.clip(shifted, 0, 255).astype(np.uint8)).quantize(palette=palette,
                                                                                   dither=Image.Dither.NONE)
    assert np.array_equal(out[0].numpy(), np.asarray(mapped.convert("RGB"), dtype=np.float32) / 255)


def test_canny_finds_a_step_edge_between_its_thresholds():
    image = torch.zeros(1, 16, 16, 3)
    image[:, :, 8:] = 1.0
    (edges,) = Canny.execute(None, image=image, low_threshold=0.1, high_threshold=0.3)
    assert edges.shape == (1, 16, 16, 3) and torch.equal(edges[..., 0], edges[..., 2])
    columns = edges[0, 2:-2, :, 0].amax(dim=0).nonzero().flatten().tolist()
    assert columns and all(6 <= c <= 9 for c in columns)  # only around the step
    assert edges[0, 2:-2, :, 0].sum(dim=1).ge(1).all()  # on every inner row
    import kornia

    assert torch.equal(edges[..., :1].movedim(-1, 1), kornia.filters.canny(image.movedim(-1, 1), 0.1, 0.3)[1])
    # the step's gradient magnitude is below 0.9: with both thresholds above it nothing is an edge
    (none,) = Canny.execute(None, image=image * 0.2, low_threshold=0.9, high_threshold=0.95)
    assert none.eq(0).all()
    with pytest.raises(ValueError, match="low_threshold"):
        Canny.execute(None, image=image, low_threshold=0.5, high_threshold=0.2)


def min_filter(x, k):
    return -F.max_pool2d(-x, k, stride=1, padding=k // 2)


def max_filter(x, k):
    return F.max_pool2d(x, k, stride=1, padding=k // 2)


MORPHOLOGY = {
    "erode": min_filter,
    "dilate": max_filter,
    "open": lambda x, k: max_filter(min_filter(x, k), k),
    "close": lambda x, k: min_filter(max_filter(x, k), k),
    "gradient": lambda x, k: max_filter(x, k) - min_filter(x, k),
    "top_hat": lambda x, k: x - max_filter(min_filter(x, k), k),
    "bottom_hat": lambda x, k: min_filter(max_filter(x, k), k) - x,
}


@pytest.mark.parametrize("operation", list(MORPHOLOGY))
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_morphology_is_min_and_max_filtering(operation, kernel_size):
    """Flat square kernel: erosion is the window minimum and dilation the maximum (the border ignored)."""
    image = rand(2, 10, 9, 3, seed=7)
    (out,) = Morphology.execute(None, image=image, operation=operation, kernel_size=kernel_size)
    expected = MORPHOLOGY[operation](image.movedim(-1, 1), kernel_size).movedim(1, -1)
    assert torch.allclose(out, expected, atol=1e-6)


def test_yuv_planes_are_bt601_and_round_trip():
    image = rand(2, 5, 7, 3, seed=8)
    y, u, v = ImageRGBToYUV.execute(None, image=image)
    r, g, b = image.unbind(-1)
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    assert torch.allclose(y[..., 1], luma, atol=1e-5) and torch.equal(y[..., 0], y[..., 2])
    assert torch.allclose(u[..., 0], (b - luma) * 0.564 + 0.5, atol=1e-3)
    assert torch.allclose(v[..., 0], (r - luma) * 0.713 + 0.5, atol=1e-3)
    (back,) = ImageYUVToRGB.execute(None, Y=y, U=u, V=v)
    assert torch.allclose(back, image, atol=1e-4)
    rgba = torch.cat([image, torch.ones(2, 5, 7, 1)], dim=-1)
    assert ImageRGBToYUV.execute(None, image=rgba)[0].shape == (2, 5, 7, 3)
