"""T2I-Adapter through ControlNetLoader / ControlNetApplyAdvanced: every layout loads its source weights, and
images equal diffusers' StableDiffusionAdapterPipeline on the same tiny random SD1 model.

Same comparison set-up as tests/test_controlnet.py (Euler, linspace spacing, 10 steps, pre-scaled noise);
tolerance: max abs pixel difference < 1e-4 (0..1 images, fp32).
"""

from __future__ import annotations

import numpy as np
import pytest
import tiny_models as tm
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionAdapterPipeline, T2IAdapter
from safetensors.torch import save_file

from nodegraph.formats.api import from_api
from nodegraph.registry import default_registry
from nodes import controlnet_nodes
from nodes.image import image_to_png_bytes
from nodes.sd.controlnet import load_controlnet
from nodes.sd.ksampler import prepare_noise
from nodes.sd.tokenizer import clip_bpe_tokenizer

TOLERANCE = 1e-4
PROMPT = "a red circle on a blue background"
MIN_IOU, MIN_GAIN = 0.65, 0.25
"""The shipped adapter's bar: measured mean IoU 0.76 with it, 0.33 without, over 24 images (model card)."""


def tiny_adapter(adapter_type: str, seed: int, *, in_channels: int = 3, channels=(32, 64), blocks: int = 2,
                 scale: float = 0.5) -> T2IAdapter:
    factor = 16 if adapter_type == "full_adapter_xl" else 8
    adapter = T2IAdapter(in_channels=in_channels, channels=list(channels), num_res_blocks=blocks,
                         downscale_factor=factor, adapter_type=adapter_type)
    tm.randomize(adapter, seed)
    with torch.no_grad():
        for param in adapter.parameters():
            param.mul_(scale)
    return adapter


def original_layout(adapter: T2IAdapter, *, prefix: str = "") -> dict[str, torch.Tensor]:
    """TencentARC's key layout, written independently of the loader: full adapters number their resnet blocks
    flat (`body.{level * blocks + j}`, in_conv on a level's first block); light ones nest `body.{level}.body.{j}`."""
    blocks = adapter.config.num_res_blocks
    light = adapter.config.adapter_type == "light_adapter"
    out = {}
    for key, value in adapter.state_dict().items():
        parts = key.removeprefix("adapter.").split(".")
        if parts[0] == "body":
            level = int(parts[1])
            if light:
                parts = ["body", str(level), *(["body", *parts[3:]] if parts[2] == "resnets" else parts[2:])]
            elif parts[2] == "resnets":
                parts = ["body", str(level * blocks + int(parts[3])), *parts[4:]]
            else:  # in_conv
                parts = ["body", str(level * blocks), *parts[2:]]
        out[prefix + ".".join(parts)] = value.contiguous()
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("t2i")
    models = root / "models"
    modules = tm.sd1_modules(seed=3, text_hidden=64)
    tm.write_checkpoint(modules, models / "checkpoints" / "tiny.safetensors")
    folder = models / "controlnet"
    folder.mkdir(parents=True)
    adapters = {"full": tiny_adapter("full_adapter", 7), "light": tiny_adapter("light_adapter", 8, blocks=3),
                "xl": tiny_adapter("full_adapter_xl", 9), "grey": tiny_adapter("full_adapter", 10, in_channels=1)}
    save_file(original_layout(adapters["full"]), str(folder / "full_original.safetensors"))
    save_file(original_layout(adapters["full"], prefix="adapter."), str(folder / "full_prefixed.safetensors"))
    save_file({k: v.contiguous() for k, v in adapters["full"].state_dict().items()}, str(folder / "full_diffusers.safetensors"))
    save_file(original_layout(adapters["light"]), str(folder / "light_original.safetensors"))
    save_file({k: v.contiguous() for k, v in adapters["light"].state_dict().items()}, str(folder / "light_diffusers.safetensors"))
    save_file(original_layout(adapters["xl"]), str(folder / "xl_original.safetensors"))
    adapters["xl"].save_pretrained(folder / "xl_folder")
    save_file(original_layout(adapters["grey"]), str(folder / "grey_original.safetensors"))
    registry = default_registry()
    for node in controlnet_nodes.NODES:
        if node.schema.type_id not in registry:
            registry.register(node)
    engine = tm.engine_at(root, models_dir=models, registry=registry)
    generator = torch.Generator().manual_seed(11)
    blocks = torch.rand(8, 8, 3, generator=generator).repeat_interleave(8, 0).repeat_interleave(8, 1)
    (engine.env.input_dir / "hint.png").write_bytes(image_to_png_bytes(blocks))
    yield engine, modules, adapters
    torch.set_num_threads(threads)


