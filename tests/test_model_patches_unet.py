"""UNet block and self-attention patches: FreeU, FreeU_V2, PatchModelAddDownscale, HyperTile, TomePatchModel and
DifferentialDiffusion (nodes/sd/unet_blocks.py, freeu.py, hypertile.py, tome.py, differential_diffusion.py)."""

from __future__ import annotations

import random

import pytest
import torch
from model_patches_helpers import HAS_EMBEDDED, cosine, engine_for, graph, image, latent
from tiny_models import _unet

from nodegraph.formats.api import from_api
from nodes.sd.differential_diffusion import differential_mask
from nodes.sd.freeu import fourier_scale, freeu_backbone
from nodes.sd.hypertile import from_tiles, grid_shape, random_divisor, to_tiles
from nodes.sd.tome import bipartite_soft_matching_2d
from nodes.sd.unet_blocks import BlockHooks, BlockPatches, OutputPatch, up_layers

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def unet():
    """A tiny SD1-layout UNet (levels of 32 and 64 channels, one layer each, self-attention at the top level)."""
    return _unet(0, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8)


def run_unet(unet, x, context):
    with torch.no_grad():
        return unet(x, torch.tensor([500.0]), encoder_hidden_states=context, return_dict=False)[0]


INPUTS = (torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)),
          torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1)))


# -- FreeU maths ------------------------------------------------------------------------------------------

def test_fourier_scale_matches_freeus_filter():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    spectrum = torch.fft.fftshift(torch.fft.fftn(x, dim=(-2, -1)), dim=(-2, -1))
    mask = torch.ones_like(spectrum.real)
    mask[..., 4 - 1 : 4 + 1, 4 - 1 : 4 + 1] = 0.2
    expected = torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real
    assert torch.allclose(fourier_scale(x, inner=0.2, outer=1.0, radius=1), expected, atol=1e-5)
    assert torch.allclose(fourier_scale(x, inner=1.0, outer=1.0, radius=1), x, atol=1e-5)
    # the damped part is the lowest frequencies: the mean (DC) drops by the factor
    assert torch.allclose(fourier_scale(x, inner=0.2, outer=1.0, radius=1).mean((-2, -1)), 0.2 * x.mean((-2, -1)),
                          atol=1e-5)


def test_freeu_backbone_scaling():
    h = torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(3))
    v1 = freeu_backbone(h, 1.5, v2=False)
    assert torch.allclose(v1[:, :3], 1.5 * h[:, :3]) and torch.equal(v1[:, 3:], h[:, 3:])
    mean = h.mean(1, keepdim=True)
    low = mean.flatten(1).min(1).values.view(-1, 1, 1, 1)
    high = mean.flatten(1).max(1).values.view(-1, 1, 1, 1)
    v2 = freeu_backbone(h, 1.5, v2=True)
    assert torch.allclose(v2[:, :3], h[:, :3] * (0.5 * (mean - low) / (high - low) + 1), atol=1e-6)
    assert torch.equal(v2[:, 3:], h[:, 3:])


# -- the block mechanism ----------------------------------------------------------------------------------

def test_output_blocks_map_to_comfyuis_numbering(unet):
    """ComfyUI's output blocks of a (32, 64)-channel, 1-layer UNet receive 64, 64, 64, 32 channels and pop the
    skips of input blocks 3 (64 ch), 2 (downsampler), 1, 0 (conv_in)."""
    assert [channels for _, _, channels in up_layers(unet)] == [64, 64, 64, 32]
    seen = []
    patches = BlockPatches(output=[OutputPatch(
        skip=lambda hsp, channels, info: seen.append(("skip", info.number, channels, tuple(hsp.shape))) or hsp,
        hidden=lambda h, hsp, info: seen.append(("hidden", info.number, tuple(h.shape), tuple(hsp.shape))) or h)])
    inputs_seen = []
    patches.input.append(lambda h, info: inputs_seen.append((info.number, tuple(h.shape))) or h)
    reference = run_unet(unet, *INPUTS)
    hooks = BlockHooks(unet, patches, torch.tensor([1.0]))
    try:
        out = run_unet(unet, *INPUTS)
    finally:
        hooks.remove()
    assert torch.equal(out, reference)  # identity patches change nothing
    assert inputs_seen == [(0, (1, 32, 16, 16)), (1, (1, 32, 16, 16)), (2, (1, 32, 8, 8)), (3, (1, 64, 8, 8))]
    hidden = [(n, h, hsp) for kind, n, h, hsp in seen if kind == "hidden"]
    assert hidden == [(0, (1, 64, 8, 8), (1, 64, 8, 8)), (1, (1, 64, 8, 8), (1, 32, 8, 8)),
                      (2, (1, 64, 16, 16), (1, 32, 16, 16)), (3, (1, 32, 16, 16), (1, 32, 16, 16))]
    assert all(not module._forward_hooks and not module._forward_pre_hooks for module in unet.modules())


