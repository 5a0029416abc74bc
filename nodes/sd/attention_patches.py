"""Self-attention ("attn1") patches on a diffusers UNet, ComfyUI-style ("attention" patches).

ComfyUI lets a model patch change a transformer block's self-attention at three points: attn1_patch(q, k, v)
before the projections (each is the block's normed hidden state), a replacement of the attention given the
projected q, k, v (PAG's identity attention), and attn1_output_patch(out) after the output projection.
`SelfAttentionProcessor` is a diffusers attention processor doing exactly that; it is set on the UNet's attn1
modules for one UNet call, only when a patch is live, and the previous processors are put back right after
(the shared UNet never keeps it). Attention is computed as ComfyUI's does: q, k and v are split into heads by
q's batch size, so a patch that regroups only q's tokens into more batch rows (HyperTile) makes each row attend
to the same-sized run of k's tokens in memory order.

UNet and CLIP attention multiply scale the q/k/v/out projections (ComfyUI scales their weights and biases;
scaling a linear layer's output is the same thing): forward hooks on those layers, for a call or an encode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nodes.sd.denoisers import UNetCall, UNetDenoiser
from nodes.sd.types import ModelPatch


@dataclass(frozen=True)
class AttentionInfo:
    """What an attn1 patch knows: the module's name, the UNet input's shape and the model's base channels."""

    name: str
    original_shape: tuple[int, ...]
    model_channels: int


class Attn1Patch:
    """One self-attention patch; override what it changes. `live` False leaves the UNet untouched."""

    live: bool = True

    def applies_to(self, name: str) -> bool:
        return True

    def before(self, q: Tensor, k: Tensor, v: Tensor, info: AttentionInfo) -> tuple[Tensor, Tensor, Tensor]:
        return q, k, v

    def replace(self, q: Tensor, k: Tensor, v: Tensor, info: AttentionInfo) -> Tensor | None:
        """The attention output for projected q, k, v, or None for ordinary attention."""
        return None

    def after(self, out: Tensor, info: AttentionInfo) -> Tensor:
        return out


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Scaled dot-product attention split into heads by q's batch size (ComfyUI's optimized attention)."""
    batch, dim = q.shape[0], q.shape[-1]
    head_dim = dim // heads
    q, k, v = (t.reshape(batch, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(batch, -1, heads * head_dim)


class SelfAttentionProcessor:
    """A diffusers attention processor running `patches` (those that apply to this module) around attention."""

    def __init__(self, previous: Any, patches: list[Attn1Patch], info: AttentionInfo) -> None:
        self.previous, self.patches, self.info = previous, patches, info

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs: Any) -> Tensor:
        plain = (hidden_states.ndim != 3 or encoder_hidden_states is not None or attention_mask is not None
                 or attn.group_norm is not None or attn.spatial_norm is not None or attn.residual_connection
                 or attn.norm_q is not None)
        if plain:  # not SD's plain self-attention: leave it to the usual processor
            return self.previous(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, temb=temb, **kwargs)
        q_in = k_in = v_in = hidden_states
        for patch in self.patches:
            q_in, k_in, v_in = patch.before(q_in, k_in, v_in, self.info)
        q, k, v = attn.to_q(q_in), attn.to_k(k_in), attn.to_v(v_in)
        out = None
        for patch in self.patches:
            out = patch.replace(q, k, v, self.info)
            if out is not None:
                break
        if out is None:
            out = attention(q, k, v, attn.heads).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor
        for patch in reversed(self.patches):
            out = patch.after(out, self.info)
        return out


def self_attention_modules(unet: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """The UNet's transformer self-attention layers (diffusers' attn1), with their module names."""
    for name, module in unet.named_modules():
        if name.endswith(".attn1") and hasattr(module, "set_processor"):
            yield name, module


@contextmanager
def attn1_patched(unet: torch.nn.Module, patches: list[Attn1Patch], original_shape: tuple[int, ...]) -> Iterator[None]:
    """Set SelfAttentionProcessors for `patches` on `unet`'s attn1 layers, restoring the previous processors."""
    model_channels = int(unet.config.block_out_channels[0])
    restore: list[tuple[torch.nn.Module, Any]] = []
    try:
        for name, module in self_attention_modules(unet):
            applying = [patch for patch in patches if patch.live and patch.applies_to(name)]
            if applying:
                previous = module.processor
                restore.append((module, previous))
                module.set_processor(SelfAttentionProcessor(previous, applying,
                                                            AttentionInfo(name, original_shape, model_channels)))
        yield
    finally:
        for module, previous in reversed(restore):
            module.set_processor(previous)


