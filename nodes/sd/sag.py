"""Self-attention guidance, SAG (Hong et al. 2022, "Improving Sample Quality of Diffusion Models Using
Self-Attention Guidance", arXiv 2210.00939), as ComfyUI's SelfAttentionGuidance and diffusers'
`StableDiffusionSAGPipeline` compute it.

Per model evaluation, after CFG:
1. The UNet's middle-block self-attention (first transformer block's attn1) is recorded for the uncond
   batch chunk; a key position is "attended" when the attention it receives, summed over queries and
   averaged over heads, exceeds 1 (paper eq. 25, diffusers' and ComfyUI's mask threshold).
2. The uncond x0 is Gaussian-blurred (9x9 kernel, `blur_sigma`) where attended, and re-noised with the
   uncond's own noise: x_degraded = blurred + (x - x0_uncond) (diffusers' add_noise with eps_uncond).
3. The uncond conditioning is evaluated on x_degraded, and the result moves by
   scale * (x0_blurred - D(x_degraded)), which is scale * sigma * (eps_degraded - eps_uncond) in x0 terms:
   diffusers' noise_pred += sag_scale * (eps_uncond - eps_degraded).

The recording is a diffusers attention processor set on the UNet only for the length of one UNet call made
through this run's UNetDenoiser (a wrapper), and the previous processor is restored right after: the shared,
cached UNet never keeps it. It delegates the layer's output to the previous processor, so the UNet's outputs
are the same as without SAG. diffusers uses blur sigma 1.0 (fixed) and ComfyUI 2.0 by default; with CFG off,
diffusers degrades the cond prediction, while we (like ComfyUI) always use uncond.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nodes.sd.denoisers import CFGDenoiser, GuidanceInputs, UNetCall, UNetDenoiser, calc_cond_batch
from nodes.sd.types import CondItem, ModelPatch

PATCH_NAME = "self_attention_guidance"
KERNEL_SIZE = 9
"""Blur kernel width in latent pixels (diffusers and ComfyUI)."""
MASK_THRESHOLD = 1.0
NEGATIVE_SET = 1
"""calc_cond_batch's set index of the negative (uncond) conditioning."""