def test_output_patch_feeds_exactly_what_is_concatenated(unet):
    """Each up resnet's input is cat(patched hidden, patched skip) of the output block it belongs to."""
    recorded, resnet_inputs = {}, []

    def hidden(h, hsp, info):
        recorded.setdefault(info.number, {})["h"] = h * 2
        return h * 2

    def skip(hsp, channels, info):
        recorded.setdefault(info.number, {})["hsp"] = hsp + 1
        return hsp + 1

    handles = [resnet.register_forward_pre_hook(lambda _m, args: resnet_inputs.append(args[0]))
               for block in unet.up_blocks for resnet in block.resnets]
    hooks = BlockHooks(unet, BlockPatches(output=[OutputPatch(skip=skip, hidden=hidden)]), None)
    try:
        run_unet(unet, *INPUTS)
    finally:
        hooks.remove()
        for handle in handles:
            handle.remove()
    for number, given in enumerate(resnet_inputs):
        assert torch.equal(given, torch.cat([recorded[number]["h"], recorded[number]["hsp"]], dim=1))


def test_downscale_shrinks_in_its_sigma_range_and_keeps_the_full_skip(unet):
    from nodes.sd.freeu import downscale_patch

    patch = downscale_patch(1, 2.0, sigma_start=10.0, sigma_end=2.0, downscale_after_skip=True,
                            downscale_method="bicubic", upscale_method="bicubic")
    sizes: list[tuple[int, ...]] = []
    handle = unet.down_blocks[0].downsamplers[0].register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape))
    skips: list[tuple[int, ...]] = []
    probe = OutputPatch(skip=lambda hsp, c, info: skips.append((info.number, tuple(hsp.shape))) or hsp)
    try:
        for sigma in (5.0, 1.0):
            from types import SimpleNamespace

            fake = SimpleNamespace(wrappers=[], current_sigma=torch.tensor([sigma]), unet=unet)
            patch.apply(fake)
            fake._block_patches.output.append(probe)
            out = fake.wrappers[0](lambda s, t, k: run_unet(unet, *INPUTS), None, None, {})
            assert out.shape == (1, 4, 16, 16)
    finally:
        handle.remove()
    assert [tuple(s[-2:]) for s in sizes] == [(8, 8), (16, 16)]  # block 1's output halved at sigma 5 only
    assert (2, (1, 32, 16, 16)) in skips  # output block 2 pops input block 1's full-size skip
    assert all(not module._forward_hooks and not module._forward_pre_hooks for module in unet.modules())


# -- HyperTile and ToMe ------------------------------------------------------------------------------------

def test_hypertile_tiles_and_divisors():
    # ComfyUI's h = sqrt(tokens * W / H): a wide grid is read as if transposed
    assert grid_shape(64, 1.0) == (8, 8) and grid_shape(32, 2.0) == (8, 4) and grid_shape(32, 0.5) == (4, 8)
    for counter in range(5):
        random.seed(counter)
        assert random_divisor(16, 4, 2, counter) == [4, 2][random.randint(0, 1)]  # 16 // 4, 16 // 8
    assert random_divisor(8, 32, 2, 1) == 1  # a tile larger than the grid: one tile
    x = torch.arange(2 * 4 * 8 * 3, dtype=torch.float32).reshape(2, 32, 3)
    tiles = to_tiles(x, 2, 2, 4, 8)
    assert tiles.shape == (8, 8, 3)
    grid = x.reshape(2, 4, 8, 3)
    assert torch.equal(tiles[1].reshape(2, 4, 3), grid[0, :2, 4:])  # batch 0, tile row 0, tile column 1
    assert torch.equal(from_tiles(tiles, 2, 2, 4, 8), x)