def ensure_attn1_wrapper(unet_denoiser: UNetDenoiser) -> None:
    """Add, once per run, the UNet wrapper that sets this run's attn1 patches around each UNet call."""
    if getattr(unet_denoiser, "_attn1_wrapper", None) is not None:
        return

    def wrapper(call: UNetCall, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor:
        if not any(patch.live for patch in unet_denoiser.attn1_patches):
            return call(sample, timestep, kwargs)
        with attn1_patched(unet_denoiser.unet, unet_denoiser.attn1_patches, tuple(sample.shape)):
            return call(sample, timestep, kwargs)

    unet_denoiser.wrappers.append(wrapper)
    unet_denoiser._attn1_wrapper = wrapper  # type: ignore[attr-defined]


def remove_attn1_patch(unet_denoiser: UNetDenoiser, patch: Attn1Patch) -> None:
    """Take `patch` off the run, and the run's attn1 wrapper with the last one."""
    unet_denoiser.attn1_patches.remove(patch)
    wrapper = getattr(unet_denoiser, "_attn1_wrapper", None)
    if not unet_denoiser.attn1_patches and wrapper is not None:
        unet_denoiser.wrappers.remove(wrapper)
        unet_denoiser._attn1_wrapper = None  # type: ignore[attr-defined]


def attn1_patch(name: str, build: Callable[[], Attn1Patch], options: dict[str, Any]) -> ModelPatch:
    """An "attention" ModelPatch adding `build()` (a fresh patch object per run) to the run's attn1 patches."""

    def apply(unet_denoiser: UNetDenoiser) -> Callable[[], None]:
        ensure_attn1_wrapper(unet_denoiser)
        patch = build()
        unet_denoiser.attn1_patches.append(patch)
        return lambda: remove_attn1_patch(unet_denoiser, patch)

    return ModelPatch(kind="attention", name=name, apply=apply, options=options)


# -- attention multiply ------------------------------------------------------------------------------------


def _scale_output(factor: float) -> Callable[..., Tensor]:
    return lambda _module, _inputs, output: output * factor


def scale_projections(layers: list[tuple[torch.nn.Module, float]]) -> Callable[[], None]:
    """Multiply each linear layer's output (weight and bias) by its factor until the returned undo runs."""
    handles = [layer.register_forward_hook(_scale_output(factor)) for layer, factor in layers if factor != 1.0]

    def undo() -> None:
        for handle in handles:
            handle.remove()

    return undo


def unet_attention_layers(unet: torch.nn.Module, which: str, q: float, k: float, v: float,
                          out: float) -> list[tuple[torch.nn.Module, float]]:
    """to_q/to_k/to_v/to_out.0 of every `which` ("attn1" self, "attn2" cross) attention with their factors."""
    layers = []
    for name, module in unet.named_modules():
        if name.endswith("." + which) and hasattr(module, "to_q"):
            layers += [(module.to_q, q), (module.to_k, k), (module.to_v, v), (module.to_out[0], out)]
    return layers


def unet_attention_multiply_patch(which: str, q: float, k: float, v: float, out: float) -> ModelPatch:
    """A "weights" patch: ComfyUI's UNetSelfAttentionMultiply (attn1) / UNetCrossAttentionMultiply (attn2)."""

    def apply(unet_denoiser: UNetDenoiser) -> Callable[[], None]:
        def wrapper(call: UNetCall, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor:
            undo = scale_projections(unet_attention_layers(unet_denoiser.unet, which, q, k, v, out))
            try:
                return call(sample, timestep, kwargs)
            finally:
                undo()

        unet_denoiser.wrappers.append(wrapper)
        return lambda: unet_denoiser.wrappers.remove(wrapper)

    return ModelPatch(kind="weights", name=f"{which}_multiply", apply=apply,
                      options={"q": q, "k": k, "v": v, "out": out})


def clip_attention_multiply_patch(q: float, k: float, v: float, out: float) -> ModelPatch:
    """A CLIP "weights" patch: ComfyUI's CLIPAttentionMultiply on every encoder's self_attn q/k/v/out_proj."""

    def apply(run: Any) -> Callable[[], None]:
        layers = []
        for encoder in run.encoders:
            for name, module in encoder.named_modules():
                if name.endswith("self_attn") and hasattr(module, "q_proj"):
                    layers += [(module.q_proj, q), (module.k_proj, k), (module.v_proj, v), (module.out_proj, out)]
        return scale_projections(layers)

    return ModelPatch(kind="weights", name="clip_attention_multiply", apply=apply,
                      options={"q": q, "k": k, "v": v, "out": out})
