"""GLIGEN: files in both key layouts ground a UNet exactly as diffusers' gated UNet does; the text-box node
records ComfyUI's boxes; sampling grounds only the entries that carry boxes; the shipped model places shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from nodes.gligen import GLIGENLoader, GLIGENTextBoxApply
from nodes.sd.cond_batch import calc_cond_batch
from nodes.sd.denoisers import unet_denoiser
from nodes.sd.gligen import (GligenApplied, GligenBox, GligenHandle, apply_textbox, fusers_hooked,
                             gligen_from_state_dict, load_gligen, phrase_embedding)
from nodes.sd.loading.keymap import unet_rules
from nodes.sd.types import CondItem, ModelHandle
from tiny_models import randomize


CONFIG = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
              down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4)


@pytest.fixture(scope="module")
def gated():
    """diffusers' own GLIGEN UNet (attention_type="gated"), random, with open gates, and the plain UNet under it."""
    unet = randomize(UNet2DConditionModel(**CONFIG, attention_type="gated"), 0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                param.fill_(0.8)
    state = unet.state_dict()
    gligen = {k: v for k, v in state.items() if ".fuser." in k or k.startswith("position_net.")}
    plain = UNet2DConditionModel(**CONFIG).eval()
    plain.load_state_dict({k: v for k, v in state.items() if k not in gligen})
    return unet, plain, gligen


def ldm_layout(gligen: dict) -> dict:
    rules = {r.target: r.source for r in unet_rules([k for k in gligen if ".fuser." in k], CONFIG)}
    return {rules.get(k, k): v for k, v in gligen.items()}


def grounding_inputs(batch: int = 2):
    generator = torch.Generator().manual_seed(1)
    boxes, masks, phrases = torch.zeros(batch, 30, 4), torch.zeros(batch, 30), torch.zeros(batch, 30, 32)
    boxes[:, 0], boxes[:, 1] = torch.tensor([0.1, 0.2, 0.5, 0.9]), torch.tensor([0.5, 0.0, 1.0, 0.5])
    masks[:, :2] = 1.0
    phrases[:, :2] = torch.randn(2, 32, generator=generator)
    return boxes, masks, phrases


@pytest.mark.parametrize("layout", ["diffusers", "ldm"])
def test_loaded_file_grounds_the_unet_as_diffusers_gated_unet(gated, layout, tmp_path):
    unet, plain, gligen = gated
    weights = gligen if layout == "diffusers" else ldm_layout(gligen)
    assert any(k.startswith("input_blocks.1.1.transformer_blocks.0.fuser.") for k in weights) == (layout == "ldm")
    path = tmp_path / "gligen.safetensors"
    save_file({k: v.half().contiguous() for k, v in weights.items()}, str(path))
    model = load_gligen(path).model
    unet.half().float()  # the file is fp16: compare with the same rounded weights
    unet.load_state_dict({k: v.half().float() for k, v in unet.state_dict().items()})
    plain.load_state_dict({k: v for k, v in unet.state_dict().items() if k not in gligen})
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([700.0, 700.0]), torch.randn(2, 77, 32)
    boxes, masks, phrases = grounding_inputs()
    with torch.no_grad():
        expected = unet(x, t, text, cross_attention_kwargs={
            "gligen": {"boxes": boxes, "masks": masks, "positive_embeddings": phrases}}).sample
        objs = model.grounding_tokens(boxes, masks, phrases)
        with fusers_hooked(plain, model, objs):
            grounded = plain(x, t, text).sample
        after = plain(x, t, text).sample
    torch.testing.assert_close(grounded, expected, atol=2e-5, rtol=1e-4)
    assert (after - expected).abs().max() > 1e-2  # the hooks are gone and they did change the output
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in plain.modules())


def test_files_that_are_not_gligen_are_refused(gated):
    _, plain, gligen = gated
    with pytest.raises(ValueError, match="not a GLIGEN"):
        gligen_from_state_dict({k: v for k, v in gligen.items() if ".fuser." in k})
    with pytest.raises(ValueError, match="gated self-attention"):
        gligen_from_state_dict({k: v for k, v in gligen.items() if k.startswith("position_net.")})
    moved = {k.replace("down_blocks.0.", "down_blocks.7."): v for k, v in gligen.items()}
    with pytest.raises(ValueError, match="no transformer block"):
        with fusers_hooked(plain, gligen_from_state_dict(moved), torch.zeros(1, 30, 32)):
            pass