def test_tome_merge_unmerge_round_trip():
    """Duplicated tokens merge into their copies; unmerging restores every token exactly, and merging averages."""
    generator = torch.Generator().manual_seed(4)
    base = torch.randn(1, 16, 8, generator=generator)
    x = base.repeat_interleave(2, dim=1).reshape(1, 32, 8)[:, :16]  # pairs of equal neighbours in each row
    x = x.reshape(1, 4, 4, 8)
    x[:, 1::2] = x[:, ::2]  # each 2x2 cell holds two equal columns... and equal rows: all four tokens equal
    x = x.reshape(1, 16, 8)
    merge, unmerge = bipartite_soft_matching_2d(x, 4, 4, 2, 2, r=12, generator=torch.Generator().manual_seed(0))
    merged = merge(x)
    assert merged.shape == (1, 4, 8)
    assert torch.allclose(unmerge(merged), x, atol=1e-6)
    y = torch.randn(2, 16, 8, generator=generator)
    merge, unmerge = bipartite_soft_matching_2d(y, 4, 4, 2, 2, r=3, generator=None)
    assert merge(y).shape == (2, 13, 8) and unmerge(merge(y)).shape == (2, 16, 8)
    merge0, _ = bipartite_soft_matching_2d(y, 4, 4, 2, 2, r=0)
    assert merge0(y) is y
    # merging averages: with a constant feature channel appended the merged tokens keep it, and a token merged
    # into a destination comes back as the mean of the destination and everything merged into it
    restored = unmerge(merge(y))
    changed = (~torch.isclose(restored, y).all(-1)).sum(-1)
    assert (changed <= 2 * 3).all() and (changed >= 1).all()
    for b in range(2):
        for token in torch.nonzero(~torch.isclose(restored[b], y[b]).all(-1)).flatten():
            group = torch.isclose(restored[b], restored[b, token]).all(-1)  # tokens sharing its merged value
            assert torch.allclose(restored[b, token], y[b][group].mean(0), atol=1e-5)


def test_tome_keeps_the_unet_output_close_at_small_ratios(unet):
    from nodes.sd.attention_patches import attn1_patched
    from nodes.sd.tome import TokenMerging

    reference = run_unet(unet, *INPUTS)
    errors = []
    for ratio in (0.1, 0.5):
        with attn1_patched(unet, [TokenMerging(ratio)], tuple(INPUTS[0].shape)):
            out = run_unet(unet, *INPUTS)
        errors.append(float((out - reference).norm() / reference.norm()))
    print(f"ToMe relative UNet output change at ratio 0.1, 0.5: {errors}")
    assert 0 < errors[0] < errors[1] and errors[0] < 0.1
    assert all(type(p).__name__ != "SelfAttentionProcessor" for p in unet.attn_processors.values())


# -- DifferentialDiffusion ---------------------------------------------------------------------------------

def test_differential_mask_thresholds_by_progress():
    mask = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    start, end = torch.tensor(999.0), torch.tensor(0.0)
    assert differential_mask(mask, torch.tensor(999.0), start, end, 1.0).tolist() == [0, 0, 0, 0, 1]
    assert differential_mask(mask, torch.tensor(499.5), start, end, 1.0).tolist() == [0, 0, 1, 1, 1]
    assert differential_mask(mask, torch.tensor(0.0), start, end, 1.0).tolist() == [1, 1, 1, 1, 1]
    blended = differential_mask(mask, torch.tensor(499.5), start, end, 0.5)
    assert torch.allclose(blended, 0.5 * torch.tensor([0, 0, 1, 1, 1.0]) + 0.5 * mask)


# -- on the embedded model ---------------------------------------------------------------------------------

embedded = pytest.mark.skipif(not HAS_EMBEDDED, reason="the embedded model's weights are not built yet")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return engine_for(tmp_path_factory.mktemp("unet_patches"))


