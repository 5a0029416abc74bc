"""T2I-Adapter (Mou et al. 2023, "T2I-Adapter: Learning Adapters to Dig out More Controllable Ability for
Text-to-Image Diffusion Models"): loading TencentARC's original files and diffusers' layout into diffusers'
`T2IAdapter`, and the features it adds to the UNet.

An adapter is a small convolutional encoder of the hint image (pixel-unshuffled to latent size) whose
per-level features are added to the UNet encoder's hidden states, once per down block, independent of the
timestep; diffusers' UNet takes them as `down_intrablock_additional_residuals` (StableDiffusionAdapterPipeline).

Layouts (TencentARC's `Adapter` / `Adapter_light` and diffusers' `FullAdapter` / `FullAdapterXL` /
`LightAdapter`; optional `adapter.` prefix on the originals):

- full, original: `conv_in`, `body.{level * blocks + j}.block1|block2`, `body.{level * blocks}.in_conv`;
  diffusers: `adapter.conv_in`, `adapter.body.{level}.resnets.{j}.block1|block2`, `adapter.body.{level}.in_conv`.
- light, original: `body.{level}.in_conv|out_conv`, `body.{level}.body.{j}.block1|block2`;
  diffusers: `adapter.body.{level}.in_conv|out_conv`, `adapter.body.{level}.resnets.{j}.block1|block2`.

Full SD1 and SDXL adapters have the same keys; as ComfyUI does, a pixel-unshuffle input width of 256 or
768 (1 or 3 channels at factor 16) marks SDXL. Originals with learned downsampling (`down_opt.op`) have no
diffusers class and are refused by name.

Features beyond the UNet's down blocks are unused, as in diffusers (an SDXL adapter's fourth; ComfyUI adds that
one to the middle block's output instead). A one-channel adapter gets the hint's channel mean, as in ComfyUI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nodes.sd.loading.build import empty_module, fill
from nodes.sd.loading.keymap import KeyRule

Tensors = Mapping[str, Tensor]
XL_UNSHUFFLED_WIDTHS = (256, 768)
"""conv_in input widths that mean SDXL's factor-16 unshuffle of a 1- or 3-channel hint (ComfyUI's rule)."""


def is_t2i_adapter(tensors: Tensors) -> bool:
    """Whether `tensors` look like a T2I-Adapter in any layout this module reads."""
    keys = {key.removeprefix("adapter.") for key in tensors}
    full = "conv_in.weight" in keys and any(key.startswith("body.0.") for key in keys)
    return full or "body.0.in_conv.weight" in keys and "body.0.out_conv.weight" in keys


def _levels(keys: set[str], pattern: str) -> list[int]:
    found = re.compile(pattern)
    return sorted({int(m.group(1)) for key in keys if (m := found.match(key))})


def _count(keys: set[str], pattern: str) -> int:
    return len(_levels(keys, pattern))


def adapter_layout(
    tensors: Tensors, overrides: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[KeyRule]]:
    """A diffusers `T2IAdapter` config and the rules mapping its keys to the file's keys.

    Raises:
        ValueError: a layout without a diffusers class (learned downsampling) or levels of unequal depth.
    """
    prefix = "adapter." if all(key.startswith("adapter.") for key in tensors) else ""
    keys = {key[len(prefix):] for key in tensors}
    diffusers = any(re.match(r"body\.\d+\.resnets\.", key) for key in keys)
    if any("down_opt" in key for key in keys):
        raise ValueError("T2I-Adapter: learned downsampling (down_opt.op) has no diffusers adapter class; "
                         "only adapters with average-pool downsampling load")
    light = "body.0.out_conv.weight" in keys
    rules: list[KeyRule] = []

    def rule(target: str, source: str) -> None:
        for param in ("weight", "bias"):
            rules.append(KeyRule(f"adapter.{target}.{param}", f"{prefix}{source}.{param}"))

    if light:
        levels = _levels(keys, r"body\.(\d+)\.out_conv\.weight")
        inner = "resnets" if diffusers else "body"
        blocks = _count(keys, rf"body\.0\.{inner}\.(\d+)\.block1\.weight")
        for level in levels:
            rule(f"body.{level}.in_conv", f"body.{level}.in_conv")
            rule(f"body.{level}.out_conv", f"body.{level}.out_conv")
            for j in range(blocks):
                for conv in ("block1", "block2"):
                    rule(f"body.{level}.resnets.{j}.{conv}", f"body.{level}.{inner}.{j}.{conv}")
        widths = [int(tensors[f"{prefix}body.{level}.out_conv.weight"].shape[0]) for level in levels]
        unshuffled = int(tensors[f"{prefix}body.0.in_conv.weight"].shape[1])
        config = {"adapter_type": "light_adapter", "channels": widths[:-1], "num_res_blocks": blocks,
                  "downscale_factor": 8, "in_channels": unshuffled // 64}
    else:
        unshuffled = int(tensors[f"{prefix}conv_in.weight"].shape[1])
        if diffusers:
            levels = _levels(keys, r"body\.(\d+)\.resnets\.0\.block1\.weight")
            blocks = _count(keys, r"body\.0\.resnets\.(\d+)\.block1\.weight")
        else:  # a level's blocks are consecutive; count them from the first level's width change
            flat = _levels(keys, r"body\.(\d+)\.block1\.weight")
            starts = [i for i in flat if f"body.{i}.in_conv.weight" in keys]
            blocks = starts[0] if starts else 2  # TencentARC's
            if blocks == 0 or len(flat) % blocks:
                raise ValueError(f"T2I-Adapter: {len(flat)} resnet blocks do not split into levels of {blocks}")
            levels = list(range(len(flat) // blocks))
        rule("conv_in", "conv_in")
        widths = []
        for level in levels:
            first = f"body.{level}.resnets.0" if diffusers else f"body.{level * blocks}"
            in_conv = f"body.{level}.in_conv" if diffusers else f"body.{level * blocks}.in_conv"
            if f"{in_conv}.weight" in keys:
                rule(f"body.{level}.in_conv", in_conv)
            widths.append(int(tensors[f"{prefix}{first}.block1.weight"].shape[0]))
            for j in range(blocks):
                source = f"body.{level}.resnets.{j}" if diffusers else f"body.{level * blocks + j}"
                for conv in ("block1", "block2"):
                    rule(f"body.{level}.resnets.{j}.{conv}", f"{source}.{conv}")
        xl = unshuffled in XL_UNSHUFFLED_WIDTHS
        factor = 16 if xl else 8
        config = {"adapter_type": "full_adapter_xl" if xl else "full_adapter", "channels": widths,
                  "num_res_blocks": blocks, "downscale_factor": factor, "in_channels": unshuffled // factor**2}
    config.update(overrides or {})
    return config, rules


def build_adapter(tensors: Tensors, what: str, *, overrides: Mapping[str, Any] | None = None,
                  device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A diffusers T2IAdapter holding `tensors` (any layout above), strictly: every key must be used."""
    from diffusers import T2IAdapter

    config, rules = adapter_layout(tensors, overrides)
    module = empty_module(lambda: T2IAdapter(**config))
    return fill(module, rules, tensors, f"{what} (T2I-Adapter, {config['adapter_type']})", device=device, dtype=dtype)


