"""A tiny random x4 upscaler (stable-diffusion-x4-upscaler's architecture) in its real file layouts.

The single file is written as `x4-upscaler-ema.safetensors` is: LDM keys (`model.diffusion_model.label_emb.weight`
for the noise-level embedding, OpenCLIP text tower under `cond_stage_model.model.`, a three-level VAE under
`first_stage_model.`, the augmentation schedule's buffers under `low_scale_model.`) and no nodegraph metadata, so
everything the loader needs must come from the shapes and the x4 rules. Channel counts are multiples of 32.

Architecture, scaled down from the real one (levels [256, 512, 512, 1024], only_cross_attention
[T, T, T, F], context 1024, 8 heads): levels [32, 32, 64], the first without attention, the second with
self-attention disabled (its width 32 differs from the context's 64, as 512 differs from 1024), the third with
self-attention (width 64 = context 64, as 1024 = 1024), 8 heads; OpenCLIP text width 64 (one 64-wide head);
VAE levels [32, 32, 64] (4x down-sampling), latent scale 0.08333.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from nodes.sd.x4_upscale import low_res_alphas_cumprod
from tiny_models import TinyModules, randomize, tiny_text_encoder, write_checkpoint

X4_DIFFUSERS_SCHEDULE = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear",
                             prediction_type="v_prediction", num_train_timesteps=1000)
"""The x4 upscaler's scheduler config as its diffusers folder states it."""


def x4_unet(seed: int = 0) -> UNet2DConditionModel:
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=7, out_channels=4, block_out_channels=(32, 32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        only_cross_attention=(True, True, False), cross_attention_dim=64, attention_head_dim=8,
        use_linear_projection=True, num_class_embeds=1000, norm_num_groups=32,
    )
    return randomize(unet, seed)


def x4_vae(seed: int = 0) -> AutoencoderKL:
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=4, norm_num_groups=32,
        sample_size=32, scaling_factor=0.08333,
    )
    return randomize(vae, seed)


def x4_modules(seed: int = 0) -> TinyModules:
    encoder = tiny_text_encoder(seed + 1, hidden=64, heads=1, open_clip=True)
    generator = torch.Generator().manual_seed(seed + 3)
    alphas = low_res_alphas_cumprod().float()
    extra = {
        "cond_stage_model.model.text_projection": torch.randn(64, 64, generator=generator),
        "cond_stage_model.model.logit_scale": torch.tensor(4.6),
        "betas": torch.linspace(1e-4**0.5, 0.02**0.5, 1000) ** 2,
        "alphas_cumprod": alphas,
        "low_scale_model.betas": torch.linspace(1e-4**0.5, 0.02**0.5, 1000) ** 2,
        "low_scale_model.alphas_cumprod": alphas.clone(),
        "low_scale_model.sqrt_alphas_cumprod": alphas.sqrt(),
        "model_ema.decay": torch.tensor(0.9999),
    }
    return TinyModules("sd2", x4_unet(seed), x4_vae(seed + 2), [encoder], "v_prediction", extra)


def write_x4_checkpoint(modules: TinyModules, path: Path) -> Path:
    """The single file in the real LDM layout, without metadata and without a `v_pred` marker (the real one has none)."""
    epsilon = TinyModules(modules.family, modules.unet, modules.vae, modules.encoders, "epsilon", modules.extra_tensors)
    return write_checkpoint(epsilon, path, with_metadata=False)


def write_x4_diffusers_folder(modules: TinyModules, root: Path) -> Path:
    """A StableDiffusionUpscalePipeline folder, as diffusers lays it out, written offline."""
    root.mkdir(parents=True, exist_ok=True)
    modules.unet.save_pretrained(root / "unet")
    modules.vae.save_pretrained(root / "vae")
    modules.encoders[0].save_pretrained(root / "text_encoder")
    schedulers = {
        "scheduler": {"_class_name": "DDIMScheduler", **X4_DIFFUSERS_SCHEDULE, "clip_sample": False,
                      "set_alpha_to_one": False, "steps_offset": 1},
        "low_res_scheduler": {"_class_name": "DDPMScheduler", **X4_DIFFUSERS_SCHEDULE, "prediction_type": "epsilon",
                              "clip_sample": True, "variance_type": "fixed_small"},
    }
    for name, config in schedulers.items():
        (root / name).mkdir(exist_ok=True)
        (root / name / "scheduler_config.json").write_text(json.dumps(config))
    index = {"_class_name": "StableDiffusionUpscalePipeline", "max_noise_level": 350,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDIMScheduler"], "low_res_scheduler": ["diffusers", "DDPMScheduler"]}
    (root / "model_index.json").write_text(json.dumps(index))
    return root
