"""Turning built modules into the MODEL / CLIP / VAE payloads every loader returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from nodegraph.models import resolve
from nodes.sd.loading.configs import alphas_cumprod, family_defaults
from nodes.sd.tokenizer import SDTokenizer, clip_l_tokenizer, open_clip_tokenizer
from nodes.sd.types import ClipHandle, Family, ModelHandle, Prediction, VaeHandle


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What CheckpointLoader outputs: the three handles plus what was learned about the file."""

    model: ModelHandle
    clip: ClipHandle
    vae: VaeHandle
    family: Family
    metadata: dict[str, str] = field(default_factory=dict)
    """The file's safetensors metadata (for a diffusers folder: its model_index.json, as strings)."""
    kind: str = "sd"
    """"sd", or "sd_x4_upscaler" (nodes/sd/loading/x4_upscaler.py)."""


def tokenizer_for(open_clip: bool) -> SDTokenizer:
    """OpenCLIP encoders pad with 0, OpenAI CLIP with end-of-text."""
    return open_clip_tokenizer() if open_clip else clip_l_tokenizer()


def vae_handle(vae: Any, device: str, source: str, *, scaling_factor: float | None = None,
               config: Mapping[str, Any] | None = None) -> VaeHandle:
    """A VaeHandle around a module or a ModelRef; the latent scaling comes from the caller, else the VAE's
    config (`config`, or the module's own)."""
    if config is None:
        config = dict(resolve(vae).config)
    scale = scaling_factor if scaling_factor is not None else float(config["scaling_factor"])
    shift = float(config.get("shift_factor") or 0.0)
    return VaeHandle(vae_ref=vae, scaling_factor=scale, shift_factor=shift, device=device, source=source)


def assemble(
    *,
    family: Family,
    prediction: Prediction,
    schedule: Mapping[str, Any] | None,
    unet: Any,
    vae: Any,
    vae_config: Mapping[str, Any],
    encoders: Sequence[Any],
    open_clip: Sequence[bool],
    device: str,
    dtype: torch.dtype,
    source: str,
    metadata: Mapping[str, str],
    clip_layer_idx: int | None = None,
    kind: str = "sd",
) -> LoadedCheckpoint:
    """Wrap the parts (ModelRefs, or modules) in handles with the family's defaults (schedule, CLIP layer)."""
    defaults = family_defaults(family)
    model = ModelHandle(
        unet_ref=unet,
        family=family,
        prediction=prediction,
        alphas_cumprod=alphas_cumprod(schedule or defaults["schedule"]),
        dtype=dtype,
        device=device,
        source=source,
    )
    clip = ClipHandle(
        encoder_refs=tuple(encoders),
        tokenizers=tuple(tokenizer_for(flag) for flag in open_clip),
        family=family,
        layer_idx=defaults["clip_layer_idx"] if clip_layer_idx is None else clip_layer_idx,
        device=device,
        source=source,
    )
    return LoadedCheckpoint(
        model=model,
        clip=clip,
        vae=vae_handle(vae, device, source, config=vae_config),
        family=family,
        metadata=dict(metadata),
        kind=kind,
    )