LAYOUTS = [("full_original.safetensors", "full"), ("full_prefixed.safetensors", "full"),
           ("full_diffusers.safetensors", "full"), ("light_original.safetensors", "light"),
           ("light_diffusers.safetensors", "light"), ("xl_original.safetensors", "xl"), ("xl_folder", "xl"),
           ("grey_original.safetensors", "grey")]


@pytest.mark.parametrize("name,source", LAYOUTS, ids=[name for name, _ in LAYOUTS])
def test_each_layout_loads_the_source_adapter(setup, name, source):
    engine, _, adapters = setup
    handle = load_controlnet(engine.env.models.folder_dirs("controlnet")[0] / name)
    assert handle.kind == "t2i_adapter"
    loaded, expected = handle.model, adapters[source]
    assert dict(loaded.config)["adapter_type"] == expected.config.adapter_type
    assert loaded.config.in_channels == expected.config.in_channels
    assert loaded.downscale_factor == expected.downscale_factor
    state, want = loaded.state_dict(), expected.state_dict()
    assert state.keys() == want.keys()
    assert all(torch.equal(state[key], want[key]) for key in want)
    hint = torch.rand(1, expected.config.in_channels, 64, 64)
    for got, ref in zip(loaded(hint), expected(hint)):
        assert torch.equal(got, ref)


def test_learned_downsampling_is_refused_by_name(setup, tmp_path):
    tensors = original_layout(setup[2]["full"])
    tensors["body.2.down_opt.op.weight"] = torch.zeros(64, 64, 3, 3)
    save_file(tensors, str(tmp_path / "down_opt.safetensors"))
    with pytest.raises(ValueError, match="down_opt"):
        load_controlnet(tmp_path / "down_opt.safetensors")


