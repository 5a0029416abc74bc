"""Which floating-point type each part of an SD model runs in: UNet, text encoder(s) and VAE apart.

The parts tolerate half precision differently. The UNet and the text encoders are fine in fp16 on a GPU
(half the memory, tensor cores), and bf16 (fp32's range, fewer mantissa bits) suits GPUs that have it when
the user prefers it. SD's VAE decoders are not: their activations outgrow fp16's 65504 and turn into
inf/NaN, which is why diffusers' AutoencoderKL config carries `force_upcast` (True by default, and in
the SDXL VAE's config); only a VAE whose config says `force_upcast: false` (e.g. the fp16-fixed SDXL
VAE) is run in half precision by "auto". On the CPU half precision is slow and poorly supported, so
"auto" is fp32 there; explicit settings are always honoured.

Everything here is pure: what the GPU supports is passed in, never probed, so the rules are testable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

Precision = Literal["auto", "fp32", "fp16", "bf16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SETTINGS: tuple[str, ...] = ("auto", *DTYPES)


@dataclass(frozen=True)
class PartDtypes:
    """The dtype each part of a checkpoint is loaded and run in."""

    unet: torch.dtype
    text: torch.dtype
    vae: torch.dtype


def parse_precision(name: str) -> torch.dtype:
    """The dtype a precision setting names ("fp32", "fp16" or "bf16"; "auto" needs `choose_dtypes`).

    Raises:
        ValueError: naming the value and the allowed ones.
    """
    if name not in DTYPES:
        raise ValueError(f"unknown precision {name!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _check_setting(part: str, setting: str) -> None:
    if setting not in SETTINGS:
        raise ValueError(f"{part} precision {setting!r} is not one of {', '.join(SETTINGS)}")


def choose_dtypes(
    device: str,
    *,
    unet: str = "auto",
    text: str = "auto",
    vae: str = "auto",
    force_upcast: bool | None = None,
    bf16_supported: bool = False,
    prefer_bf16: bool = False,
) -> PartDtypes:
    """Each part's dtype: explicit settings as given, "auto" by the device and the VAE's config.

    Args:
        device: where the model runs ("cpu", "cuda", "cuda:1", ...). "auto" picks half precision only on CUDA.
        unet, text, vae: "auto", "fp32", "fp16" or "bf16" for that part.
        force_upcast: the VAE config's `force_upcast` (None when it does not say): only an explicit False
            lets "auto" run the VAE in half precision.
        bf16_supported: whether the GPU computes in bf16 natively (the caller asks torch; this never probes).
        prefer_bf16: the user's wish for bf16 wherever "auto" picks half precision, when the GPU supports it.

    Raises:
        ValueError: a setting that is not one of the four, or a device string torch cannot parse.
    """
    for part, setting in (("unet", unet), ("text", text), ("vae", vae)):
        _check_setting(part, setting)
    try:
        on_cuda = torch.device(device).type == "cuda"
    except RuntimeError as error:
        raise ValueError(f"device {device!r} is not a torch device: {error}") from error
    half = torch.bfloat16 if prefer_bf16 and bf16_supported else torch.float16
    model_auto = half if on_cuda else torch.float32
    vae_auto = half if on_cuda and force_upcast is False else torch.float32

    def pick(setting: str, auto: torch.dtype) -> torch.dtype:
        return auto if setting == "auto" else DTYPES[setting]

    return PartDtypes(unet=pick(unet, model_auto), text=pick(text, model_auto), vae=pick(vae, vae_auto))


def force_upcast_from_config(config: Mapping[str, Any]) -> bool | None:
    """A diffusers VAE config's `force_upcast` as `choose_dtypes` wants it: the stored bool, or None.

    An AutoencoderKL module's config always has the key (diffusers' default is True); a raw config.json
    or one of our templates may lack it, which counts as "not said", so fp32.
    """
    value = config.get("force_upcast")
    return None if value is None else bool(value)
