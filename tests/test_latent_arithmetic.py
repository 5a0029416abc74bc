"""Latent arithmetic and LATENT_OPERATION nodes against ComfyUI's formulas (nodes_latent), written out here, and
LatentApplyOperationCFG acting on the guidance direction inside the CFG denoiser."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nodes.latent import (LatentAdd, LatentApplyOperation, LatentApplyOperationCFG, LatentConcat, LatentCut,
                          LatentInterpolate, LatentMultiply, LatentOperationSharpen, LatentOperationTonemapReinhard,
                          LatentSubtract)
from nodes.sd.denoisers import CFGDenoiser, EpsDenoiser, calc_cond_batch, patches_applied
from nodes.sd.imageops import resize
from nodes.sd.latent_ops import Sharpen, TonemapReinhard
from nodes.sd.schedules import scaled_linear_alphas_cumprod
from nodes.sd.types import CondItem, Latent, ModelHandle
from recording_unet import RecordingUNet


def latent(batch=2, height=6, width=5, seed=0) -> Latent:
    return Latent(torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(seed)))


def test_add_subtract_multiply_line_up_the_second_latent():
    one, two = latent(2), latent(1, height=12, width=10, seed=1)
    lined = resize(two.samples, 5, 6, "bilinear", "center").repeat(2, 1, 1, 1)
    (added,) = LatentAdd.execute(None, samples1=one, samples2=two)
    (subtracted,) = LatentSubtract.execute(None, samples1=one, samples2=two)
    (scaled,) = LatentMultiply.execute(None, samples=one, multiplier=-2.5)
    torch.testing.assert_close(added.samples, one.samples + lined)
    torch.testing.assert_close(subtracted.samples, one.samples - lined)
    torch.testing.assert_close(scaled.samples, one.samples * -2.5)


def comfy_interpolate(s1, s2, ratio):
    """ComfyUI's LatentInterpolate on a batch of one (its norms drop the channel axis and broadcast)."""
    m1, m2 = torch.linalg.vector_norm(s1, dim=1), torch.linalg.vector_norm(s2, dim=1)
    s1, s2 = torch.nan_to_num(s1 / m1), torch.nan_to_num(s2 / m2)
    t = s1 * ratio + s2 * (1.0 - ratio)
    st = torch.nan_to_num(t / torch.linalg.vector_norm(t, dim=1))
    return st * (m1 * ratio + m2 * (1.0 - ratio))


def test_interpolate_matches_comfyui_and_its_ends():
    one, two = latent(1), latent(1, seed=2)
    for ratio in (0.0, 0.3, 1.0):
        (out,) = LatentInterpolate.execute(None, samples1=one, samples2=two, ratio=ratio)
        torch.testing.assert_close(out.samples, comfy_interpolate(one.samples, two.samples, ratio))
    (first,) = LatentInterpolate.execute(None, samples1=one, samples2=two, ratio=1.0)
    torch.testing.assert_close(first.samples, one.samples)


def test_concat_along_each_axis_and_order():
    one, two = latent(2, seed=3), latent(1, seed=4)
    both = two.samples.repeat(2, 1, 1, 1)
    for dim, axis in (("x", -1), ("y", -2), ("t", -3)):
        (forward,) = LatentConcat.execute(None, samples1=one, samples2=two, dim=dim)
        (backward,) = LatentConcat.execute(None, samples1=one, samples2=two, dim=f"-{dim}")
        assert torch.equal(forward.samples, torch.cat([one.samples, both], dim=axis))
        assert torch.equal(backward.samples, torch.cat([both, one.samples], dim=axis))


def test_cut_clamps_like_comfyui():
    source = latent(1, height=6, width=5)
    s = source.samples
    (x,) = LatentCut.execute(None, samples=source, dim="x", index=1, amount=3)
    (y,) = LatentCut.execute(None, samples=source, dim="y", index=-2, amount=5)
    (end,) = LatentCut.execute(None, samples=source, dim="x", index=99, amount=4)
    (t,) = LatentCut.execute(None, samples=source, dim="t", index=2, amount=1)
    assert torch.equal(x.samples, s[..., 1:4]) and torch.equal(y.samples, s[..., 4:6, :])
    assert torch.equal(end.samples, s[..., 4:5]) and torch.equal(t.samples, s[:, 2:3])


