"""Per-part precision: the dtypes of UNet, text encoders and VAE (auto: half on CUDA, the VAE only when its config allows; fp32 on CPU)."""
from __future__ import annotations
from dataclasses import dataclass
import torch

_NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class PartDtypes:
    unet: torch.dtype
    text: torch.dtype
    vae: torch.dtype


def choose_dtypes(device, *, unet="auto", text="auto", vae="auto", force_upcast=None, bf16_supported=False,
                  prefer_bf16=False):
    cuda = device.startswith("cuda")
    half = torch.bfloat16 if prefer_bf16 and bf16_supported else torch.float16
    def pick(name, auto):
        return auto if name == "auto" else _NAMES[name]
    return PartDtypes(pick(unet, half if cuda else torch.float32), pick(text, half if cuda else torch.float32),
                      pick(vae, torch.float16 if cuda and force_upcast is False else torch.float32))