def graph(adapter: str | None, strength: float = 0.8, start: float = 0.0, end: float = 1.0, steps: int = 10) -> dict:
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }
    positive, negative = ["6", 0], ["7", 0]
    if adapter is not None:
        prompt["20"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": adapter}}
        prompt["21"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
        prompt["22"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": positive, "negative": negative, "control_net": ["20", 0], "image": ["21", 0],
            "strength": strength, "start_percent": start, "end_percent": end}}
        positive, negative = ["22", 0], ["22", 1]
    prompt["3"] = {"class_type": "KSampler", "inputs": {
        "seed": 42, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        "model": ["4", 0], "positive": positive, "negative": negative, "latent_image": ["5", 0]}}
    return prompt


def ours(engine, prompt: dict) -> torch.Tensor:
    return engine.run(from_api(prompt), outputs=["8"]).values["8"][0]


@pytest.mark.parametrize("name,source", [("full_original.safetensors", "full"), ("light_diffusers.safetensors", "light"),
                                         ("grey_original.safetensors", "grey")], ids=["full", "light", "grey"])
def test_image_equals_diffusers_adapter_pipeline(setup, name, source):
    from PIL import Image

    engine, modules, adapters = setup
    image = ours(engine, graph(name))
    scheduler = EulerDiscreteScheduler(**tm.SD_SCHEDULE, timestep_spacing="linspace")
    scheduler.set_timesteps(10)
    sigma_max = float(scheduler.sigmas.max())
    noise = prepare_noise(torch.zeros(1, 4, 8, 8), 42, [0]) * (1 + sigma_max**2) ** 0.5 / float(scheduler.init_noise_sigma)
    hint = Image.open(engine.env.input_dir / "hint.png").convert("RGB")
    if source == "grey":  # ComfyUI feeds a one-channel adapter the channel mean; diffusers takes the image given
        rgb = torch.from_numpy(np.asarray(hint, dtype=np.float32) / 255.0)
        hint = rgb.mean(-1)[None, None]
    pipe = StableDiffusionAdapterPipeline(
        vae=modules.vae, text_encoder=modules.encoders[0], tokenizer=clip_bpe_tokenizer(), unet=modules.unet,
        adapter=adapters[source], scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    with torch.no_grad():
        expected = pipe(PROMPT, hint, negative_prompt="", num_inference_steps=10, guidance_scale=5.0, height=64,
                        width=64, latents=noise, output_type="pt", adapter_conditioning_scale=0.8).images
    expected = torch.as_tensor(expected)  # this pipeline returns [B, H, W, C] numpy whatever output_type says
    diff = (image - expected).abs().max().item()
    effect = (image - ours(engine, graph(None))).abs().max().item()
    print(f"t2i adapter {source}: max abs pixel difference {diff:.2e} (adapter changes pixels by {effect:.2f})")
    assert diff < TOLERANCE
    assert effect > 0.02  # the adapter really steers the image


def test_strength_zero_is_no_control_and_percents_matter(setup):
    engine, _, _ = setup
    name = "full_diffusers.safetensors"
    plain = ours(engine, graph(None, steps=6))
    assert torch.equal(ours(engine, graph(name, strength=0.0, steps=6)), plain)
    full = ours(engine, graph(name, steps=6))
    first_half = ours(engine, graph(name, end=0.5, steps=6))
    second_half = ours(engine, graph(name, start=0.5, steps=6))
    for one, other in ((first_half, full), (second_half, full), (first_half, second_half), (full, plain)):
        assert (one - other).abs().max() > 1e-4  # late steps move little on a random tiny model
    weaker = ours(engine, graph(name, strength=0.3, steps=6))
    assert (weaker - plain).abs().mean() < (full - plain).abs().mean()


def test_chained_controls_sum_per_kind(setup):
    """An adapter chained onto an adapter sums features (two at 0.4 = one at 0.8); chained onto a ControlNet, the
    UNet gets both the ControlNet's residuals and the adapter's features."""
    from nodes.sd.controlnet import ControlApplied
    from nodes.sd.denoisers import EpsDenoiser
    from nodes.sd.schedules import scaled_linear_alphas_cumprod

    engine, modules, _ = setup
    adapter = load_controlnet(engine.env.models.folder_dirs("controlnet")[0] / "full_diffusers.safetensors")
    model = EpsDenoiser(modules.unet, scaled_linear_alphas_cumprod())
    generator = torch.Generator().manual_seed(6)
    x, sigma = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([3.0, 3.0])
    hint = torch.rand(1, 3, 64, 64, generator=generator)
    kwargs = {"encoder_hidden_states": torch.randn(2, 77, 64, generator=generator)}
    twice = ControlApplied(adapter, hint, 0.4, previous=ControlApplied(adapter, hint, 0.4))
    once = ControlApplied(adapter, hint, 0.8)
    with torch.no_grad():
        for a, b in zip(twice.unet_kwargs(model, x, sigma, kwargs, 1)["down_intrablock_additional_residuals"],
                        once.unet_kwargs(model, x, sigma, kwargs, 1)["down_intrablock_additional_residuals"]):
            torch.testing.assert_close(a, b)
        controlnet = ControlApplied(load_controlnet_handle(tm.tiny_controlnet(modules, seed=4)), hint, 0.5)
        both = ControlApplied(adapter, hint, 0.8, previous=controlnet).unet_kwargs(model, x, sigma, kwargs, 1)
    assert set(both) == {"down_block_additional_residuals", "mid_block_additional_residual",
                         "down_intrablock_additional_residuals"}
    assert len(both["down_intrablock_additional_residuals"]) == 2 and both["mid_block_additional_residual"].shape[0] == 2


def load_controlnet_handle(module: torch.nn.Module):
    from nodes.sd.controlnet import ControlNetHandle

    return ControlNetHandle(module)


# -- the embedded model's silhouette adapter ------------------------------------------------------------------------


def _shipped() -> bool:
    from nodes.models.embedded import EMBEDDED_PATH, default_adapter_path

    return EMBEDDED_PATH.is_file() and default_adapter_path("t2i_adapter").is_file()


@pytest.mark.skipif(not _shipped(), reason="the embedded silhouette adapter is not built yet")
def test_shipped_adapter_puts_the_shape_on_its_silhouette(tmp_path):
    """Measured with scripts/train_t2i_adapter.py --evaluate (see the model card): the drawn shape overlaps the
    silhouette clearly more with the adapter than without (strength 0)."""
    from nodes.models.embedded import ADAPTERS, default_adapter_path
    from training import adapter_eval as ae
    from training.t2i_adapter import silhouette_iou

    assert default_adapter_path("t2i_adapter").stat().st_size < 3 * 2**20
    (tmp_path / "input").mkdir()
    engine = tm.engine_at(tmp_path, input_dir=tmp_path / "input")
    assert ADAPTERS["t2i_adapter"][1] in engine.env.models.list("controlnet")
    assert load_controlnet(default_adapter_path("t2i_adapter")).kind == "t2i_adapter"
    spec = ae.control_specs(2)[1]  # the second evaluation shape (seed 1), 4 images: one shape keeps the test short
    on = silhouette_iou(engine, spec, engine.env.input_dir, 1)
    off = silhouette_iou(engine, spec, engine.env.input_dir, 1, strength=0.0)
    print(f"IoU with the silhouette: strength 1 {np.mean(on):.2f}, strength 0 {np.mean(off):.2f}")
    assert np.mean(on) >= MIN_IOU
    assert np.mean(on) >= np.mean(off) + MIN_GAIN