def adapter_hint(hint: Tensor, adapter: torch.nn.Module, height: int, width: int) -> Tensor:
    """The hint [B, 3, H, W] (0..1) at the adapter's input: size rounded up to its unshuffle factor (ComfyUI's
    rule; latent x 8 is already a multiple for SD1), grey (channel mean) when the adapter takes one channel."""
    from nodes.sd.controlnet import resize_hint

    factor = int(adapter.downscale_factor)
    hint = resize_hint(hint, -(-height // factor) * factor, -(-width // factor) * factor)
    if int(adapter.config.in_channels) == 1 and hint.shape[1] > 1:
        hint = hint.mean(dim=1, keepdim=True)
    return hint


def adapter_features(adapter: torch.nn.Module, hint: Tensor, strength: float) -> list[Tensor]:
    """The adapter's per-level features for `hint`, times `strength` (diffusers' adapter_conditioning_scale)."""
    return [feature * strength for feature in adapter(hint)]


def original_state_dict(adapter: torch.nn.Module) -> dict[str, Tensor]:
    """A diffusers T2IAdapter's tensors in TencentARC's key layout (the inverse of `adapter_layout`'s rules)."""
    blocks = int(adapter.config.num_res_blocks)
    light = adapter.config.adapter_type == "light_adapter"
    out: dict[str, Tensor] = {}
    for key, value in adapter.state_dict().items():
        parts = key.removeprefix("adapter.").split(".")
        if parts[0] == "body":
            level = int(parts[1])
            if light and parts[2] == "resnets":
                parts = ["body", str(level), "body", *parts[3:]]
            elif not light and parts[2] == "resnets":
                parts = ["body", str(level * blocks + int(parts[3])), *parts[4:]]
            elif not light:  # a level's in_conv sits on its first block
                parts = ["body", str(level * blocks), *parts[2:]]
        out[".".join(parts)] = value.detach().cpu().contiguous()
    return out


def save_adapter_original(
    adapter: torch.nn.Module, path: str | Path, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a diffusers T2IAdapter in TencentARC's original layout (as ComfyUI reads it)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(original_state_dict(adapter), str(path), metadata=dict(metadata or {}))
    return path
