"""Perturbed-attention guidance, PAG (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention
Guidance", arXiv 2403.17377), as ComfyUI's PerturbedAttentionGuidance computes it.

After CFG, the positive conditioning is evaluated once more with the middle block's self-attention replaced by
identity attention (each token attends only to itself: the output is its value projection), and the result moves
by scale * (cond - perturbed). The replacement is an attn1 patch that is live only during that extra evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from nodes.sd.attention_patches import AttentionInfo, Attn1Patch, ensure_attn1_wrapper, remove_attn1_patch
from nodes.sd.denoisers import CFGDenoiser, GuidanceInputs, calc_cond_batch
from nodes.sd.types import ModelPatch

MIDDLE_PREFIX = "mid_block.attentions.0."
"""ComfyUI's ("middle", 0): every transformer block of the middle block's first attention."""


class IdentityMiddleAttention(Attn1Patch):
    live = False

    def applies_to(self, name: str) -> bool:
        return ("." + name).find("." + MIDDLE_PREFIX) >= 0  # also under a compiled UNet's "_orig_mod."

    def replace(self, q: Tensor, k: Tensor, v: Tensor, info: AttentionInfo) -> Tensor | None:
        return v


def pag_patch(scale: float) -> ModelPatch:
    """A "guidance" patch for PAG; scale 0 changes nothing (and costs nothing)."""

    def apply(cfg_denoiser: CFGDenoiser) -> Callable[[], None] | None:
        if scale == 0:
            return None
        unet_denoiser = cfg_denoiser.model
        ensure_attn1_wrapper(unet_denoiser)
        perturbed = IdentityMiddleAttention()
        unet_denoiser.attn1_patches.append(perturbed)
        positive = cfg_denoiser.positive

        def term(inputs: GuidanceInputs) -> Tensor:
            perturbed.live = True
            try:
                (pag,) = calc_cond_batch(inputs.model, [positive], inputs.x, inputs.sigma)
            finally:
                perturbed.live = False
            assert pag is not None
            return inputs.denoised + (inputs.cond_denoised - pag) * scale

        cfg_denoiser.guidance_terms.append(term)

        def undo() -> None:
            cfg_denoiser.guidance_terms.remove(term)
            remove_attn1_patch(unet_denoiser, perturbed)

        return undo

    return ModelPatch(kind="guidance", name="perturbed_attention_guidance", apply=apply, options={"scale": scale})
