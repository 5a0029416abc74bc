"""Extracting a LoRA from the difference of two models (LoraSave), by truncated SVD.

For each weight difference D (model_diff = model1 - model2 from ModelMergeSubtract), the best rank-r
approximation in the least-squares sense is U_r S_r V_r^T (Eckart & Young 1936); a LoRA (Hu et al. 2021)
stores it as up = U_r S_r and down = V_r^T, so up @ down approximates D. As ComfyUI does, convolutions are
flattened to [out, in * k * k] (a 1x1 kernel is just [out, in]), up and down are both clamped to +-q, q the
0.99 quantile of their joined (signed) entries, so a few outliers do not dominate the float16 range, and
tensors are stored as float16 without an alpha (scale 1).

Options (ComfyUI's): `rank`; `lora_type` "standard" (low-rank pairs; 1-D weights such as norms are stored
whole as `.diff` when `bias_diff`) or "full_diff" (every weight difference stored whole as `.diff`);
`bias_diff` also stores bias differences as `.diff_b`.

Key layout (ComfyUI's): `diffusion_model.<LDM name>.lora_up.weight` / `.lora_down.weight` / `.diff` /
`.diff_b` for the UNet, `text_encoders.<clip_l|clip_h|clip_g>.transformer.<transformers name>...` for text
encoders. Our LoraLoader reads these (nodes/sd/lora.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Literal

import torch
from torch import Tensor

from nodes.sd.types import ClipHandle, ModelHandle

logger = logging.getLogger(__name__)

CLAMP_QUANTILE = 0.99
LORA_TYPES: tuple[str, ...] = ("standard", "full_diff")
LoraType = Literal["standard", "full_diff"]


def extract_lora(diff: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """(up, down) of the rank-`rank` truncated SVD of a weight difference (Linear [out, in] or Conv2d
    [out, in, k, k]; rank capped at min(out, in)), both clamped to +-(0.99 quantile of their entries)."""
    out_dim, in_dim = diff.shape[0], diff.shape[1]
    rank = min(rank, in_dim, out_dim)
    conv = diff.dim() == 4
    kernel = tuple(diff.shape[2:4]) if conv else None
    matrix = diff.float().flatten(1) if conv else diff.float()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    up = u[:, :rank] @ torch.diag(s[:rank])
    down = vh[:rank, :]
    high = torch.quantile(torch.cat([up.flatten(), down.flatten()]), CLAMP_QUANTILE)
    up, down = up.clamp(-high, high), down.clamp(-high, high)
    if conv:
        assert kernel is not None
        up = up.reshape(out_dim, rank, 1, 1)
        down = down.reshape(rank, in_dim, *kernel)
    return up, down


def lora_tensors(named: Iterable[tuple[str, Tensor]], rank: int, lora_type: LoraType, bias_diff: bool) -> Iterator[tuple[str, Tensor]]:
    """The LoRA file entries for (file layer name + `.weight` / `.bias`, difference tensor) pairs."""
    if lora_type not in LORA_TYPES:
        raise ValueError(f"unknown lora_type {lora_type!r}; expected one of {', '.join(LORA_TYPES)}")
    for key, diff in named:
        if key.endswith(".weight"):
            layer = key[: -len(".weight")]
            if lora_type == "full_diff" or diff.dim() < 2:
                if lora_type == "full_diff" or bias_diff:
                    yield f"{layer}.diff", diff.half().cpu().contiguous()
                continue
            try:
                up, down = extract_lora(diff, rank)
            except (RuntimeError, ValueError) as error:  # e.g. a layer too large for torch.quantile
                logger.warning("LoraSave: no LoRA for %s (%s)", key, error)
                continue
            yield f"{layer}.lora_up.weight", up.half().cpu().contiguous()
            yield f"{layer}.lora_down.weight", down.half().cpu().contiguous()
        elif bias_diff and key.endswith(".bias"):
            yield f"{key[: -len('.bias')]}.diff_b", diff.half().cpu().contiguous()


def _floating(module: torch.nn.Module) -> dict[str, Tensor]:
    """The module's floating-point tensors where they are: the SVDs run on the model's device."""
    return {k: v.detach() for k, v in module.state_dict().items() if v.is_floating_point()}


def unet_diff_names(model: ModelHandle) -> list[tuple[str, Tensor]]:
    """A difference UNet's tensors under ComfyUI's LoRA names: `diffusion_model.` + the LDM name."""
    unet = model.unet
    state = _floating(unet)
    from nodes.sd.loading.keymap import unet_rules  # the loaders: imported on first use

    rules = unet_rules(list(state), unet.config)
    return [("diffusion_model." + rule.source, state[rule.target]) for rule in rules]


def text_diff_names(clip: ClipHandle) -> list[tuple[str, Tensor]]:
    """Difference text encoders' tensors as `text_encoders.<clip_l|clip_h|clip_g>.transformer.<name>`."""
    named = []
    from nodes.sd.loading.keymap import clip_rules
    from nodes.sd.saving import TEXT_ENCODER_NAMES

    for name, encoder in zip(TEXT_ENCODER_NAMES[clip.family], clip.encoders):
        state = _floating(encoder)
        for rule in clip_rules(list(state)):
            if rule.target.endswith((".position_ids", ".logit_scale")):
                continue
            named.append((f"text_encoders.{name}.transformer.{rule.source}", state[rule.target]))
    return named


def extracted_lora(model_diff: ModelHandle | None, text_encoder_diff: ClipHandle | None, *, rank: int,
                   lora_type: LoraType, bias_diff: bool) -> dict[str, Tensor]:
    """The whole LoRA file LoraSave writes for a difference MODEL and / or CLIP."""
    named: list[tuple[str, Tensor]] = []
    if model_diff is not None:
        named += unet_diff_names(model_diff)
    if text_encoder_diff is not None:
        named += text_diff_names(text_encoder_diff)
    return dict(lora_tensors(named, rank, lora_type, bias_diff))
