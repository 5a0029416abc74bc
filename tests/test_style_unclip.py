"""Style models and unCLIP: the T2I-Adapter style layout against an independent forward, StyleModelApply's two
strength types (attn_bias checked through a real UNet: a bias of log 2 on the style tokens is the same as showing
them twice), unCLIP's noise augmentation against diffusers' StableUnCLIP parts, an SD2 unCLIP checkpoint loading
as a class-embedding UNet, the denoiser feeding it, and the shipped style model moving images to the reference."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
from safetensors.torch import save_file

from nodegraph.models import ModelManager
from nodes.models.embedded import default_adapter_path
from nodes.sd import schedules, style_model as sm, unclip
from nodes.sd.clip_vision import ClipVisionOutput
from nodes.sd.cond_batch import calc_cond_batch
from nodes.sd.denoisers import EpsDenoiser
from nodes.sd.loading import load_checkpoint
from nodes.sd.types import CondItem
from tiny_models import _unet, sd2_modules, write_checkpoint

T2I_STYLE_KEYS = {"style_embedding", "proj", "ln_pre.weight", "ln_pre.bias", "ln_post.weight", "ln_post.bias",
                  *(f"transformer_layes.{i}.{name}" for i in range(2) for name in (
                      "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
                      "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
                      "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias"))}


def style_file(tmp_path, heads: int = 4):
    torch.manual_seed(0)
    model = sm.StyleAdapter(sm.StyleAdapterConfig(width=32, context_dim=16, heads=heads, layers=2, tokens=4))
    for parameter in model.parameters():  # layer norms away from identity too
        parameter.data.add_(torch.randn_like(parameter) * 0.1)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert set(state) == T2I_STYLE_KEYS  # t2iadapter_style_sd14v1's key layout
    path = tmp_path / "style.safetensors"
    save_file(state, str(path), metadata={"nodegraph_config": json.dumps({"style_model": {"heads": heads}})})
    return path, state


def reference_style_forward(sd, x, heads):
    """T2I-Adapter's StyleAdapter.forward written out from the file's tensors."""
    width = x.shape[-1]
    tokens = sd["style_embedding"].shape[1]
    h = F.layer_norm(torch.cat([x, sd["style_embedding"].expand(x.shape[0], -1, -1)], 1), (width,),
                     sd["ln_pre.weight"], sd["ln_pre.bias"]).transpose(0, 1)
    for i in range(2):
        p = lambda n: sd[f"transformer_layes.{i}.{n}"]  # noqa: E731
        a = F.layer_norm(h, (width,), p("ln_1.weight"), p("ln_1.bias"))
        h = h + F.multi_head_attention_forward(a, a, a, width, heads, p("attn.in_proj_weight"), p("attn.in_proj_bias"),
                                               None, None, False, 0.0, p("attn.out_proj.weight"), p("attn.out_proj.bias"),
                                               need_weights=False)[0]
        m = F.linear(F.layer_norm(h, (width,), p("ln_2.weight"), p("ln_2.bias")), p("mlp.c_fc.weight"), p("mlp.c_fc.bias"))
        h = h + F.linear(m * torch.sigmoid(1.702 * m), p("mlp.c_proj.weight"), p("mlp.c_proj.bias"))
    h = h.transpose(0, 1)[:, -tokens:]
    return F.layer_norm(h, (width,), sd["ln_post.weight"], sd["ln_post.bias"]) @ sd["proj"]


def test_style_model_file_loads_and_matches_the_t2i_adapter_forward(tmp_path):
    path, state = style_file(tmp_path)
    handle = sm.load_style_model(path, manager=ModelManager("cpu"))
    x = torch.randn(2, 17, 32)
    tokens = sm.style_tokens(handle.model, x)
    assert tokens.shape == (1, 8, 16)  # a batch's tokens flattened into one sequence, as ComfyUI does
    torch.testing.assert_close(tokens, reference_style_forward(state, x, 4).flatten(0, 1)[None], atol=1e-5, rtol=1e-4)
    save_file({"style_embedding": torch.zeros(1, 2, 8)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="bad.safetensors: not a T2I-Adapter style model"):
        sm.load_style_model(tmp_path / "bad.safetensors", manager=ModelManager("cpu"))


def test_apply_style_multiply_scales_and_appends_to_every_entry():
    a, b = CondItem(torch.randn(1, 77, 16)), CondItem(torch.randn(1, 154, 16), strength=0.5)
    tokens = torch.randn(1, 8, 16)
    out = sm.apply_style((a, b), tokens, 0.5, "multiply")
    for before, after in zip((a, b), out):
        torch.testing.assert_close(after.embeds, torch.cat([before.embeds, tokens * 0.5], 1))
        assert after.strength == before.strength and "attention_bias" not in after.extras
    same = sm.apply_style((a,), tokens, 1.0, "attn_bias")[0]  # strength 1: no bias needed (ComfyUI's rule)
    assert "attention_bias" not in same.extras
    biased = sm.apply_style((a,), tokens, 2.0, "attn_bias")[0]
    torch.testing.assert_close(biased.embeds[:, 77:], tokens)
    expected = torch.cat([torch.zeros(77), torch.full((8,), math.log(2.0))])
    torch.testing.assert_close(biased.extras["attention_bias"].bias, expected)
    again = sm.apply_style((biased,), tokens, 3.0, "multiply")[0]  # a later apply keeps the earlier bias
    torch.testing.assert_close(again.extras["attention_bias"].bias, torch.cat([expected, torch.zeros(8)]))
    with pytest.raises(ValueError, match="width 8 but the conditioning has 16"):
        sm.apply_style((a,), torch.randn(1, 8, 8), 1.0, "multiply")


def test_attn_bias_of_log_two_equals_showing_the_style_tokens_twice():
    unet = _unet(0, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=8)
    denoiser = EpsDenoiser(unet, schedules.scaled_linear_alphas_cumprod())
    text, tokens = torch.randn(1, 12, 16), torch.randn(1, 3, 16) * 3
    biased = sm.apply_style((CondItem(text),), tokens, 2.0, "attn_bias")
    twice = (CondItem(torch.cat([text, tokens, tokens], 1)),)
    once = (CondItem(torch.cat([text, tokens], 1)),)
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([3.0])
    with torch.no_grad():
        got, expected, plain = (calc_cond_batch(denoiser, [c], x, sigma)[0] for c in (biased, twice, once))
    # the mask carries log 2 as 1 + log(2) / 10000 in float32: a bias error up to 6e-4, so outputs agree to ~1e-3
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=1e-2)
    assert (got - plain).abs().max() > 30 * (got - expected).abs().max()


def test_unclip_noise_augmentation_matches_diffusers_stable_unclip():
    dim, level = 12, 250
    generator = torch.Generator().manual_seed(1)
    embeds, noise = torch.randn(2, dim, generator=generator), torch.randn(2, dim, generator=generator)
    mean, std = torch.randn(1, dim, generator=generator), torch.rand(1, dim, generator=generator) + 0.5
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=dim)
    normalizer.mean.data, normalizer.std.data = mean, std
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    levels = torch.tensor([level, level])
    noised = normalizer.unscale(scheduler.add_noise(normalizer.scale(embeds), noise, levels))
    expected = torch.cat([noised, get_timestep_embedding(levels, dim, flip_sin_to_cos=True, downscale_freq_shift=0)], 1)
    torch.testing.assert_close(unclip.noise_augment(embeds, level, mean, std, noise, dim), expected, atol=1e-5, rtol=1e-5)
    assert unclip.noise_level(0.25) == round(999 * 0.25)


def test_unclip_conditioning_appends_images_and_strength_zero_changes_nothing():
    item = CondItem(torch.zeros(1, 77, 8))
    embeds = torch.randn(1, 6)
    assert unclip.append_unclip((item,), embeds, 0.0, 0.1) == (item,)
    once = unclip.append_unclip((item,), embeds, 0.8, 0.1)
    twice = unclip.append_unclip(once, embeds * 2, 1.0, 0.0)
    assert [(i.strength, i.noise_augmentation) for i in twice[0].extras["unclip"]] == [(0.8, 0.1), (1.0, 0.0)]
    assert "unclip" not in item.extras  # the input is left as it was


@pytest.fixture(scope="module")
def unclip_checkpoint(tmp_path_factory):
    modules = sd2_modules(0, v_prediction=False)
    unet = _unet(5, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=(2, 4),
                 use_linear_projection=True, class_embed_type="projection", projection_class_embeddings_input_dim=16)
    generator = torch.Generator().manual_seed(9)
    stats = {"noise_augmentor.data_mean": torch.randn(1, 8, generator=generator),
             "noise_augmentor.data_std": torch.rand(1, 8, generator=generator) + 0.5}
    modules = replace(modules, unet=unet, extra_tensors={**modules.extra_tensors, **stats})
    path = write_checkpoint(modules, tmp_path_factory.mktemp("unclip") / "unclip.safetensors")
    return path, unet, stats


def test_sd2_unclip_checkpoint_loads_as_a_class_embedding_unet(unclip_checkpoint):
    path, source, stats = unclip_checkpoint
    loaded = load_checkpoint(path).model.unet
    assert loaded.config.class_embed_type == "projection"
    assert loaded.config.projection_class_embeddings_input_dim == 16
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    mean, std = getattr(loaded, unclip.STATS_ATTRIBUTE)
    torch.testing.assert_close(mean, stats["noise_augmentor.data_mean"])


def test_denoiser_feeds_noise_augmented_image_embeds_as_class_labels(unclip_checkpoint):
    path, _, stats = unclip_checkpoint
    model = load_checkpoint(path).model
    denoiser = EpsDenoiser(model.unet, model.alphas_cumprod)
    text = CondItem(torch.randn(1, 77, 32))
    embeds = torch.randn(1, 8)
    output = ClipVisionOutput(embeds, torch.zeros(1, 5, 4), torch.zeros(1, 5, 4))
    cond = unclip.append_unclip((text,), output.image_embeds, 0.7, 0.3)
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor([2.0])
    noise = torch.randn((1, 8), generator=torch.Generator().manual_seed(unclip.NOISE_SEED))
    mean, std = stats["noise_augmentor.data_mean"], stats["noise_augmentor.data_std"]
    level = round(999 * 0.3)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    noised = scheduler.add_noise((embeds - mean) / std, noise, torch.tensor([level])) * std + mean
    labels = torch.cat([noised, get_timestep_embedding(torch.tensor([level]), 8, True, 0)], 1) * 0.7
    with torch.no_grad():
        got, without = (calc_cond_batch(denoiser, [c], x, sigma)[0] for c in (cond, (text,)))
        expected = denoiser(x, sigma, encoder_hidden_states=text.embeds, class_labels=labels)
        zeros = denoiser(x, sigma, encoder_hidden_states=text.embeds, class_labels=torch.zeros(1, 16))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(without, zeros, atol=1e-5, rtol=1e-4)  # no image: zeros, as ComfyUI
    assert (got - without).abs().max() > 1e-3


@pytest.mark.skipif(not (default_adapter_path("clip_vision").is_file() and default_adapter_path("style_model").is_file()),
                    reason="the tiny CLIP vision tower and style model are not trained yet")
def test_shipped_style_model_draws_the_references_colour_from_an_empty_prompt():
    """The model card's measurement on its first 4 references: with the style tokens the embedded model draws the
    reference's foreground colour and shape (the card: 14 and 15 of 16), from the same empty prompt and seed it
    rarely does (1 and 2 of 16)."""
    from nodes.models.embedded import EMBEDDED_PATH
    from nodes.sd import clip_vision as cv, text
    from nodes.sd.shapes import COLOURS
    from training.classifier import classify
    from training.clip_vision import images_of
    from training.clip_vision_eval import generate, styled
    from training.data import EVALUATION_STREAM, stream_specs

    manager = ModelManager("cpu")
    tower = cv.load_clip_vision(default_adapter_path("clip_vision"), manager=manager).model
    adapter = sm.load_style_model(default_adapter_path("style_model"), manager=manager).model
    loaded = load_checkpoint(EMBEDDED_PATH)
    empty = (text.encode(loaded.clip, ""),)
    specs = stream_specs(0, EVALUATION_STREAM, 1000, 4)
    hits = {"style": {"fg": 0, "shape": 0}, "empty": {"fg": 0, "shape": 0}}
    for index, spec in enumerate(specs):
        assert spec.fg in COLOURS
        for mode, conditioning in (("style", styled(empty, tower, adapter, images_of([spec], 128))), ("empty", empty)):
            image = generate(loaded, conditioning, empty, seed=index)
            found = classify((image[0].clamp(0, 1).numpy() * 255).round().astype("uint8"))
            hits[mode]["fg"] += found.fg == spec.fg
            hits[mode]["shape"] += found.shape == spec.shape
    for what in ("fg", "shape"):
        assert hits["style"][what] >= 3 and hits["style"][what] > hits["empty"][what], hits
