"""CLIP vision towers: ComfyUI's preprocessing, both key layouts against independent forward passes, the
CLIPVisionLoader/CLIPVisionEncode nodes, and the shipped tiny tower's caption retrieval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from nodegraph.models import ModelManager
from nodes.models.embedded import ADAPTERS, default_adapter_path
from nodes.sd import clip_vision as cv
from tiny_models import engine_at


def tiny_tower(seed: int = 0, *, heads: int = 1, act: str = "quick_gelu") -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=heads,
                              image_size=32, patch_size=8, projection_dim=24, hidden_act=act)
    return CLIPVisionModelWithProjection(config).eval()


def images(batch: int = 2, height: int = 40, width: int = 56, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(seed))


def test_preprocess_is_rounding_and_clip_normalisation_at_the_model_size():
    image = images(1, 32, 32)
    expected = (torch.round(image * 255) / 255 - torch.tensor(cv.CLIP_MEAN)) / torch.tensor(cv.CLIP_STD)
    torch.testing.assert_close(cv.preprocess(image, 32), expected.permute(0, 3, 1, 2))


def test_preprocess_center_crop_matches_transformers_processor_and_none_squashes():
    y, x = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 96), indexing="ij")
    image = torch.stack([x, y, (x + y) / 2], dim=-1)[None]  # smooth: resampling filters agree closely
    ours = cv.preprocess(image, 32, crop=True)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                   image_mean=list(cv.CLIP_MEAN), image_std=list(cv.CLIP_STD))
    theirs = processor(images=(image[0].numpy() * 255).round().astype(np.uint8), return_tensors="pt").pixel_values
    assert ours.shape == theirs.shape == (1, 3, 32, 32)
    assert (ours - theirs).abs().max() < 0.1  # PIL's and torch's bicubic filters differ by a little
    squashed = cv.preprocess(image, 32, crop=False)
    # the centre crop keeps the middle half of x (red 0.25..0.75); squashing keeps all of it (0..1)
    red = lambda t: t[0, 0] * cv.CLIP_STD[0] + cv.CLIP_MEAN[0]  # noqa: E731
    assert red(ours).min() > 0.2 and red(ours).max() < 0.8
    assert red(squashed).min() < 0.05 and red(squashed).max() > 0.95


def reference_open_clip_forward(sd: dict[str, torch.Tensor], pixels: torch.Tensor, heads: int, gelu) -> tuple:
    """open_clip's VisionTransformer written out from its own keys: (tokens before ln_post, image embedding)."""
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=sd["visual.conv1.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    width = x.shape[-1]
    x = F.layer_norm(x, (width,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("visual.transformer.resblocks."))
    hidden = []
    for i in range(layers):
        p = lambda name: sd[f"visual.transformer.resblocks.{i}.{name}"]  # noqa: E731
        h = F.layer_norm(x, (width,), p("ln_1.weight"), p("ln_1.bias")).transpose(0, 1)
        attn = F.multi_head_attention_forward(h, h, h, width, heads, p("attn.in_proj_weight"), p("attn.in_proj_bias"),
                                              None, None, False, 0.0, p("attn.out_proj.weight"),
                                              p("attn.out_proj.bias"), need_weights=False)[0]
        x = x + attn.transpose(0, 1)
        h = F.layer_norm(x, (width,), p("ln_2.weight"), p("ln_2.bias"))
        x = x + F.linear(gelu(F.linear(h, p("mlp.c_fc.weight"), p("mlp.c_fc.bias"))), p("mlp.c_proj.weight"),
                         p("mlp.c_proj.bias"))
        hidden.append(x)
    pooled = F.layer_norm(x[:, 0], (width,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    return hidden[-1], hidden[-2], pooled @ sd["visual.proj"]


def test_transformers_layout_loads_through_the_manager_and_encodes_like_transformers(tmp_path):
    tower = tiny_tower()
    state = {k: v.contiguous() for k, v in tower.state_dict().items()}
    state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]  # what older transformers saved
    save_file(state, str(tmp_path / "tower.safetensors"))
    manager = ModelManager("cpu")
    handle = cv.load_clip_vision(tmp_path / "tower.safetensors", manager=manager)
    assert handle.image_size == 32 and handle.model.config.hidden_act == "quick_gelu"
    assert cv.load_clip_vision(tmp_path / "tower.safetensors", manager=manager).model is handle.model  # one copy
    image = images()
    out = cv.encode_image(handle.model, image)
    with torch.no_grad():
        expected = tower(pixel_values=cv.preprocess(image, 32), output_hidden_states=True)
    torch.testing.assert_close(out.image_embeds, expected.image_embeds)
    torch.testing.assert_close(out.last_hidden_state, expected.last_hidden_state)
    torch.testing.assert_close(out.penultimate_hidden_states, expected.hidden_states[-2])
    assert out.image_embeds.shape == (2, 24) and out.last_hidden_state.shape == (2, 17, 64)


@pytest.mark.parametrize("prefix", ["", "embedder.model."])
def test_open_clip_layout_matches_an_independent_open_clip_forward(tmp_path, prefix):
    tower = tiny_tower(1, heads=2, act="gelu")
    open_clip = cv.transformers_to_open_clip(tower.state_dict())
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in open_clip and open_clip["visual.proj"].shape == (64, 24)
    path = tmp_path / "open_clip.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in open_clip.items()}, str(path),
              metadata={"nodegraph_config": json.dumps({"clip_vision": {"num_attention_heads": 2}})})
    model = cv.load_clip_vision(path, manager=ModelManager("cpu")).model
    assert model.config.hidden_act == "gelu"  # open_clip's towers use exact GELU
    image = images(seed=3)
    out = cv.encode_image(model, image)
    last, penultimate, embeds = reference_open_clip_forward(open_clip, cv.preprocess(image, 32), 2, F.gelu)
    torch.testing.assert_close(out.last_hidden_state, last, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.penultimate_hidden_states, penultimate, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.image_embeds, embeds, atol=1e-5, rtol=1e-4)


def test_unknown_files_are_refused_with_their_keys(tmp_path):
    save_file({"model.0.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"other.safetensors: no CLIP vision tower found .*model.0.weight"):
        cv.load_clip_vision(tmp_path / "other.safetensors", manager=ModelManager("cpu")).model


def test_nodes_load_and_encode_with_crop_choice(tmp_path):
    (tmp_path / "models" / "clip_vision").mkdir(parents=True)
    tower = tiny_tower(2)
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()},
              str(tmp_path / "models" / "clip_vision" / "mine.safetensors"))
    engine = engine_at(tmp_path)
    assert "mine.safetensors" in engine.env.models.list("clip_vision")
    graph = {"1": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "mine.safetensors"}},
             "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 32, "batch_size": 1, "color": 0xFF0000}},
             "3": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["1", 0], "image": ["2", 0],
                                                                "crop": "none"}}}
    from nodegraph.formats.api import from_api

    result = engine.run(from_api(graph, engine.registry), outputs=["3"]).values["3"][0]
    red = torch.zeros(1, 32, 64, 3)
    red[..., 0] = 1.0
    expected = tower(pixel_values=cv.preprocess(red, 32, crop=False))
    torch.testing.assert_close(result.image_embeds, expected.image_embeds)