@embedded
def test_freeu_changes_the_image_and_hypertile_keeps_it_close(engine):
    plain = image(engine, graph(cfg=7.0, decode=True))
    for patch in (("FreeU", {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}),
                  ("FreeU_V2", {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2})):
        assert (image(engine, graph(patch, cfg=7.0, decode=True)) - plain).abs().mean() > 0.01, patch[0]
    neutral = image(engine, graph(("FreeU", {"b1": 1.0, "b2": 1.0, "s1": 1.0, "s2": 1.0}), cfg=7.0, decode=True))
    assert (neutral - plain).abs().max() < 1e-3
    tiled = image(engine, graph(("HyperTile", {"tile_size": 32, "swap_size": 2, "max_depth": 1,
                                               "scale_depth": False}), cfg=7.0, decode=True))
    similarity = cosine(tiled, plain)
    print(f"HyperTile cosine to the plain image {similarity:.3f}")  # measured 0.92-0.98
    assert 0.85 < similarity < 1.0


@embedded
def test_differential_diffusion_edits_by_mask_strength(engine):
    """A left-to-right mask ramp on an img2img latent: the plain soft-mask sampler and DifferentialDiffusion both
    keep mask 0 and edit mask 1; with DD a pixel's change grows with its mask value (it is edited from the step
    where the progress threshold falls to it)."""
    g = graph(steps=8, cfg=5.0)
    mask = torch.linspace(0, 1, 128).expand(1, 128, 128).contiguous()
    init = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    from nodes.sd.types import Latent

    def run(model_node):
        extra = {"20": model_node} if model_node else {}
        values = engine.run(from_api({**g, **extra}), outputs=["4", "6", "7", *extra]).values
        model = values["20" if model_node else "4"][0]
        from nodes.sd.ksampler import sample

        return sample(model, seed=3, steps=8, cfg=5.0, sampler_name="euler", scheduler="normal",
                      positive=values["6"][0], negative=values["7"][0], denoise=1.0,
                      latent=Latent(init, noise_mask=mask[:, None])).samples

    dd = run({"class_type": "DifferentialDiffusion", "inputs": {"model": ["4", 0], "strength": 1.0}})
    change = (dd - init).abs().mean(dim=(0, 1, 2))  # per latent column (mask ~0.03 in the first, ~0.97 in the last)
    print(f"DD change per latent column {[round(float(c), 3) for c in change]}")
    assert change[0] < 0.05 * change[-1] and change[-1] > 0.1
    quarters = [float(change[k * 4 : (k + 1) * 4].mean()) for k in range(4)]
    print(f"DD change by mask quarter {quarters}")
    assert quarters == sorted(quarters)
    plain = run(None)
    assert (plain - dd).abs().max() > 1e-2


@embedded
def test_unet_patches_never_touch_the_shared_unet(engine):
    patches = [("FreeU", {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}),
               ("HyperTile", {"tile_size": 32, "swap_size": 2, "max_depth": 1, "scale_depth": False}),
               ("TomePatchModel", {"ratio": 0.3}),
               ("PatchModelAddDownscale", {"block_number": 1, "downscale_factor": 2.0, "start_percent": 0.0,
                                           "end_percent": 0.5, "downscale_after_skip": True,
                                           "downscale_method": "bicubic", "upscale_method": "bicubic"}),
               ("UNetSelfAttentionMultiply", {"q": 1.0, "k": 1.3, "v": 1.0, "out": 1.0}),
               ("UNetCrossAttentionMultiply", {"q": 1.0, "k": 1.0, "v": 0.7, "out": 1.0})]
    model = engine.run(from_api(graph()), outputs=["4"]).values["4"][0]
    state = {k: v.clone() for k, v in model.unet.state_dict().items()}
    processors = dict(model.unet.attn_processors)
    reference = latent(engine, graph(steps=4))
    patched = latent(engine, graph(*patches, steps=4))
    assert (patched - reference).abs().max() > 1e-2 and torch.isfinite(patched).all()
    engine.cache.clear()
    assert torch.equal(latent(engine, graph(steps=4)), reference)
    assert all(torch.equal(v, state[k]) for k, v in model.unet.state_dict().items())
    assert all(model.unet.attn_processors[name] is proc for name, proc in processors.items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.unet.modules())


