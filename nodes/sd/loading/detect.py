"""Which model family a single-file checkpoint holds, and whether it predicts noise or velocity.

The family shows in the text encoder's key layout (OpenAI CLIP for SD1, OpenCLIP for SD2, both for
SDXL). The prediction type does not show in shapes: like ComfyUI we trust, in order, our own metadata,
a `v_pred` marker key, ModelSpec/kohya metadata, and for SD2 ComfyUI's statistical tell (the last
output block's norm bias is much wider in the 768-v model than in 512-base).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from nodes.sd.types import Family, Prediction

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


@dataclass(frozen=True)
class Layout:
    """Where each component of a family's single-file checkpoint lives."""

    family: Family
    text_prefixes: tuple[str, ...]
    """One per text encoder, in ClipHandle order."""
    open_clip: tuple[bool, ...]
    """Per text encoder: OpenCLIP layout (True) or OpenAI CLIP via transformers (False)."""


LAYOUTS: dict[Family, Layout] = {
    "sd1": Layout("sd1", ("cond_stage_model.transformer.",), (False,)),
    "sd2": Layout("sd2", ("cond_stage_model.model.",), (True,)),
    "sdxl": Layout("sdxl", ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."), (False, True)),
}

# Keys real checkpoints carry that no module needs: training schedule buffers, EMA copies, markers,
# and parts of the text towers SD never uses. Anything else outside the components is logged.
_IGNORED_NAMES = {
    "v_pred", "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights",
}  # fmt: skip
_IGNORED_PREFIXES = ("model_ema.", "low_scale_model.")  # the x4 upscaler stores its augmentation schedule there
_IGNORED_SUFFIXES = ("embeddings.position_ids", "model.logit_scale", "model.attn_mask")


def is_ignored(key: str) -> bool:
    return key in _IGNORED_NAMES or key.startswith(_IGNORED_PREFIXES) or key.endswith(_IGNORED_SUFFIXES)


def detect_family(keys: list[str]) -> Family:
    """SD1, SD2 or SDXL base from the key layout; a clear error for anything else."""

    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in keys)

    if not has(UNET_PREFIX):
        shown = ", ".join(sorted(keys)[:5]) or "none"
        raise ValueError(f"not a Stable Diffusion checkpoint: no {UNET_PREFIX}* keys (found e.g. {shown})")
    if has("conditioner.embedders.1.model.") and has("conditioner.embedders.0.transformer."):
        return "sdxl"
    if has("conditioner.embedders.0.model."):
        raise ValueError("this looks like the SDXL refiner (a single OpenCLIP-bigG encoder); it is not supported")
    if has("cond_stage_model.model."):
        return "sd2"
    if has("cond_stage_model.transformer."):
        return "sd1"
    prefixes = sorted({key.split(".")[0] for key in keys})[:8]
    raise ValueError(f"checkpoint has a UNet but no text encoder layout we know (top-level prefixes: {prefixes})")


def _prediction_from_metadata(metadata: Mapping[str, str]) -> Prediction | None:
    spec = metadata.get("modelspec.prediction_type", "").lower()
    if spec in ("v", "v_prediction", "v-prediction"):
        return "v_prediction"
    if spec in ("epsilon", "eps"):
        return "epsilon"
    if metadata.get("ss_v_parameterization", "").lower() == "true":
        return "v_prediction"
    return None


def detect_prediction(
    state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str], family: Family, config: Mapping[str, Any]
) -> Prediction:
    """The checkpoint's prediction type.

    Args:
        state_dict: the whole checkpoint (original keys).
        metadata: safetensors metadata.
        family: from `detect_family`.
        config: the parsed `nodegraph_config` metadata ({} when absent).
    """
    stated = config.get("prediction")
    if stated is not None:
        if stated not in ("epsilon", "v_prediction"):
            raise ValueError(f"nodegraph_config prediction {stated!r} is not 'epsilon' or 'v_prediction'")
        return stated
    if "v_pred" in state_dict:
        return "v_prediction"
    from_metadata = _prediction_from_metadata(metadata)
    if from_metadata is not None:
        return from_metadata
    conv_in = state_dict.get(UNET_PREFIX + "input_blocks.0.0.weight")
    tell = state_dict.get(UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias")
    # SD2 inpainting (9 input channels) is epsilon whatever the statistics say.
    if family == "sd2" and tell is not None and conv_in is not None and conv_in.shape[1] == 4:
        if torch.std(tell.float(), unbiased=False) > 0.09:
            return "v_prediction"
    return "epsilon"