def test_sampling_grounds_the_entries_with_boxes_and_not_the_negative(gated):
    _, plain, gligen = gated
    handle = GligenHandle(gligen_from_state_dict(gligen))
    alphas = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    model = ModelHandle(plain, "sd1", "epsilon", alphas)
    phrase = torch.randn(32, generator=torch.Generator().manual_seed(2))
    positive = CondItem(embeds=torch.randn(1, 77, 32), extras={
        "gligen": GligenApplied(handle, (GligenBox(phrase, height=4, width=2, y=1, x=3),))})
    negative = CondItem(embeds=torch.randn(1, 77, 32))
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([3.0])
    with torch.no_grad():
        cond, uncond = calc_cond_batch(unet_denoiser(model), [(positive,), (negative,)], x, sigma)
        boxes, masks, phrases = torch.zeros(2, 30, 4), torch.zeros(2, 30), torch.zeros(2, 30, 32)
        boxes[:, 0] = torch.tensor([3 / 8, 1 / 8, 5 / 8, 5 / 8])  # x1, y1, x2, y2 over the 8 x 8 latent
        masks[:, 0], phrases[:, 0] = 1.0, phrase
        plain_denoiser = unet_denoiser(model)
        with fusers_hooked(plain, handle.model, handle.model.grounding_tokens(boxes, masks, phrases)):
            expected_cond = plain_denoiser(x, sigma, encoder_hidden_states=positive.embeds.expand(2, -1, -1))
        expected_uncond = plain_denoiser(x, sigma, encoder_hidden_states=negative.embeds.expand(2, -1, -1))
        ungrounded = plain_denoiser(x, sigma, encoder_hidden_states=positive.embeds.expand(2, -1, -1))
    torch.testing.assert_close(cond, expected_cond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(uncond, expected_uncond, atol=1e-5, rtol=1e-5)
    assert (cond - ungrounded).abs().max() > 1e-3


def test_textbox_node_adds_comfyui_boxes_with_the_phrase_pooled_embedding():
    from nodes.models.embedded import EMBEDDED_PATH
    from nodes.sd.loading import load_checkpoint

    clip = load_checkpoint(EMBEDDED_PATH).clip
    handle = GligenHandle(torch.nn.Linear(1, 1))  # what the node records does not depend on the model
    conditioning = (CondItem(embeds=torch.zeros(1, 77, 64), extras={"other": 1}), CondItem(embeds=torch.ones(1, 77, 64)))
    (once,) = GLIGENTextBoxApply.execute(None, conditioning, clip, handle, "a red circle", 64, 48, 16, 8)
    (twice,) = GLIGENTextBoxApply.execute(None, once, clip, handle, "a blue square", 40, 40, 72, 80)
    assert len(twice) == 2 and twice[0].extras["other"] == 1 and "gligen" not in conditioning[0].extras
    boxes = twice[1].extras["gligen"].boxes
    assert [(b.height, b.width, b.y, b.x) for b in boxes] == [(6, 8, 1, 2), (5, 5, 10, 9)]  # image px // 8
    from nodes.sd.text import _text_model, tokenize

    encoder = _text_model(clip.encoders[0])
    ids = torch.tensor([[t.id for t in tokenize(clip, "a blue square")[0][0]]])
    eos = int((ids[0] == clip.tokenizers[0].eos_token_id).nonzero()[0])
    with torch.no_grad():
        hidden = encoder(input_ids=ids).last_hidden_state  # final layer norm applied: CLIPTextModel's pooler
    torch.testing.assert_close(boxes[1].phrase, hidden[0, eos])
    torch.testing.assert_close(phrase_embedding(clip, "a red circle"), boxes[0].phrase)
    assert apply_textbox((), handle, boxes[0].phrase, 8, 8, 0, 0) == ()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from tiny_models import engine_at

    return engine_at(tmp_path_factory.mktemp("gligen"))


def test_loader_lists_the_shipped_gligen_first_and_refuses_other_files(engine):
    from safetensors.torch import save_file as save

    from nodes.models.embedded import ADAPTERS

    assert engine.env.models.list("gligen")[0] == ADAPTERS["gligen"][1]
    ctx = type("Ctx", (), {"env": engine.env})()
    (handle,) = GLIGENLoader.execute(ctx, ADAPTERS["gligen"][1])
    model = handle.model
    assert model.layout == "ldm" and len(model.block_names) == 5 and model.text_dim == 64
    folder = engine.env.models.folder_dirs("gligen")[0]
    folder.mkdir(parents=True, exist_ok=True)
    save({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(folder / "not_gligen.safetensors"))
    with pytest.raises(ValueError, match="not a GLIGEN"):
        GLIGENLoader.execute(ctx, "not_gligen.safetensors")


def test_shipped_gligen_changes_the_grounded_images_only(engine):
    """The shipped file's fusers act on the entries with boxes; the txt2img run with the same prompt and seed
    is untouched."""
    from training.adapter_eval import images, workflow

    grounded = workflow(engine, "gligen_boxes").with_widget("3", "steps", 6)
    plain = workflow(engine, "txt2img").with_widget("3", "steps", 6)
    first = images(engine, plain)
    boxed = images(engine, grounded)
    again = images(engine, plain)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(first, boxed)) > 8


def test_shipped_gligen_puts_the_named_shape_in_its_box(engine):
    """Boxes in opposite corners put the shape there: its centroid lands in the box far more often than the
    one time in four the same prompts give without GLIGEN (the embedded model then draws it near the centre),
    and the two corners' centroids lie far apart. 16 images of 10 steps; scripts/evaluate_gligen.py measures
    the same on more images for the model card."""
    from training.adapter_eval import images
    from training.gligen import BOX, box_hit, grounded_graph, shape_centroid

    hits, centres = 0, {}
    for corner in ((8, 8), (64, 64)):
        box = (*corner, BOX, BOX)
        for seed, (fg, shape, bg) in enumerate((("yellow", "star", "green"), ("white", "square", "purple"))):
            found = images(engine, grounded_graph(engine, f"a {fg} {shape} on a {bg} background", f"a {fg} {shape}",
                                                  box, seed, 10))
            hits += sum(box_hit(image, box) for image in found)
            centres.setdefault(corner, []).extend(shape_centroid(image) or (64.0, 64.0) for image in found)
    assert hits >= 12, hits  # of 16; without GLIGEN about 4
    (x_tl, y_tl), (x_br, y_br) = (np.mean(centres[c], axis=0) for c in ((8, 8), (64, 64)))
    assert x_br - x_tl > 30 and y_br - y_tl > 30, (x_tl, y_tl, x_br, y_br)  # boxes' centres: 56 px apart