def test_patches_undo_to_clean_run_objects(unet):
    """After a run, the denoisers hold no wrapper, attn1 patch or guidance term of any patch."""
    from nodes.sd.denoisers import CFGDenoiser, patches_applied, unet_denoiser
    from nodes.sd.freeu import freeu_patch
    from nodes.sd.hypertile import hypertile_patch
    from nodes.sd.pag import pag_patch
    from nodes.sd.schedules import scaled_linear_alphas_cumprod
    from nodes.sd.tome import tome_patch
    from nodes.sd.types import CondItem, ModelHandle

    model = ModelHandle(unet, "sd1", "epsilon", scaled_linear_alphas_cumprod())
    patches = (freeu_patch(1.1, 1.2, 0.9, 0.2, v2=False), hypertile_patch(32, 2, 1, False), tome_patch(0.3),
               pag_patch(2.0))
    den = unet_denoiser(model)
    item = CondItem(embeds=INPUTS[1])
    cfg = CFGDenoiser(den, [item], [item], 4.0)
    with patches_applied(patches, unet_denoiser=den, cfg_denoiser=cfg):
        assert len(den.wrappers) == 2 and len(den.attn1_patches) == 3 and len(cfg.guidance_terms) == 1
        out = cfg(INPUTS[0] * 5, torch.tensor([5.0]))
        assert torch.isfinite(out).all()
    assert den.wrappers == [] and den.attn1_patches == [] and cfg.guidance_terms == []


@embedded
def test_deep_shrink_keeps_the_native_composition_at_twice_the_size(engine):
    """At 256 px (twice the embedded model's 128) plain sampling draws the shape small and repeated; Kohya's Deep
    Shrink (block 3 halved for the first 35 %) draws it at the size the model learned: the red foreground's share
    moves back toward the 128 px one (measured over seeds 1-3: 0.28 at 128 px, 0.13 plain, 0.20 shrunk)."""
    shrink = ("PatchModelAddDownscale", {"block_number": 3, "downscale_factor": 2.0, "start_percent": 0.0,
                                         "end_percent": 0.35, "downscale_after_skip": True,
                                         "downscale_method": "bicubic", "upscale_method": "bicubic"})

    def red(img: torch.Tensor) -> float:
        img = img.clamp(0, 1)
        return float(((img[..., 0] > 0.5) & (img[..., 2] < 0.5)).float().mean())

    totals = [0.0, 0.0]
    for seed in (1, 2, 3):
        plain = red(image(engine, graph(seed=seed, steps=8, size=256, decode=True)))
        shrunk = red(image(engine, graph(shrink, seed=seed, steps=8, size=256, decode=True)))
        print(f"seed {seed}: red share at 256 px {plain:.3f} plain, {shrunk:.3f} with Deep Shrink")
        assert shrunk > plain
        totals = [totals[0] + plain, totals[1] + shrunk]
    assert totals[1] > 1.3 * totals[0]


def test_bislerp_is_bilinear_on_directions_and_norms():
    from nodes.sd.freeu import bislerp

    x = torch.randn(1, 4, 5, 6, generator=torch.Generator().manual_seed(6))
    # same size: every position hits a pixel exactly
    assert torch.allclose(bislerp(x, 5, 6), x, atol=1e-5)
    # norms are interpolated bilinearly (slerp keeps unit directions unit)
    bilinear_norm = torch.nn.functional.interpolate(x.norm(dim=1, keepdim=True), size=(10, 12), mode="bilinear",
                                                    align_corners=False)
    assert torch.allclose(bislerp(x, 10, 12).norm(dim=1, keepdim=True), bilinear_norm, atol=1e-4)
    # ComfyUI's rule for (nearly) parallel neighbours: take the first one as it is
    scale = torch.rand(1, 1, 5, 6, generator=torch.Generator().manual_seed(7)) + 0.5
    parallel = torch.tensor([1.0, 2.0, -1.0, 0.5]).view(1, 4, 1, 1) * scale
    rows = ((torch.arange(10) + 0.5) * 0.5 - 0.5).clamp(0, 4).floor().long()
    cols = ((torch.arange(12) + 0.5) * 0.5 - 0.5).clamp(0, 5).floor().long()
    assert torch.allclose(bislerp(parallel, 10, 12), parallel[:, :, rows][:, :, :, cols], atol=1e-5)
    # between two orthogonal unit vectors halfway, the result is their normalised sum (unit length)
    pair = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)
    mid = bislerp(pair, 1, 1)
    assert torch.allclose(mid.flatten(), torch.tensor([0.5**0.5, 0.5**0.5]), atol=1e-5)