@pytest.mark.skipif(not default_adapter_path("clip_vision").is_file(), reason="the tiny tower is not trained yet")
def test_shipped_tower_retrieves_captions_of_fresh_shapes():
    """The card's figure, re-measured on the first 128 of its 512 renders (foreground and background 1.0, shape
    0.77 there; chance is 0.1 for a colour and 0.2 for a shape): colours are read reliably, shapes mostly."""
    from nodes.models.embedded import EMBEDDED_PATH
    from nodes.sd.loading import load_checkpoint
    from training.clip_vision import ClipVisionSettings, retrieval

    model = cv.load_clip_vision(default_adapter_path("clip_vision"), manager=ModelManager("cpu")).model
    encoder = load_checkpoint(EMBEDDED_PATH).clip.encoders[0]
    figures = retrieval(model, encoder, ClipVisionSettings(), count=128)
    assert figures["fg_accuracy"] >= 0.8 and figures["bg_accuracy"] >= 0.8 and figures["shape_accuracy"] >= 0.65
    assert ADAPTERS["clip_vision"][0] == "clip_vision" and default_adapter_path("clip_vision").stat().st_size < 3 * 2**20


@pytest.mark.parametrize(("width", "layout", "heads", "act"), [
    (1024, "transformers", 16, "quick_gelu"), (1280, "transformers", 16, "gelu"), (1280, "open_clip", 16, "gelu"),
    (1664, "open_clip", 16, "gelu"), (96, "open_clip", 1, "gelu"), (128, "transformers", 2, "quick_gelu")])
def test_released_towers_get_their_heads_and_activation_by_width(width, layout, heads, act):
    """ComfyUI's clip_vision_l/h/g configs: 16 heads each; ViT-L uses quick-GELU, ViT-H and bigG GELU."""
    shapes = {"vision_model.embeddings.patch_embedding.weight": (width, 3, 14, 14),
              "vision_model.embeddings.position_embedding.weight": (257, width),
              "vision_model.encoder.layers.0.mlp.fc1.weight": (4 * width, width),
              "visual_projection.weight": (32, width)}
    config = cv.vision_config({k: torch.empty(v, device="meta") for k, v in shapes.items()}, layout)
    assert (config.num_attention_heads, config.hidden_act, config.image_size) == (heads, act, 224)
    overridden = cv.vision_config({k: torch.empty(v, device="meta") for k, v in shapes.items()}, layout,
                                  {"num_attention_heads": 1})
    assert overridden.num_attention_heads == 1
