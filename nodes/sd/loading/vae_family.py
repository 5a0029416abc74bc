"""Which latent format a standalone VAE file produces: SD1/SD2's or SDXL's scaling, told from its weights.

SD1/SD2 and SDXL VAEs have identical layouts; only their weights differ, and with them the size of their
latents. Each family's `scaling_factor` was chosen as about 1 / (standard deviation of its latents) over
training images (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models",
section 3.3 / the `scale_by_std` option of their code), so the UNet sees unit-variance latents: 0.18215
for SD1/SD2, 0.13025 for SDXL, whose latents are about 1.4 times larger. A VAE used with the wrong factor
gives a UNet latents 1.4 times too large or small, and washed-out or burnt images.

So, in order: the latent channel count (from shapes; 16-channel VAEs are SD3's and Flux's, not ours), then
metadata (our own `nodegraph_config`, then ModelSpec's `modelspec.architecture`), then the weights'
behaviour: encode a fixed synthetic picture and take the family whose 1 / scaling_factor is nearer the
latents' standard deviation, in log space (the two differ by a ratio, not an offset).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import get_args

import torch
import torch.nn.functional as F

from nodes.sd.loading.configs import METADATA_KEY, family_defaults, nodegraph_config, template
from nodes.sd.loading.single_file import vae_from_original
from nodes.sd.types import Family

FAMILIES: tuple[Family, ...] = get_args(Family)
MODELSPEC_KEY = "modelspec.architecture"
_ARCHITECTURES: tuple[tuple[str, Family], ...] = (
    ("stable-diffusion-xl-", "sdxl"),
    ("stable-diffusion-v2", "sd2"),
    ("stable-diffusion-v1", "sd1"),
)
"""ModelSpec architecture ids by prefix ("stable-diffusion-xl-v1-base", "stable-diffusion-v2-768-v", ...;
a "/vae" or "/lora" component suffix does not matter)."""
_MEASURED: tuple[Family, ...] = ("sd1", "sdxl")
"""The families statistics can tell apart: SD2 ships SD1's VAE, so its latents look the same."""
_OTHER_LATENTS = {16: "16-channel VAEs belong to SD3 (scaling 1.5305, shift 0.0609) and Flux (scaling 0.3611, "
                      "shift 0.1159)"}


@dataclass(frozen=True)
class VaeFormat:
    """How a VAE's latents are scaled for the UNet, and how we know."""

    family: Family
    """"sd1" also stands for SD2 when statistics decided: the two share one VAE and one scaling."""
    scaling_factor: float
    shift_factor: float
    latent_channels: int
    how: str
    """"metadata: ..." or "latent statistics: std=...", for logs and error reports."""


def family_scaling(family: Family) -> float:
    """The family's scaling factor, from the shipped VAE config (the one place it is written)."""
    return float(template(family_defaults(family)["vae"])["scaling_factor"])


def latent_channels(tensors: Mapping[str, torch.Tensor]) -> int:
    """Latent channels from shapes (LDM and diffusers keys agree here): the encoder emits mean and log-variance."""
    for key, axis, per_channel in (("encoder.conv_out.weight", 0, 2), ("quant_conv.weight", 0, 2),
                                   ("decoder.conv_in.weight", 1, 1), ("post_quant_conv.weight", 1, 1)):
        if key in tensors:
            return int(tensors[key].shape[axis]) // per_channel
    raise ValueError("VAE: none of encoder.conv_out, quant_conv, decoder.conv_in or post_quant_conv weights found; "
                     "not a VAE (a checkpoint's VAE lives under first_stage_model.)")


def _check_channels(channels: int) -> None:
    if channels != 4:
        other = _OTHER_LATENTS.get(channels, "it belongs to another model family")
        raise ValueError(f"VAE has {channels} latent channels, SD1/SD2/SDXL VAEs have 4: {other}, which "
                         "nodegraph does not run")


def _family_from_architecture(architecture: str) -> Family | None:
    name = architecture.strip().lower()
    return next((family for prefix, family in _ARCHITECTURES if name.startswith(prefix)), None)


def _nearest(std: float) -> Family:
    """The measurable family whose 1 / scaling_factor is nearest `std` in log space."""
    return min(_MEASURED, key=lambda family: abs(math.log(std * family_scaling(family))))


