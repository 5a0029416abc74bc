"""Socket payloads of the SD node set: small frozen types, never dicts with magic keys.

IMAGE sockets carry a float tensor [B, H, W, C] in 0..1 and MASK sockets a float tensor [B, H, W]
in 0..1 (ComfyUI's conventions, so masks and images move between node packs unchanged).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from typing import Any, Literal

import torch

from nodegraph.models import ModelRef, as_ref, resolve

Family = Literal["sd1", "sd2", "sdxl"]
Prediction = Literal["epsilon", "v_prediction"]


def _module_nbytes(*modules: Any) -> int:
    """Bytes of the modules a handle holds itself; a ModelRef's model belongs to the model manager and is
    counted there, once, however many handles (patched, cached) share it."""
    total = 0
    for module in modules:
        if isinstance(module, torch.nn.Module):
            total += sum(p.numel() * p.element_size() for p in module.parameters())
    return total


COMPILE_BACKENDS: tuple[str, ...] = ("inductor", "cudagraphs")
"""TorchCompileModel's choices (ComfyUI's)."""


def compile_module(module: torch.nn.Module, *, backend: str) -> torch.nn.Module:
    """torch.compile a UNet for sampling: static shapes (a new resolution or batch compiles once more)."""
    if backend not in COMPILE_BACKENDS:
        raise ValueError(f"unknown torch.compile backend {backend!r}; expected one of {', '.join(COMPILE_BACKENDS)}")
    return torch.compile(module, backend=backend, dynamic=False)


@dataclass(frozen=True)
class ModelPatch:
    """One change to how a model denoises, applied at sampling time and never to the cached base.

    `kind` says where it acts ("weights", "attention", "residual", "guidance"); `apply` is called
    with the object it patches and returns what undoes it (or None).
    """

    kind: str
    name: str
    apply: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelHandle:
    """MODEL: a denoising UNet plus its noise schedule. Patch nodes return new handles (`with_patch`)."""

    unet_ref: ModelRef | torch.nn.Module
    """The model manager's ref to a diffusers UNet2DConditionModel (or, in tests and scripts, the module
    itself). Shared with the cache and other branches: never mutate what it gives."""
    family: Family
    prediction: Prediction
    alphas_cumprod: torch.Tensor
    """The training schedule's cumulative alphas (1000 values, float64): sigmas derive from it."""
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    patches: tuple[ModelPatch, ...] = ()
    source: str = ""
    compile_backend: str | None = None
    """torch.compile backend the sampler runs the UNet with (TorchCompileModel, --compile); None runs it eagerly."""

    @property
    def unet(self) -> torch.nn.Module:
        """The UNet, loaded (and placed on the compute device) by the model manager if need be."""
        return resolve(self.unet_ref)

    @property
    def sampling_unet(self) -> torch.nn.Module:
        """What the sampler calls: the UNet, compiled when `compile_backend` says. The compiled module is a
        model derived from the (possibly LoRA-merged) UNet, so the manager keeps it across prompts, and
        torch.compile compiles once per input shape and reuses it."""
        if self.compile_backend is None:
            return self.unet
        backend = self.compile_backend
        ref = as_ref(self.unet_ref, "UNet").derive(("compile", backend), partial(compile_module, backend=backend),
                                                   name=f"{getattr(self.unet_ref, 'name', 'UNet')} compiled")
        return ref.get()

    def with_patch(self, patch: ModelPatch) -> ModelHandle:
        return replace(self, patches=(*self.patches, patch))

    @cached_property
    def nbytes(self) -> int:  # counted once per handle: the cache asks on every put
        return _module_nbytes(self.unet_ref)


@dataclass(frozen=True)
class ClipHandle:
    """CLIP: one text encoder (SD1/SD2) or two (SDXL: CLIP-L then OpenCLIP-bigG), each with its tokenizer."""

    encoder_refs: tuple[ModelRef | torch.nn.Module, ...]
    """The model manager's refs to the text encoders (or the modules themselves)."""
    tokenizers: tuple[Any, ...]
    family: Family
    layer_idx: int = -1
    """CLIPSetLastLayer's stop_at_clip_layer: -1 is the last layer, -2 the one before (clip skip 2)."""
    embedding_dirs: tuple[str, ...] = ()
    device: str = "cpu"
    patches: tuple[ModelPatch, ...] = ()
    source: str = ""

    @property
    def encoders(self) -> tuple[torch.nn.Module, ...]:
        return tuple(resolve(ref) for ref in self.encoder_refs)

    def with_patch(self, patch: ModelPatch) -> ClipHandle:
        return replace(self, patches=(*self.patches, patch))

    @cached_property
    def nbytes(self) -> int:
        return _module_nbytes(*self.encoder_refs)


