"""ControlNet extras: union ControlNets with SetUnionControlNetType, control-lora files, SD_4XUpscale_Conditioning.

- Union: a tiny random ControlNetUnionModel in diffusers' layout loads exactly; the chosen type reaches the model
  as diffusers' one-hot control_type / control_type_idx (residuals equal a direct call); types differ; "auto"
  equals ComfyUI's no-type path (a plain ControlNet with the union's weights); the node graph runs with it.
- Control-lora: a file built in the control-lora layout (full hint/zero convs/biases, up/down deltas for the
  encoder's weights, `lora_controlnet` marker) makes the ControlNet "UNet weight + up @ down", and images equal
  diffusers' StableDiffusionControlNetPipeline with that ControlNet (max abs pixel difference < 1e-4).
- x4 upscaler: the node's image and latent follow ComfyUI's formula; the augmentation equals diffusers'
  low_res_scheduler (DDPMScheduler, scaled_linear 1e-4..0.02) add_noise; a 7-channel UNet with class-embedded
  noise level gets [scaled latent, augmented image] and the level, as StableDiffusionUpscalePipeline calls it.
"""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch
import torch.nn.functional as F
from diffusers import (
    ControlNetModel,
    ControlNetUnionModel,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionControlNetPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file

from nodegraph.formats.api import from_api
from nodegraph.registry import default_registry
from nodes import controlnet_nodes
from nodes.control import SD_4XUpscale_Conditioning, SetUnionControlNetType
from nodes.image import image_to_png_bytes
from nodes.sd.control_lora import build_control_lora, control_lora_weights
from nodes.sd.controlnet import ControlApplied, controlnet_rules, load_controlnet
from nodes.sd.denoisers import EpsDenoiser, calc_cond_batch
from nodes.sd.ksampler import prepare_noise
from nodes.sd.schedules import scaled_linear_alphas_cumprod
from nodes.sd.tokenizer import clip_bpe_tokenizer
from nodes.sd.types import CondItem
from nodes.sd.x4_upscale import augment, noise_level

PROMPT = "a red circle on a blue background"
TOLERANCE = 1e-4


def tiny_union(modules: tm.TinyModules, seed: int) -> ControlNetUnionModel:
    unet = modules.unet.config
    union = ControlNetUnionModel(
        in_channels=4, block_out_channels=tuple(unet.block_out_channels), layers_per_block=unet.layers_per_block,
        down_block_types=tuple(unet.down_block_types), cross_attention_dim=unet.cross_attention_dim,
        attention_head_dim=unet.attention_head_dim, norm_num_groups=32, conditioning_embedding_out_channels=(16, 16, 32, 32),
        num_control_type=8, num_trans_channel=32, num_trans_head=8, num_trans_layer=1, num_proj_channel=32,
        addition_time_embed_dim=16)
    tm.randomize(union, seed)
    with torch.no_grad():
        for name, param in union.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                param.mul_(0.3)
    return union


def control_lora_file(modules: tm.TinyModules, seed: int, rank: int = 2) -> tuple[dict[str, torch.Tensor], ControlNetModel]:
    """A control-lora file for `modules.unet` and the ControlNet it stands for: the encoder's weights are the
    UNet's plus up @ down, the rest (hint encoder, zero convs, biases, norms) stored in full."""
    expected = tm.tiny_controlnet(modules, seed=seed)
    copied = ControlNetModel.from_unet(modules.unet, conditioning_embedding_out_channels=(16, 16, 32, 32))
    generator = torch.Generator().manual_seed(seed + 100)
    state, base = expected.state_dict(), copied.state_dict()
    rules = {rule.target: rule.source for rule in controlnet_rules(list(state), expected.config)}
    tensors: dict[str, torch.Tensor] = {"lora_controlnet": torch.tensor([])}
    for key, value in state.items():
        own = key.startswith(("controlnet_cond_embedding", "controlnet_down_blocks", "controlnet_mid_block"))
        if own or value.dim() < 2:
            tensors[rules[key]] = value.contiguous()
            continue
        up = torch.randn(value.shape[0], rank, generator=generator) * 0.05
        down = torch.randn(rank, *value.shape[1:], generator=generator) * 0.05
        stem = rules[key].removesuffix(".weight")
        tensors[f"{stem}.up"], tensors[f"{stem}.down"] = up.contiguous(), down.contiguous()
        state[key] = base[key] + (up @ down.flatten(1)).reshape(value.shape)
    expected.load_state_dict(state)
    return tensors, expected


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("extras")
    models = root / "models"
    modules = tm.sd1_modules(seed=3, text_hidden=64)
    tm.write_checkpoint(modules, models / "checkpoints" / "tiny.safetensors")
    folder = models / "controlnet"
    folder.mkdir(parents=True)
    union = tiny_union(modules, 21)
    save_file({k: v.contiguous() for k, v in union.state_dict().items()}, str(folder / "union.safetensors"))
    lora_tensors, lora_expected = control_lora_file(modules, 22)
    save_file(lora_tensors, str(folder / "control_lora.safetensors"))
    registry = default_registry()
    engine = tm.engine_at(root, models_dir=models, registry=registry)
    generator = torch.Generator().manual_seed(11)
    blocks = torch.rand(8, 8, 3, generator=generator).repeat_interleave(8, 0).repeat_interleave(8, 1)
    (engine.env.input_dir / "hint.png").write_bytes(image_to_png_bytes(blocks))
    yield engine, modules, union, lora_expected
    torch.set_num_threads(threads)


def graph(control: str | None, *, union_type: str | None = None, strength: float = 0.8) -> dict:
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }
    positive, negative = ["6", 0], ["7", 0]
    if control is not None:
        prompt["20"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": control}}
        net = ["20", 0]
        if union_type is not None:
            prompt["23"] = {"class_type": "SetUnionControlNetType", "inputs": {"control_net": net, "type": union_type}}
            net = ["23", 0]
        prompt["21"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
        prompt["22"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": positive, "negative": negative, "control_net": net, "image": ["21", 0],
            "strength": strength, "start_percent": 0.0, "end_percent": 1.0}}
        positive, negative = ["22", 0], ["22", 1]
    prompt["3"] = {"class_type": "KSampler", "inputs": {
        "seed": 42, "steps": 10, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["4", 0], "positive": positive, "negative": negative, "latent_image": ["5", 0]}}
    return prompt


def ours(engine, prompt: dict) -> torch.Tensor:
    return engine.run(from_api(prompt), outputs=["8"]).values["8"][0]


# -- union ControlNets ---------------------------------------------------------------------------------------------


def test_union_loads_exactly_and_the_type_reaches_the_model(setup):
    engine, modules, union, _ = setup
    handle = load_controlnet(engine.env.models.folder_dirs("controlnet")[0] / "union.safetensors")
    assert handle.kind == "controlnet_union"
    loaded = handle.model
    for name in ("num_control_type", "num_trans_channel", "num_trans_layer", "num_proj_channel",
                 "addition_time_embed_dim", "conditioning_embedding_out_channels", "block_out_channels"):
        got, want_value = loaded.config[name], union.config[name]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == (
            list(want_value) if isinstance(want_value, (list, tuple)) else want_value), name
    state, want = loaded.state_dict(), union.state_dict()
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want)

    (canny,) = SetUnionControlNetType.execute(None, control_net=handle, type="canny/lineart/anime_lineart/mlsd")
    (depth,) = SetUnionControlNetType.execute(None, control_net=handle, type="depth")
    (auto,) = SetUnionControlNetType.execute(None, control_net=handle, type="auto")
    assert canny.option("control_type") == (3,) and depth.option("control_type") == (1,)
    assert auto.option("control_type") == () and handle.option("control_type") is None  # the input is unchanged
    assert canny.model is handle.model  # a new handle on the same model

    model = EpsDenoiser(modules.unet, scaled_linear_alphas_cumprod())
    generator = torch.Generator().manual_seed(4)
    x, sigma = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([2.5, 2.5])
    embeds = torch.randn(2, 77, 64, generator=generator)
    hint = torch.rand(1, 3, 64, 64, generator=generator)
    kwargs = {"encoder_hidden_states": embeds}
    found = ControlApplied(canny, hint, strength=0.7).residuals(model, x, sigma, kwargs, 1)
    one_hot = torch.zeros(2, 8)
    one_hot[:, 3] = 1.0
    with torch.no_grad():
        down, mid = union(x / (sigma.reshape(-1, 1, 1, 1) ** 2 + 1) ** 0.5, model.timestep(sigma),
                          encoder_hidden_states=embeds, controlnet_cond=[hint.expand(2, -1, -1, -1)],
                          control_type=one_hot, control_type_idx=[3], conditioning_scale=[0.7], return_dict=False)
    for got, ref in zip(found["down_block_additional_residuals"] + found["mid_block_additional_residual"], [*down, mid]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    other = ControlApplied(depth, hint, strength=0.7).residuals(model, x, sigma, kwargs, 1)
    assert (other["mid_block_additional_residual"][0] - found["mid_block_additional_residual"][0]).abs().max() > 1e-4

    # "auto" (no type), as ComfyUI: a zero kind vector and the hint's embedding added after conv_in, no task mixing.
    # That is a plain ControlNet with the union's shared weights and the constant kind embedding in its time bias.
    shared = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim",
              "attention_head_dim", "norm_num_groups", "conditioning_embedding_out_channels")
    plain = ControlNetModel(**{name: union.config[name] for name in shared})
    plain.load_state_dict({k: v for k, v in union.state_dict().items() if k in plain.state_dict()})
    with torch.no_grad():
        kind = union.control_add_embedding(union.control_type_proj(torch.zeros(8)).reshape(1, -1))
        plain.time_embedding.linear_2.bias += kind[0]
        down, mid = plain(x / (sigma.reshape(-1, 1, 1, 1) ** 2 + 1) ** 0.5, model.timestep(sigma),
                          encoder_hidden_states=embeds, controlnet_cond=hint.expand(2, -1, -1, -1),
                          conditioning_scale=0.7, return_dict=False)
        found = ControlApplied(auto, hint, strength=0.7).residuals(model, x, sigma, kwargs, 1)
    for got, ref in zip(found["down_block_additional_residuals"] + found["mid_block_additional_residual"], [*down, mid]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_union_steers_the_graph(setup):
    engine, *_ = setup
    plain = ours(engine, graph(None))
    canny = ours(engine, graph("union.safetensors", union_type="canny/lineart/anime_lineart/mlsd"))
    depth = ours(engine, graph("union.safetensors", union_type="depth"))
    assert (canny - plain).abs().max() > 0.02 and (canny - depth).abs().max() > 1e-4
    auto = ours(engine, graph("union.safetensors", union_type="auto"))
    assert torch.equal(ours(engine, graph("union.safetensors")), auto)  # no type set is "auto", as in ComfyUI
    assert (auto - plain).abs().max() > 0.02 and (auto - canny).abs().max() > 1e-4


# -- control-lora ----------------------------------------------------------------------------------------------------


def test_control_lora_is_the_unet_plus_its_deltas(setup):
    engine, modules, _, expected = setup
    from nodes.sd.loading.files import read_weights

    handle = load_controlnet(engine.env.models.folder_dirs("controlnet")[0] / "control_lora.safetensors")
    assert handle.kind == "control_lora"
    built = build_control_lora(handle.model, modules.unet)
    state, want = built.state_dict(), expected.state_dict()
    assert state.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(state[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    tensors, _ = read_weights(engine.env.models.folder_dirs("controlnet")[0] / "control_lora.safetensors")
    bad = dict(tensors)
    bad["input_blocks.1.0.in_layers.2.up"] = torch.zeros(7, 2)  # a delta for a layer of another width
    with pytest.raises(ValueError, match="another base model"):
        build_control_lora(control_lora_weights(bad), modules.unet)


def test_control_lora_image_equals_diffusers_controlnet_pipeline(setup):
    from PIL import Image

    engine, modules, _, expected = setup
    image = ours(engine, graph("control_lora.safetensors"))
    scheduler = EulerDiscreteScheduler(**tm.SD_SCHEDULE, timestep_spacing="linspace")
    scheduler.set_timesteps(10)
    sigma_max = float(scheduler.sigmas.max())
    noise = prepare_noise(torch.zeros(1, 4, 8, 8), 42, [0]) * (1 + sigma_max**2) ** 0.5 / float(scheduler.init_noise_sigma)
    pipe = StableDiffusionControlNetPipeline(
        vae=modules.vae, text_encoder=modules.encoders[0], tokenizer=clip_bpe_tokenizer(), unet=modules.unet,
        controlnet=expected, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    with torch.no_grad():
        reference = pipe(PROMPT, Image.open(engine.env.input_dir / "hint.png").convert("RGB"), negative_prompt="",
                         num_inference_steps=10, guidance_scale=5.0, height=64, width=64, latents=noise,
                         output_type="pt", controlnet_conditioning_scale=0.8).images
    diff = (image.movedim(-1, 1) - reference).abs().max().item()
    effect = (image - ours(engine, graph(None))).abs().max().item()
    print(f"control-lora: max abs pixel difference {diff:.2e} (control changes pixels by {effect:.2f})")
    assert diff < TOLERANCE and effect > 0.05


# -- SD_4XUpscale_Conditioning -----------------------------------------------------------------------------------


def text(value: float) -> CondItem:
    return CondItem(torch.full((1, 77, 8), float(value)))


def test_x4_conditioning_image_and_latent_follow_comfyuis_formula():
    images = torch.rand(2, 20, 28, 3, generator=torch.Generator().manual_seed(0))
    positive, negative, latent = SD_4XUpscale_Conditioning.execute(
        None, images=images, positive=(text(1),), negative=(text(2), text(3)), scale_ratio=2.0, noise_augmentation=0.2)
    # target 56 x 40; the low-res image at a quarter: 14 x 10 (same aspect: no crop), bilinear, in -1..1
    want = F.interpolate(images.movedim(-1, 1) * 2 - 1, size=(10, 14), mode="bilinear", align_corners=False)
    for item in (*positive, *negative):
        torch.testing.assert_close(item.concat.latent, want)
        assert item.extras["upscale_x4"].noise_augmentation == 0.2
    assert latent.samples.shape == (2, 4, 10, 14) and latent.samples.eq(0).all()
    _, _, default = SD_4XUpscale_Conditioning.execute(None, images=images, positive=(text(1),), negative=(text(2),),
                                                      scale_ratio=4.0, noise_augmentation=0.0)
    assert default.samples.shape == (2, 4, 20, 28)


def test_x4_noise_augmentation_equals_diffusers_low_res_scheduler():
    low_res = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")
    generator = torch.Generator().manual_seed(1)
    image, noise = torch.rand(1, 3, 6, 6, generator=generator) * 2 - 1, torch.randn(1, 3, 6, 6, generator=generator)
    for augmentation in (0.0, 0.05, 0.5, 1.0):
        level = noise_level(augmentation)
        assert level == round(350 * augmentation)
        want = low_res.add_noise(image, noise, torch.tensor([level]))
        torch.testing.assert_close(augment(image, level, noise), want, rtol=1e-5, atol=1e-5)  # float64 vs float32 schedule


def test_x4_unet_gets_the_low_res_image_and_noise_level_as_the_upscale_pipeline_does():
    unet = tm.randomize(UNet2DConditionModel(
        sample_size=8, in_channels=7, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=8, num_class_embeds=1000), 5)
    model = EpsDenoiser(unet, scaled_linear_alphas_cumprod())
    images = torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(2))
    results = {}
    for augmentation in (0.0, 0.3):
        positive, _, latent = SD_4XUpscale_Conditioning.execute(
            None, images=images, positive=(text(0.5),), negative=(text(0.1),), scale_ratio=4.0,
            noise_augmentation=augmentation)
        x = torch.randn(latent.samples.shape, generator=torch.Generator().manual_seed(3))
        sigma = torch.tensor([4.0])
        with torch.no_grad():
            (got,) = calc_cond_batch(model, [positive], x, sigma)
            low_res = images.movedim(-1, 1) * 2 - 1
            level = noise_level(augmentation)
            if augmentation > 0:
                noise = torch.randn(low_res.shape, generator=torch.Generator().manual_seed(0))
                low_res = augment(low_res, level, noise)
            scaled = torch.cat([x / (sigma**2 + 1) ** 0.5, low_res], dim=1)
            eps = unet(scaled, model.timestep(sigma), encoder_hidden_states=positive[0].embeds,
                       class_labels=torch.tensor([level])).sample
        torch.testing.assert_close(got, x - sigma * eps, rtol=1e-5, atol=1e-5)
        results[augmentation] = got
    assert (results[0.0] - results[0.3]).abs().max() > 1e-4  # the level and the noise reach the UNet