def comfy_tonemap(latent, multiplier):
    magnitude = (torch.linalg.vector_norm(latent, dim=1) + 1e-10)[:, None]
    normalized = latent / magnitude
    mean = torch.mean(magnitude, dim=(1, 2, 3), keepdim=True)
    std = torch.std(magnitude, dim=(1, 2, 3), keepdim=True)
    top = (std * 5 + mean) * multiplier
    magnitude = magnitude * (1.0 / top)
    return normalized * (magnitude / (magnitude + 1.0) * top)


def comfy_sharpen(latent, radius, sigma, alpha):
    luminance = (torch.linalg.vector_norm(latent, dim=1) + 1e-6)[:, None]
    normalized = latent / luminance
    channels, size = latent.shape[1], radius * 2 + 1
    x, y = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    kernel = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    kernel = kernel / kernel.sum() * (alpha * -10)
    kernel[size // 2, size // 2] = kernel[size // 2, size // 2] - kernel.sum() + 1.0
    padded = F.pad(normalized, (radius,) * 4, "reflect")
    sharp = F.conv2d(padded, kernel.repeat(channels, 1, 1).unsqueeze(1), padding=size // 2, groups=channels)
    return luminance * sharp[:, :, radius:-radius, radius:-radius]


def test_operations_match_comfyui_and_apply_to_latents():
    source = latent(2, height=12, width=12, seed=5)
    (tonemap,) = LatentOperationTonemapReinhard.execute(None, multiplier=0.8)
    (sharpen,) = LatentOperationSharpen.execute(None, sharpen_radius=3, sigma=1.5, alpha=0.4)
    assert tonemap == TonemapReinhard(0.8) and sharpen == Sharpen(3, 1.5, 0.4)
    assert hash(sharpen) == hash(Sharpen(3, 1.5, 0.4))  # a frozen payload: the node cache can key on it
    (mapped,) = LatentApplyOperation.execute(None, samples=source, operation=tonemap)
    (sharpened,) = LatentApplyOperation.execute(None, samples=source, operation=sharpen)
    torch.testing.assert_close(mapped.samples, comfy_tonemap(source.samples, 0.8))
    torch.testing.assert_close(sharpened.samples, comfy_sharpen(source.samples, 3, 1.5, 0.4), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("operation", [TonemapReinhard(1.0), Sharpen(1, 1.0, 0.5)])
def test_apply_operation_cfg_transforms_cond_minus_uncond_before_scaling(operation):
    unet = RecordingUNet()
    model = ModelHandle(unet_ref=unet, family="sd1", prediction="epsilon",
                        alphas_cumprod=scaled_linear_alphas_cumprod())
    (patched,) = LatentApplyOperationCFG.execute(None, model=model, operation=operation)
    assert model.patches == () and len(patched.patches) == 1 and patched.patches[0].kind == "guidance"
    g = torch.Generator().manual_seed(6)
    positive, negative = (CondItem(torch.randn(1, 3, 8, generator=g)),), (CondItem(torch.randn(1, 3, 8, generator=g)),)
    x, sigma, cfg = torch.randn(1, 4, 6, 6, generator=g), torch.tensor([1.5]), 4.0
    denoiser = EpsDenoiser(unet, model.alphas_cumprod)
    guided = CFGDenoiser(denoiser, positive, negative, cfg)
    with patches_applied(patched.patches, unet_denoiser=denoiser, cfg_denoiser=guided):
        got = guided(x, sigma)
    assert guided.guidance_terms == []  # undone after the run
    cond, uncond = calc_cond_batch(denoiser, [positive, negative], x, sigma)
    want = uncond + cfg * operation(cond - uncond)  # ComfyUI's pre-CFG function, then plain CFG
    torch.testing.assert_close(got, want)
    if isinstance(operation, TonemapReinhard):  # halves the (spatially constant) guidance direction here
        assert not torch.allclose(got, uncond + cfg * (cond - uncond), atol=1e-3)
