"""Sampling nodes: KSampler and the custom-sampling family (SamplerCustom, schedulers, sigma tools, samplers,
guiders, noise), as ComfyUI's "sampling" menu groups them."""

from __future__ import annotations

from . import custom_sampler, guiders, ksampler, samplers, schedulers, sigmas
from .ksampler import MAX_SEED, PREVIEW_INTERVAL_S, KSampler, KSamplerAdvanced, PreviewPacer, latent_preview

__all__ = ["MAX_SEED", "NODES", "PREVIEW_INTERVAL_S", "KSampler", "KSamplerAdvanced", "PreviewPacer", "latent_preview"]

NODES = (*ksampler.NODES, *custom_sampler.NODES, *schedulers.NODES, *sigmas.NODES, *samplers.NODES, *guiders.NODES)