def gaussian_blur_2d(image: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Separable Gaussian blur per channel with reflect padding; sigma <= 0 leaves the image as it is."""
    if sigma <= 0.0:
        return image
    half = (kernel_size - 1) * 0.5
    positions = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (positions / sigma).pow(2))
    kernel_1d = (pdf / pdf.sum()).to(device=image.device, dtype=image.dtype)
    kernel = torch.mm(kernel_1d[:, None], kernel_1d[None, :])
    channels = image.shape[-3]
    kernel = kernel.expand(channels, 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(image, [pad, pad, pad, pad], mode="reflect"), kernel, groups=channels)


def attention_mask(probs: Tensor, map_size: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Where the self-attention map is high, [B, 1, H, W] of 0/1 at latent size (nearest upsampling).

    Args:
        probs: attention probabilities [B, heads, queries, keys] of the middle block.
        map_size: the middle block's (height, width); keys are its positions in row-major order.
        size: the latent's (height, width).
    """
    attended = probs.mean(1).sum(1) > MASK_THRESHOLD
    mask = attended.reshape(probs.shape[0], 1, *map_size).to(probs.dtype)
    return F.interpolate(mask, size)


def degrade(x0: Tensor, probs: Tensor, map_size: tuple[int, int], blur_sigma: float) -> Tensor:
    """x0 blurred where the attention mask is set, unchanged elsewhere (paper eq. 25's masked blur)."""
    mask = attention_mask(probs.to(x0.dtype), map_size, (x0.shape[-2], x0.shape[-1])).to(x0.device)
    blurred = gaussian_blur_2d(x0, KERNEL_SIZE, blur_sigma)
    return blurred * mask + x0 * (1 - mask)


def mid_self_attention(unet: torch.nn.Module) -> torch.nn.Module:
    """The middle block's first self-attention layer (diffusers' and ComfyUI's "middle", 0, 0)."""
    try:
        return unet.mid_block.attentions[0].transformer_blocks[0].attn1  # type: ignore[union-attr,index]
    except (AttributeError, IndexError, TypeError):
        raise ValueError("self-attention guidance needs a UNet whose middle block has self-attention") from None


class AttentionRecorder:
    """A diffusers attention processor: the previous processor's output, plus the attention probabilities of
    batch rows [start, stop) kept in `probs` ([rows, heads, queries, keys])."""

    def __init__(self, previous: Any, start: int, stop: int) -> None:
        self.previous, self.start, self.stop = previous, start, stop
        self.probs: Tensor | None = None

    def __call__(
        self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs: Any,
    ) -> Tensor:
        out = self.previous(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                            attention_mask=attention_mask, temb=temb, **kwargs)
        rows = hidden_states[self.start : self.stop]
        context = rows if encoder_hidden_states is None else encoder_hidden_states[self.start : self.stop]
        query = attn.head_to_batch_dim(attn.to_q(rows))
        key = attn.head_to_batch_dim(attn.to_k(context))
        probs = attn.get_attention_scores(query, key, None)
        self.probs = probs.reshape(rows.shape[0], attn.heads, *probs.shape[1:]).detach()
        return out


@dataclass(frozen=True)
class _Recording:
    probs: Tensor
    map_size: tuple[int, int]
    sample_size: tuple[int, int]


class SelfAttentionGuidance:
    """SAG for one sampling run: a UNet wrapper that records the uncond's middle-block attention, and the
    guidance term that uses it. Both are installed by `sag_patch` and live only for the run."""

    def __init__(self, unet_denoiser: UNetDenoiser, negative: Sequence[CondItem], scale: float,
                 blur_sigma: float) -> None:
        self.unet_denoiser, self.negative = unet_denoiser, tuple(negative)
        self.scale, self.blur_sigma = scale, blur_sigma
        self.recordings: list[_Recording] = []

    def record(self, call: UNetCall, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor:
        """UNetWrapper: run the call with the recorder installed when the batch holds an uncond chunk."""
        sets = self.unet_denoiser.batch_sets
        if NEGATIVE_SET not in sets:
            return call(sample, timestep, kwargs)
        chunk = sample.shape[0] // len(sets)
        first = sets.index(NEGATIVE_SET) * chunk
        unet = self.unet_denoiser.unet  # read per call: a weights patch may have swapped in a patched copy
        attn = mid_self_attention(unet)
        previous = attn.processor
        recorder = AttentionRecorder(previous, first, first + chunk)
        map_size: list[tuple[int, int]] = []
        hook = unet.mid_block.attentions[0].register_forward_hook(
            lambda _module, _inputs, output: map_size.append(tuple(output[0].shape[-2:]))
        )
        attn.set_processor(recorder)
        try:
            out = call(sample, timestep, kwargs)
        finally:
            attn.set_processor(previous)
            hook.remove()
        if recorder.probs is not None and map_size:
            size = (int(sample.shape[-2]), int(sample.shape[-1]))
            self.recordings.append(_Recording(recorder.probs, map_size[0], size))
        return out

    def __call__(self, inputs: GuidanceInputs) -> Tensor:
        recordings, self.recordings = self.recordings, []
        x, uncond = inputs.x, inputs.uncond_denoised
        size = (int(x.shape[-2]), int(x.shape[-1]))
        recording = next((r for r in recordings if r.sample_size == size), None)
        # No whole-image uncond entry to take a map from, or too small to pad for the blur (ComfyUI skips too).
        if uncond is None or recording is None or min(size) <= KERNEL_SIZE // 2:
            return inputs.denoised
        degraded = degrade(uncond, recording.probs, recording.map_size, self.blur_sigma)
        (degraded_denoised,) = calc_cond_batch(inputs.model, [self.negative], degraded + x - uncond, inputs.sigma)
        assert degraded_denoised is not None
        return inputs.denoised + (degraded - degraded_denoised) * self.scale


def sag_patch(scale: float, blur_sigma: float) -> ModelPatch:
    """A "guidance" ModelPatch for self-attention guidance (ComfyUI's SelfAttentionGuidance).

    It is applied to the run's CFGDenoiser and installs both halves on objects built for that run: the guidance
    term on the CFGDenoiser and the attention-recording wrapper on its UNetDenoiser (`cfg_denoiser.model`).
    Scale 0 installs nothing, so it is exactly plain CFG at no cost.
    """
    if not math.isfinite(scale) or not math.isfinite(blur_sigma) or blur_sigma < 0:
        raise ValueError(f"self-attention guidance needs a finite scale and blur_sigma >= 0, got {scale}, {blur_sigma}")

    def apply(cfg_denoiser: CFGDenoiser) -> Callable[[], None] | None:
        if scale == 0.0:
            return None
        unet_denoiser = cfg_denoiser.model
        mid_self_attention(unet_denoiser.unet)  # fail early on a UNet without middle self-attention
        sag = SelfAttentionGuidance(unet_denoiser, cfg_denoiser.negative, scale, blur_sigma)
        wrapper = sag.record
        unet_denoiser.wrappers.append(wrapper)
        cfg_denoiser.guidance_terms.append(sag)

        def undo() -> None:
            cfg_denoiser.guidance_terms.remove(sag)
            unet_denoiser.wrappers.remove(wrapper)

        return undo

    return ModelPatch(kind="guidance", name=PATCH_NAME, apply=apply, options={"scale": scale, "blur_sigma": blur_sigma})
