"""Stable Diffusion's x4 upscaler (stable-diffusion-x4-upscaler) as a checkpoint kind.

It is an SD2-family model (OpenCLIP ViT-H text encoder, penultimate layer, context 1024; ComfyUI's
`SD_X4Upscaler(SD20)`) with its own parts, all visible in the weights except the schedule:

- UNet: 7 input channels (4 latent + the low-res image, -1..1, 3 channels), a class embedding of the
  noise-augmentation level (`label_emb.weight`, an `nn.Embedding(1000, time_embed_dim)`: LDM's `num_classes`,
  diffusers' `num_class_embeds`), 8 heads at every level, linear transformer projections, and no
  self-attention in its higher-resolution levels (LDM's `disable_self_attentions`, diffusers'
  `only_cross_attention`: there `attn1` attends to the text as well).
- VAE: three levels (4x down-sampling instead of 8x), latent scale 0.08333.
- Schedule: v-prediction on LDM's "linear" betas from 1e-4 to 0.02, i.e. sqrt-spaced
  (diffusers' `scaled_linear` with beta_start 0.0001 and beta_end 0.02), 1000 steps.

Which self-attentions are disabled shows in the shapes where a level's width differs from the context's:
`attn1.to_k` then reads context-width inputs. Where the widths are equal (the real model's lowest-resolution
level: 1024 and 1024) the shapes cannot tell; such a level keeps its self-attention, which is what the real
model does ([True, True, True, False]). A `nodegraph_config` `unet.only_cross_attention` entry overrides this.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nodes.sd.loading.configs import StateDict, template, unet_config_from_ldm

logger = logging.getLogger(__name__)

X4_KIND = "sd_x4_upscaler"
"""The checkpoint kind of the x4 upscaler (ordinary checkpoints are kind "sd")."""
X4_SCHEDULE: dict[str, Any] = {
    "beta_schedule": "scaled_linear", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 1000,
}
"""The denoising schedule (ComfyUI's SD_X4Upscaler sampling_settings linear_start/linear_end)."""
X4_PREDICTION = "v_prediction"
X4_SCALING_FACTOR = 0.08333
X4_IMAGE_CHANNELS = 3
X4_HEADS = 8
"""Attention heads at every level (LDM num_heads 8, num_head_channels -1; diffusers attention_head_dim 8)."""
LABEL_EMBEDDING = "label_emb.weight"


def is_x4_upscaler(keys: Iterable[str], prefix: str = "") -> bool:
    """Whether UNet keys (under `prefix`) hold the x4 upscaler's class embedding of the noise level.

    SD2-unCLIP's `label_emb.0.0.weight` (an MLP of image embeddings) and SDXL's are not this: they are
    Sequentials, so their keys carry an index.
    """
    return f"{prefix}{LABEL_EMBEDDING}" in set(keys)


def x4_unet_config(state_dict: StateDict, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The diffusers UNet2DConditionModel config of x4-upscaler UNet weights (LDM keys, no prefix).

    Args:
        state_dict: the UNet's tensors (meta tensors suffice: only shapes are read).
        overrides: the file's `nodegraph_config` unet entry; it wins over the template and the head rule.

    Raises:
        ValueError: the UNet's input is not its output's channels plus 3, or it has no class embedding.
    """
    base = template("sd_x4_unet.json")
    merged = {**base, "attention_head_dim": X4_HEADS, **overrides}
    config = unet_config_from_ldm(state_dict, "sd2", merged)
    if LABEL_EMBEDDING not in state_dict:
        raise ValueError(f"x4 upscaler UNet: expected key {LABEL_EMBEDDING!r} (the noise-level embedding) is missing")
    labels, width = state_dict[LABEL_EMBEDDING].shape
    config["num_class_embeds"], config["class_embed_type"] = int(labels), None
    time_width = int(state_dict["time_embed.0.weight"].shape[0])
    if int(width) != time_width:
        raise ValueError(f"x4 upscaler UNet: {LABEL_EMBEDDING} has width {int(width)}, the time embedding "
                         f"{time_width}; the file is not a consistent x4 upscaler")
    if config["in_channels"] != config["out_channels"] + X4_IMAGE_CHANNELS:
        raise ValueError(
            f"x4 upscaler UNet: it takes {config['in_channels']} input channels, but an x4 upscaler takes its "
            f"{config['out_channels']} latent channels plus {X4_IMAGE_CHANNELS} of the low-res image")
    if "only_cross_attention" not in overrides:
        config["only_cross_attention"] = _disabled_self_attentions(state_dict, config)
    return config


def _disabled_self_attentions(state_dict: StateDict, config: Mapping[str, Any]) -> list[bool]:
    """Per down level: whether `attn1` reads the context (True) or the level's own features (False).

    A level without attention gets True, as the real model's first level does in diffusers' config.
    """
    per_level = int(config["layers_per_block"])
    flags = []
    for level, channels in enumerate(config["block_out_channels"]):
        block = 1 + level * (per_level + 1)
        key = f"input_blocks.{block}.1.transformer_blocks.0.attn1.to_k.weight"
        if key not in state_dict:
            flags.append(True)
            continue
        flags.append(int(state_dict[key].shape[1]) != int(channels))
    return flags


def x4_vae_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The VAE config overrides: the x4 latent scaling unless the file's metadata states one."""
    return {"scaling_factor": X4_SCALING_FACTOR, **overrides}


def is_x4_folder(index: Mapping[str, Any], unet_config: Mapping[str, Any]) -> bool:
    """Whether a diffusers pipeline folder is a StableDiffusionUpscalePipeline (by class, else by its UNet)."""
    if str(index.get("_class_name", "")) == "StableDiffusionUpscalePipeline":
        return True
    return bool(unet_config.get("num_class_embeds")) and unet_config.get("class_embed_type") is None and \
        unet_config.get("in_channels") == unet_config.get("out_channels", 4) + X4_IMAGE_CHANNELS


def check_low_res_scheduler(config: Mapping[str, Any], where: Path) -> None:
    """Warn when a folder's low_res_scheduler is not the augmentation schedule SD_4XUpscale_Conditioning uses
    (nodes/sd/x4_upscale.py: scaled_linear 1e-4..0.02, 1000 steps; ComfyUI fixes it the same way)."""
    expected = {"beta_schedule": "scaled_linear", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 1000}
    differing = {k: config[k] for k, v in expected.items() if k in config and config[k] != v}
    if differing:
        logger.warning("%s: low_res_scheduler %s differs from the augmentation schedule used (%s)", where, differing,
                       expected)