def _from_metadata(metadata: Mapping[str, str], channels: int) -> VaeFormat | None:
    config = nodegraph_config(metadata)
    family, scale = config.get("family"), (config.get("vae") or {}).get("scaling_factor")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"{METADATA_KEY} family {family!r} is not one of {', '.join(FAMILIES)}")
    if scale is not None:
        shift = float((config.get("vae") or {}).get("shift_factor") or 0.0)
        family = family or _nearest(1.0 / float(scale))
        return VaeFormat(family, float(scale), shift, channels, f"metadata: {METADATA_KEY} vae.scaling_factor")
    if family is not None:
        return VaeFormat(family, family_scaling(family), 0.0, channels, f"metadata: {METADATA_KEY} family")
    architecture = metadata.get(MODELSPEC_KEY)
    family = _family_from_architecture(architecture) if architecture else None
    if family is not None:
        return VaeFormat(family, family_scaling(family), 0.0, channels, f"metadata: {MODELSPEC_KEY} {architecture!r}")
    return None


def probe_image(size: int = 128) -> torch.Tensor:
    """A fixed photo-like test picture [1, 3, size, size] in -1..1: smooth colour gradients, hard-edged shapes,
    fine stripes and two scales of seeded noise, so every kind of content a VAE encodes is present."""
    axis = torch.linspace(0.0, 1.0, size, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    red, green = 0.25 + 0.5 * x, 0.2 + 0.6 * y * (1 - 0.5 * x)
    image = torch.stack([red, green, 0.7 - 0.5 * y + 0.1 * torch.sin(2 * math.pi * x)])
    shapes = [
        (((x - 0.3) ** 2 + (y - 0.35) ** 2) < 0.15**2, (0.9, 0.2, 0.1)),  # a disc
        ((x > 0.55) & (x < 0.85) & (y > 0.55) & (y < 0.8), (0.1, 0.3, 0.8)),  # a rectangle
        ((y > 0.6) & (y < 0.95) & ((x - 0.25).abs() < (y - 0.6) * 0.6), (0.95, 0.9, 0.3)),  # a triangle
    ]
    for mask, colour in shapes:
        image[:, mask] = torch.tensor(colour, dtype=torch.float64)[:, None]
    stripes = (x > 0.6) & (y < 0.4)
    image = torch.where(stripes, image * (0.6 + 0.4 * (torch.sin(2 * math.pi * 12 * (x + y)) > 0)), image)
    generator = torch.Generator().manual_seed(0)
    fine = 0.05 * torch.randn(3, size, size, generator=generator, dtype=torch.float64)
    coarse = torch.randn(1, 3, max(size // 16, 1), max(size // 16, 1), generator=generator, dtype=torch.float64)
    coarse = 0.08 * F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]
    return ((image + fine + coarse).clamp(0.0, 1.0) * 2.0 - 1.0).float()[None]


@torch.no_grad()
def latent_std(vae: torch.nn.Module) -> float:
    """Standard deviation of the posterior mean of `probe_image()` (all channels and positions together, as
    the scaling factor was measured), on the VAE's device; a half-precision overflow is redone in fp32."""
    parameter = next(vae.parameters())
    mean = vae.encode(probe_image().to(parameter.device, parameter.dtype)).latent_dist.mean
    if not torch.isfinite(mean).all() and parameter.dtype != torch.float32:
        mean = copy.deepcopy(vae).float().encode(probe_image().to(parameter.device)).latent_dist.mean
    std = float(mean.double().std())
    if not math.isfinite(std) or std <= 0.0:
        raise ValueError(f"VAE: cannot tell its latent scaling: its latents of a test image have std {std}")
    return std


def detect_vae_latent_format(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None, *, vae: torch.nn.Module | None = None
) -> VaeFormat:
    """The latent format of a VAE file: metadata when it says, else measured from the weights.

    Args:
        tensors: the VAE's tensors, LDM or diffusers layout, without a `first_stage_model.`/`vae.` prefix.
        metadata: the file's safetensors metadata (None or {} when it has none).
        vae: the AutoencoderKL already built from `tensors`, if the caller has one; else one is built
            (fp32, CPU) only when metadata does not decide.

    Raises:
        ValueError: not a VAE, a latent channel count other than SD's 4 (naming the count and the models
            that use it), or metadata naming an unknown family.
    """
    channels = latent_channels(tensors)
    _check_channels(channels)
    found = _from_metadata(metadata or {}, channels)
    if found is not None:
        return found
    if vae is None:
        vae = vae_from_original(dict(tensors), "sd1", {}, device="cpu", dtype=torch.float32)
    std = latent_std(vae)
    family = _nearest(std)
    references = ", ".join(f"{f} {1.0 / family_scaling(f):.2f}" for f in _MEASURED)
    return VaeFormat(family, family_scaling(family), 0.0, channels,
                     f"latent statistics: std={std:.3f} (1/scaling_factor: {references})")