@dataclass(frozen=True)
class VaeHandle:
    """VAE: a diffusers AutoencoderKL; latents are scaled by `scaling_factor` (and shifted, if set)."""

    vae_ref: ModelRef | torch.nn.Module
    scaling_factor: float
    shift_factor: float = 0.0
    device: str = "cpu"
    source: str = ""

    @property
    def vae(self) -> torch.nn.Module:
        return resolve(self.vae_ref)

    @cached_property
    def nbytes(self) -> int:
        return _module_nbytes(self.vae_ref)


@dataclass(frozen=True)
class CondItem:
    """One conditioning entry: token embeddings plus where and how strongly it applies."""

    embeds: torch.Tensor
    """[1, tokens, dim] last hidden states (SDXL: both encoders concatenated, dim 2048)."""
    pooled: torch.Tensor | None = None
    """[1, dim] pooled text embedding (SDXL's text_embeds)."""
    area: tuple[int, int, int, int] | None = None
    """(height, width, y, x) in latent pixels (image pixels // 8); None covers the whole image."""
    strength: float = 1.0
    extras: dict[str, Any] = field(default_factory=dict)
    """Typed extras added by other node sets (ControlNet hints, ...)."""
    area_fraction: tuple[float, float, float, float] | None = None
    """(height, width, y, x) as fractions of the latent (ConditioningSetAreaPercentage); used when `area` is None."""
    mask: torch.Tensor | None = None
    """[B, H, W] in 0..1 (ConditioningSetMask): the entry's weight per pixel, resized to the latent."""
    mask_strength: float = 1.0
    mask_bounds: bool = False
    """ConditioningSetMask's "mask bounds": evaluate the entry only on the bounding box of the mask."""
    timestep_range: tuple[float, float] | None = None
    """(start, end) as fractions of the sampling schedule, 0 = the noisiest (ConditioningSetTimestepRange)."""
    concat: ConcatLatent | None = None
    """Latent channels stacked onto the UNet's input (inpainting and InstructPix2Pix models)."""
    size: SizeConditioning | None = None
    """SDXL's size (and the refiner's aesthetic score) conditioning (CLIPTextEncodeSDXL, ...Refiner)."""


@dataclass(frozen=True)
class ConcatLatent:
    """What a UNet with more than 4 input channels gets besides the noisy latent (ComfyUI's c_concat).

    Inpainting UNets (9 channels) take [mask, masked image latent]; InstructPix2Pix UNets (8) take the
    input image's latent. The latent is in the UNet's units; the mask in image pixels, resized at sampling.
    """

    latent: torch.Tensor
    """[B, 4, h, w]."""
    mask: torch.Tensor | None = None
    """[B, 1, H, W] in 0..1 (1 = repaint); None for InstructPix2Pix."""


@dataclass(frozen=True)
class SizeConditioning:
    """SDXL's micro-conditioning (Podell et al. 2023, section 2.2), in image pixels.

    The base UNet takes (height, width, crop_h, crop_w, target_height, target_width); the refiner takes
    (height, width, crop_h, crop_w, aesthetic_score).
    """

    width: int
    height: int
    crop_w: int = 0
    crop_h: int = 0
    target_width: int | None = None
    target_height: int | None = None
    aesthetic_score: float | None = None


Conditioning = tuple[CondItem, ...]
"""CONDITIONING: a tuple of entries; ConditioningCombine concatenates tuples."""


@dataclass(frozen=True)
class Latent:
    """LATENT: SD latents [B, 4, H/8, W/8] (unscaled by the VAE's factor: what the UNet sees)."""

    samples: torch.Tensor
    noise_mask: torch.Tensor | None = None
    """[B or 1, 1, H, W] in 0..1: where sampling may change the latent (1) and where it keeps it (0)."""
    batch_index: tuple[int, ...] | None = None
    """Which noise each batch item gets (so item k of a batch equals a single run with that index)."""

    @property
    def nbytes(self) -> int:
        total = self.samples.element_size() * self.samples.nelement()
        if self.noise_mask is not None:
            total += self.noise_mask.element_size() * self.noise_mask.nelement()
        return total
