"""What the InstructPix2Pix / depth-to-image pieces compute, on small tensors and tiny models: the depth maps,
DepthToImageConditioning, the concat channels, UNet-only checkpoints that borrow CLIP and VAE, the widened
conv_in and the training triples."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy import ndimage

from nodes.conditioning import DepthToImageConditioning
from nodes.image import ShapesDepthMap
from nodes.sd.cond_regions import concat_map
from nodes.sd.depth import depth_to_latent, height_field, image_depth, shape_mask
from nodes.sd.loading import load_checkpoint
from nodes.sd.loading.configs import METADATA_KEY
from nodes.sd.loading.export import unet_state_dict
from nodes.sd.shapes import render, spec_for
from nodes.sd.types import ConcatLatent, CondItem
from tiny_models import sd1_modules, write_checkpoint
from training.concat_unet import fold_input_gain, widen_conv_in, write_unet_only
from training.instruct_pix2pix import EDIT_KINDS, edit_for, make_edit


def test_height_field_is_the_clipped_distance_to_the_background():
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:30, 5:35] = True
    field = height_field(mask, falloff=0.1)  # full height 4 px in from the edge
    assert field[0, 0] == 0 and field[20, 20] == 1.0
    assert field[10, 20] == pytest.approx(1 / 4) and field[11, 20] == pytest.approx(2 / 4)
    expected = np.clip(ndimage.distance_transform_edt(mask) / 4.0, 0, 1)
    np.testing.assert_allclose(field, expected, rtol=1e-6)
    assert not height_field(np.zeros((8, 8), dtype=bool)).any()


def test_shapes_depth_map_finds_the_rendered_shape():
    spec = spec_for("star", "red", "yellow", random.Random(2))
    image, mask, _ = render(spec)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
    (depth,) = ShapesDepthMap.execute(None, image=pixels, falloff=0.05)
    assert depth.shape == (1, 128, 128, 3) and torch.equal(depth[..., 0], depth[..., 2])
    truth = np.asarray(mask) >= 128
    found = depth[0, ..., 0].numpy() > 0
    assert (found & truth).sum() / (found | truth).sum() > 0.95
    np.testing.assert_allclose(depth[0, ..., 0].numpy(), height_field(shape_mask(pixels[0].numpy()), 0.05))
    assert depth.max() == 1.0 and depth.min() == 0.0


def test_depth_to_latent_is_bicubic_then_min_max_to_minus_one_one():
    depth = torch.zeros(2, 32, 32)
    depth[0, 8:20, 8:24] = 1.0
    depth[1, 16:, :] = torch.linspace(0, 0.5, 32)
    out = depth_to_latent(depth, 4, 4)
    resized = torch.nn.functional.interpolate(depth[:, None], size=(4, 4), mode="bicubic", align_corners=False)
    for index in range(2):
        low, high = resized[index].min(), resized[index].max()
        torch.testing.assert_close(out[index], 2 * (resized[index] - low) / (high - low) - 1)
    assert out.amin(dim=(1, 2, 3)).tolist() == [-1.0, -1.0] and out.amax(dim=(1, 2, 3)).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="flat"):
        depth_to_latent(torch.ones(1, 16, 16), 2, 2)


def test_depth_conditioning_puts_the_depth_channel_on_both_prompts():
    depth = torch.zeros(1, 64, 48, 3)
    depth[:, 10:40, 10:30] = 0.8
    positive, negative = (CondItem(embeds=torch.zeros(1, 77, 8)),), (CondItem(embeds=torch.ones(1, 77, 8)),)
    pos, neg = DepthToImageConditioning.execute(None, positive=positive, negative=negative, depth=depth)
    expected = depth_to_latent(depth.mean(dim=-1), 8, 6)
    assert pos[0].concat.latent.shape == (1, 1, 8, 6)
    torch.testing.assert_close(pos[0].concat.latent, expected)
    assert neg[0].concat is pos[0].concat and torch.equal(neg[0].embeds, negative[0].embeds)
    with pytest.raises(ValueError, match="smaller than one latent pixel"):
        DepthToImageConditioning.execute(None, positive=positive, negative=negative, depth=torch.ones(1, 4, 4, 3))


def test_concat_channels_for_pix2pix_and_depth_models():
    plain = CondItem(embeds=torch.zeros(1, 77, 8))
    # an InstructPix2Pix UNet given no image gets zeros: its "no image" input, as trained and as ComfyUI feeds it
    assert torch.equal(concat_map(plain, 4, 2, 8, 8), torch.zeros(2, 4, 8, 8))
    depth = CondItem(embeds=plain.embeds, concat=ConcatLatent(latent=torch.rand(1, 1, 8, 8)))
    assert torch.equal(concat_map(depth, 1, 3, 8, 8), depth.concat.latent.expand(3, -1, -1, -1))
    with pytest.raises(ValueError, match="DepthToImageConditioning"):
        concat_map(plain, 1, 1, 8, 8)
    with pytest.raises(ValueError, match="extra input channel"):
        concat_map(depth, 4, 1, 8, 8)  # depth conditioning given to an InstructPix2Pix UNet


def test_widened_unet_starts_as_the_base_model():
    modules = sd1_modules(seed=1, text_hidden=64)
    x, states = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 64)
    with torch.no_grad():
        base = modules.unet(x, 500, encoder_hidden_states=states).sample
        unet = widen_conv_in(modules.unet, 8)
        widened = unet(torch.cat([x, torch.randn(1, 4, 8, 8)], 1), 500, encoder_hidden_states=states).sample
    assert unet.config.in_channels == 8 and unet.conv_in.weight.shape[1] == 8
    torch.testing.assert_close(widened, base)


def test_folding_the_input_gain_reads_the_unscaled_input():
    unet = widen_conv_in(sd1_modules(seed=2, text_hidden=64).unet, 5)
    with torch.no_grad():
        unet.conv_in.weight[:, 4:] = torch.randn(unet.conv_in.weight[:, 4:].shape)
        x, extra, states = torch.randn(1, 4, 8, 8), torch.randn(1, 1, 8, 8), torch.randn(1, 77, 64)
        trained = unet(torch.cat([x, extra * 10.0], 1), 300, encoder_hidden_states=states).sample
        folded = fold_input_gain(unet, 10.0)(torch.cat([x, extra], 1), 300, encoder_hidden_states=states).sample
    torch.testing.assert_close(folded, trained, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype, tolerance", [("fp16", 1e-3), ("fp8", 0.07)])
def test_unet_only_checkpoint_borrows_clip_and_vae(tmp_path, dtype, tolerance):
    base_modules = sd1_modules(seed=4, text_hidden=64)
    write_checkpoint(base_modules, tmp_path / "base.safetensors")
    unet = widen_conv_in(sd1_modules(seed=5, text_hidden=64).unet, 5)
    write_unet_only(unet, tmp_path / "depth.safetensors", parts_from="base.safetensors", dtype=dtype)
    loaded, base = load_checkpoint(tmp_path / "depth.safetensors"), load_checkpoint(tmp_path / "base.safetensors")
    built = loaded.model.unet_ref.get()
    assert built.config.in_channels == 5 and built.conv_in.weight.dtype == torch.float32
    for name, value in unet.state_dict().items():
        assert (built.state_dict()[name] - value).abs().max() <= tolerance * max(1.0, value.abs().max()), name
    clip, vae = loaded.clip.encoder_refs[0].get(), loaded.vae.vae_ref.get()
    for mine, theirs in ((clip, base.clip.encoder_refs[0].get()), (vae, base.vae.vae_ref.get())):
        assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))
    assert loaded.vae.scaling_factor == base.vae.scaling_factor and loaded.family == "sd1"


def test_unet_only_checkpoint_errors_name_the_problem(tmp_path):
    unet = widen_conv_in(sd1_modules(seed=5, text_hidden=64).unet, 8)
    write_unet_only(unet, tmp_path / "pix2pix.safetensors", parts_from="missing.safetensors", dtype="fp16")
    with pytest.raises(ValueError, match="missing.safetensors"):
        load_checkpoint(tmp_path / "pix2pix.safetensors")
    tensors = {**unet_state_dict(unet), "first_stage_model.x": torch.zeros(1)}
    save_file(tensors, str(tmp_path / "mixed.safetensors"),
              metadata={METADATA_KEY: json.dumps({"parts_from": "pix2pix.safetensors"})})
    with pytest.raises(ValueError, match="only the UNet"):
        load_checkpoint(tmp_path / "mixed.safetensors")


def test_training_triples_change_exactly_what_the_instruction_names():
    rng = random.Random(0)
    source = spec_for("square", "blue", "yellow", rng)
    colour = make_edit(source, "colour", rng)
    assert colour.instruction == f"make the square {colour.target.fg}"
    assert colour.target.fg not in ("blue", "yellow") and (colour.target.shape, colour.target.bg) == ("square", "yellow")
    shape = make_edit(source, "shape", rng)
    assert shape.instruction == f"turn the square into a {shape.target.shape}" and shape.target.shape != "square"
    assert (shape.target.fg, shape.target.bg, shape.target.cx, shape.target.radius) == ("blue", "yellow", source.cx,
                                                                                      source.radius)
    background = make_edit(source, "background", rng)
    assert background.instruction == f"make the background {background.target.bg}"
    assert background.target.bg not in ("blue", "yellow") and background.target.fg == "blue"
    assert [edit_for(0, 20, i).kind for i in range(6)] == [*EDIT_KINDS, *EDIT_KINDS]
    assert edit_for(0, 20, 7) == edit_for(0, 20, 7)


def test_image_depth_of_a_blank_image_is_zero():
    assert not image_depth(torch.full((1, 16, 16, 3), 0.3)).any()
