"""Tiny random SD1 / SD2 / SDXL models written in the real checkpoint layouts, for loader and text tests.

Every parameter (norms included) gets a seeded random value, so a swapped or mis-mapped key changes the
outputs and a round trip through a file can be compared exactly. Channel counts are multiples of 32
(GroupNorm 32); the VAE has four levels so it downsamples by 8 like SD's; the text encoders keep CLIP's
full 49,408-token vocabulary so the real tokenizer can feed them.

Builders are deterministic: `sd1_modules(seed)` rebuilds exactly the modules `make_sd1_checkpoint(tmp_path,
seed=seed)` wrote, so tests compare a loaded file with its source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from nodes.sd.loading.configs import METADATA_KEY
from nodes.sd.loading.export import export_config, ldm_state_dict
from nodes.sd.types import Family, Prediction


@dataclass
class TinyModules:
    """The source modules a tiny checkpoint was written from, for comparing what the loader returns."""

    family: Family
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    encoders: list[torch.nn.Module]
    prediction: Prediction = "epsilon"
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    """Keys real checkpoints carry that the loader must ignore (schedule buffers, EMA, OpenCLIP leftovers)."""


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random values for every parameter: weights ~ N(0, 1/fan_in), 1-D tensors ~ 1 + N(0, 0.1) or N(0, 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.dim() >= 2:
                param.copy_(noise / param[0].numel() ** 0.5)
            elif name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)
    return module.eval().requires_grad_(False)


def tiny_vae(seed: int = 0, scaling_factor: float = 0.18215) -> AutoencoderKL:
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=scaling_factor,
    )
    return randomize(vae, seed)


def tiny_text_encoder(
    seed: int, *, hidden: int, heads: int, open_clip: bool, projection_dim: int | None = None
) -> torch.nn.Module:
    """A 2-layer CLIP text encoder; OpenCLIP towers use GELU, OpenAI's QuickGELU."""
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act="gelu" if open_clip else "quick_gelu",
        projection_dim=projection_dim or hidden,
        bos_token_id=49406,
        eos_token_id=49407,
    )
    cls = CLIPTextModelWithProjection if projection_dim else CLIPTextModel
    return randomize(cls(config), seed)


def _unet(seed: int, **config: Any) -> UNet2DConditionModel:
    defaults: dict[str, Any] = {"sample_size": 8, "block_out_channels": (32, 64), "layers_per_block": 1, "norm_num_groups": 32}
    return randomize(UNet2DConditionModel(**{**defaults, **config}), seed)


def sd1_modules(seed: int = 0, *, text_hidden: int = 32) -> TinyModules:
    """SD1: conv attention projections, 8 UNet heads (SD1's rule: no metadata needed), CLIP-L layout."""
    unet = _unet(
        seed,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_hidden,
        attention_head_dim=8,
    )
    # 64-wide heads (CLIP's rule) when the width allows, so such a model needs no metadata at all.
    heads = text_hidden // 64 if text_hidden % 64 == 0 else 2
    encoder = tiny_text_encoder(seed + 1, hidden=text_hidden, heads=heads, open_clip=False)
    extra = {
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
        "alphas_cumprod": torch.linspace(0.99, 0.01, 1000),
        "model_ema.decay": torch.tensor(0.9999),
    }
    return TinyModules("sd1", unet, tiny_vae(seed + 2), [encoder], extra_tensors=extra)


def sd2_modules(seed: int = 0, *, v_prediction: bool = True) -> TinyModules:
    """SD2: linear projections, 2/4 heads (metadata needed), OpenCLIP layout with its unused projection."""
    unet = _unet(
        seed,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
    )
    encoder = tiny_text_encoder(seed + 1, hidden=32, heads=2, open_clip=True)
    generator = torch.Generator().manual_seed(seed + 3)
    extra = {
        "cond_stage_model.model.text_projection": torch.randn(32, 32, generator=generator),
        "cond_stage_model.model.logit_scale": torch.tensor(4.6),
    }
    prediction: Prediction = "v_prediction" if v_prediction else "epsilon"
    return TinyModules("sd2", unet, tiny_vae(seed + 2), [encoder], prediction, extra)


def sdxl_modules(seed: int = 0) -> TinyModules:
    """SDXL: CLIP-L (32) + OpenCLIP-bigG (64, projected) -> cross-attention 96, text_time added embedding."""
    unet = _unet(
        seed,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=96,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=64 + 6 * 8,
    )
    clip_l = tiny_text_encoder(seed + 1, hidden=32, heads=2, open_clip=False)
    clip_g = tiny_text_encoder(seed + 3, hidden=64, heads=4, open_clip=True, projection_dim=64)
    extra = {"conditioner.embedders.1.model.logit_scale": torch.tensor(4.6)}
    return TinyModules("sdxl", unet, tiny_vae(seed + 2, scaling_factor=0.13025), [clip_l, clip_g], extra_tensors=extra)


def write_checkpoint(modules: TinyModules, path: Path, *, with_metadata: bool = True) -> Path:
    """Write `modules` as one original-layout `.safetensors` file (with extra real-world keys)."""
    tensors = ldm_state_dict(modules.family, modules.unet, modules.vae, modules.encoders)
    tensors.update(modules.extra_tensors)
    metadata = None
    if with_metadata:
        config = export_config(modules.family, modules.unet, modules.vae, modules.encoders, prediction=modules.prediction)
        metadata = {METADATA_KEY: json.dumps(config)}
    if modules.prediction == "v_prediction":
        tensors["v_pred"] = torch.zeros(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def make_sd1_checkpoint(tmp_path: Path, *, seed: int = 0) -> Path:
    return write_checkpoint(sd1_modules(seed), Path(tmp_path) / "tiny_sd1.safetensors")


def make_sd2_checkpoint(tmp_path: Path, *, seed: int = 0, v_prediction: bool = True) -> Path:
    return write_checkpoint(sd2_modules(seed, v_prediction=v_prediction), Path(tmp_path) / "tiny_sd2.safetensors")


def make_sdxl_checkpoint(tmp_path: Path, *, seed: int = 0) -> Path:
    return write_checkpoint(sdxl_modules(seed), Path(tmp_path) / "tiny_sdxl.safetensors")


def write_diffusers_folder(modules: TinyModules, root: Path) -> Path:
    """A diffusers pipeline folder (model_index.json, component folders, scheduler config), written offline."""
    root.mkdir(parents=True, exist_ok=True)
    modules.unet.save_pretrained(root / "unet")
    modules.vae.save_pretrained(root / "vae")
    names = ["text_encoder", "text_encoder_2"][: len(modules.encoders)]
    for name, encoder in zip(names, modules.encoders):
        encoder.save_pretrained(root / name)
    (root / "scheduler").mkdir(exist_ok=True)
    scheduler = {
        "_class_name": "EulerDiscreteScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": modules.prediction,
    }
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    pipeline = "StableDiffusionXLPipeline" if modules.family == "sdxl" else "StableDiffusionPipeline"
    index = {"_class_name": pipeline, "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    for name in names:
        index[name] = ["transformers", type(modules.encoders[names.index(name)]).__name__]
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def make_diffusers_folder(tmp_path: Path, *, family: Family = "sd1", seed: int = 0) -> Path:
    builder = {"sd1": sd1_modules, "sd2": sd2_modules, "sdxl": sdxl_modules}[family]
    return write_diffusers_folder(builder(seed), Path(tmp_path) / f"tiny_{family}_diffusers")
