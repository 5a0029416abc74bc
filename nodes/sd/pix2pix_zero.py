"""Pix2Pix-Zero (Parmar et al. 2023, "Zero-shot Image-to-Image Translation", arXiv 2302.03027): edit an image by
an edit direction in text-embedding space while cross-attention guidance keeps the source's structure.

1. Edit direction (section 3.1): the mean text embedding of captions with the target word minus the mean of
   captions with the source word, [1, tokens, dim], added to the source prompt's embedding (`edit_direction`,
   `add_direction`). The paper generates the captions with a language model; here the user writes them.
2. Reference cross-attention maps (section 3.2): the inverted latent is sampled back with the source prompt and
   every cross-attention ("attn2") layer's probabilities are recorded per UNet call, keyed by the call's sigma and
   conditioning sets (`record_cross_attention`).
3. Cross-attention guidance (eq. 3-4): sampling with the edited prompt, before each model evaluation the UNet's
   input takes one gradient step x_t <- x_t - lambda * grad ||M_edit(x_t) - M_ref||^2 (per layer, squared error
   summed over queries and tokens, averaged over batch rows and heads, summed over layers: diffusers'
   Pix2PixZeroL2Loss), and the model is evaluated at the moved input (`pix2pix_zero_patch`).

The guidance is a "guidance" ModelPatch: a UNet wrapper moves the input per call, and a guidance term accounts for
the move of the latent itself. diffusers continues sampling from the moved latent of the unconditional row; a
denoiser cannot move the sampler's x, so the term returns x0 - delta * s / (s_next - s) (delta: that row's move,
s_next: the recorded schedule's next sigma), which makes an Euler (DDIM) step land exactly where the step from the
moved latent lands; other samplers get the same correction, exact for their Euler part only. Runs need the
recording's schedule (same scheduler, steps, sampler): calls at a sigma that was not recorded are left unguided.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from nodes.sd.denoisers import CFGDenoiser, GuidanceInputs, UNetCall, UNetDenoiser
from nodes.sd.types import Conditioning, ModelPatch

PATCH_NAME = "pix2pix_zero"
RECORD_PATCH_NAME = "cross_attention_record"
SIGMA_TOLERANCE = 1e-5
"""Relative difference below which a call's sigma counts as a recorded one."""


# -- edit direction --------------------------------------------------------------------------------------


def edit_direction(source_embeds: Sequence[Tensor], target_embeds: Sequence[Tensor]) -> Tensor:
    """mean(target) - mean(source) over caption embeddings [1, tokens, dim] each (diffusers' construct_direction)."""
    if not source_embeds or not target_embeds:
        raise ValueError("Pix2Pix-Zero needs at least one source and one target caption")
    shapes = {tuple(t.shape) for t in (*source_embeds, *target_embeds)}
    if len(shapes) != 1:
        raise ValueError(f"caption embeddings differ in shape {sorted(shapes)}: keep every caption within one "
                         "77-token window")
    source = torch.cat(list(source_embeds)).float().mean(0, keepdim=True)
    target = torch.cat(list(target_embeds)).float().mean(0, keepdim=True)
    return target - source


def add_direction(conditioning: Conditioning, direction: Tensor, strength: float = 1.0) -> Conditioning:
    """Every entry's token embeddings plus strength * direction (its tokens must match the entry's)."""
    out = []
    for item in conditioning:
        if item.embeds.shape[-2:] != direction.shape[-2:]:
            raise ValueError(f"edit direction has shape {tuple(direction.shape)} but the conditioning's embeddings "
                             f"have {tuple(item.embeds.shape)}; encode captions and prompt with the same CLIP")
        embeds = item.embeds + strength * direction.to(item.embeds.device, item.embeds.dtype)
        out.append(replace(item, embeds=embeds))
    return tuple(out)


# -- cross-attention probes ------------------------------------------------------------------------------


Sink = Callable[[str, Tensor], None]


class CrossAttentionProbe:
    """A diffusers attention processor for SD's cross-attention: ordinary attention whose probabilities
    [rows * heads, queries, tokens] (diffusers' get_attention_scores) go to `sink` with the layer's name."""

    def __init__(self, name: str, sink: Sink) -> None:
        self.name, self.sink = name, sink

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs: Any) -> Tensor:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross and encoder_hidden_states is not None:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, None)
        self.sink(self.name, probs)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))


def cross_attention_modules(unet: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """The UNet's cross-attention layers (diffusers' attn2), with their module names."""
    for name, module in unet.named_modules():
        if name.endswith(".attn2") and hasattr(module, "set_processor"):
            yield name, module


@contextmanager
def probes_installed(unet: torch.nn.Module, sink: Sink) -> Iterator[None]:
    """CrossAttentionProbes on every attn2 layer for the block, the previous processors put back after."""
    restore: list[tuple[torch.nn.Module, Any]] = []
    try:
        for name, module in cross_attention_modules(unet):
            restore.append((module, module.processor))
            module.set_processor(CrossAttentionProbe(name, sink))
        if not restore:
            raise ValueError("Pix2Pix-Zero needs a UNet with cross-attention (attn2) layers")
        yield
    finally:
        for module, previous in reversed(restore):
            module.set_processor(previous)


# -- recorded maps (the CROSS_ATTENTION_MAPS payload) -----------------------------------------------------


@dataclass(frozen=True)
class RecordedCall:
    """The cross-attention maps of one UNet call: its sigma, conditioning sets and rows, and maps per layer."""

    sigma: float
    batch_sets: tuple[int, ...]
    rows: int
    maps: tuple[tuple[str, Tensor], ...]


@dataclass(frozen=True)
class CrossAttentionMaps:
    """CROSS_ATTENTION_MAPS: the reference maps of a reconstruction run, and the schedule it ran."""

    calls: tuple[RecordedCall, ...]
    sigmas: tuple[float, ...]

    def lookup(self, sigma: float, batch_sets: tuple[int, ...], rows: int) -> RecordedCall | None:
        for call in self.calls:
            if (call.batch_sets == batch_sets and call.rows == rows
                    and math.isclose(call.sigma, sigma, rel_tol=SIGMA_TOLERANCE, abs_tol=1e-8)):
                return call
        return None

    def next_sigma(self, sigma: float) -> float | None:
        for current, following in zip(self.sigmas, self.sigmas[1:]):
            if math.isclose(current, sigma, rel_tol=SIGMA_TOLERANCE, abs_tol=1e-8):
                return following
        return None

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for call in self.calls for _, t in call.maps)


@dataclass
class _Recorder:
    unet_denoiser: UNetDenoiser
    calls: list[RecordedCall] = field(default_factory=list)

    def wrap(self, call: UNetCall, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor:
        maps: list[tuple[str, Tensor]] = []
        with probes_installed(self.unet_denoiser.unet, lambda name, probs: maps.append((name, probs.detach().cpu()))):
            out = call(sample, timestep, kwargs)
        sigma = self.unet_denoiser.current_sigma
        assert sigma is not None
        sets = self.unet_denoiser.batch_sets or (0,)
        self.calls.append(RecordedCall(float(sigma.reshape(-1)[0]), tuple(sets), int(sample.shape[0]), tuple(maps)))
        return out


def recording_patch(sink: list[RecordedCall]) -> ModelPatch:
    """An "attention" ModelPatch appending each UNet call's cross-attention maps to `sink` (one run's list)."""

    def apply(unet_denoiser: UNetDenoiser) -> Callable[[], None]:
        recorder = _Recorder(unet_denoiser, sink)
        unet_denoiser.wrappers.append(recorder.wrap)
        return lambda: unet_denoiser.wrappers.remove(recorder.wrap)

    return ModelPatch(kind="attention", name=RECORD_PATCH_NAME, apply=apply)


# -- cross-attention guidance ----------------------------------------------------------------------------


def attention_loss(probs: Tensor, reference: Tensor) -> Tensor:
    """diffusers' Pix2PixZeroL2Loss for one layer: squared error summed over queries and tokens, mean over rows."""
    return ((probs - reference.to(probs)) ** 2).sum((1, 2)).mean(0)


class CrossAttentionGuidance:
    """One run's Pix2Pix-Zero guidance: the UNet wrapper moving the input, and the term accounting for the move."""

    def __init__(self, unet_denoiser: UNetDenoiser, maps: CrossAttentionMaps, amount: float) -> None:
        self.unet_denoiser, self.maps, self.amount = unet_denoiser, maps, amount
        self.moves: list[tuple[float, Tensor]] = []
        """(sigma, move of the latent in x units) of the row the sampler continues from, per guided call."""

    def wrap(self, call: UNetCall, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor:
        sigma_rows = self.unet_denoiser.current_sigma
        sets = self.unet_denoiser.batch_sets or (0,)
        sigma = float(sigma_rows.reshape(-1)[0]) if sigma_rows is not None else math.nan
        reference = self.maps.lookup(sigma, tuple(sets), int(sample.shape[0]))
        if reference is None or self.amount == 0.0:
            return call(sample, timestep, kwargs)
        wanted = dict(reference.maps)
        losses: list[Tensor] = []

        def sink(name: str, probs: Tensor) -> None:
            if name in wanted:
                losses.append(attention_loss(probs, wanted[name]))

        with torch.enable_grad():
            x_in = sample.detach().clone().requires_grad_(True)
            with probes_installed(self.unet_denoiser.unet, sink):
                call(x_in, timestep, kwargs)
            (grad,) = torch.autograd.grad(torch.stack(losses).sum(), x_in)
        moved = (x_in - self.amount * grad).detach()
        chunk = sample.shape[0] // len(sets)
        row_set = 1 if 1 in sets else sets[0]  # diffusers steps from the unconditional row's latent
        first = sets.index(row_set) * chunk
        delta = (moved - sample)[first : first + chunk] * math.sqrt(sigma**2 + 1.0)  # scaled input -> x units
        self.moves.append((sigma, delta.detach()))
        return call(moved, timestep, kwargs)

    def __call__(self, inputs: GuidanceInputs) -> Tensor:
        moves, self.moves = self.moves, []
        if not moves:
            return inputs.denoised
        sigma, delta = moves[-1]
        following = self.maps.next_sigma(sigma)
        if following is None:
            return inputs.denoised
        factor = sigma / (sigma - following)
        return inputs.denoised + delta.to(inputs.denoised) * factor


def pix2pix_zero_patch(maps: CrossAttentionMaps, amount: float) -> ModelPatch:
    """A "guidance" ModelPatch for Pix2Pix-Zero's cross-attention guidance with step size `amount` (diffusers'
    cross_attention_guidance_amount); installs both halves on the run's objects, as SAG does."""
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"Pix2Pix-Zero guidance amount must be finite and >= 0, got {amount}")

    def apply(cfg_denoiser: CFGDenoiser) -> Callable[[], None] | None:
        if amount == 0.0:
            return None
        unet_denoiser = cfg_denoiser.model
        guidance = CrossAttentionGuidance(unet_denoiser, maps, amount)
        unet_denoiser.wrappers.append(guidance.wrap)
        cfg_denoiser.guidance_terms.append(guidance)

        def undo() -> None:
            cfg_denoiser.guidance_terms.remove(guidance)
            unet_denoiser.wrappers.remove(guidance.wrap)

        return undo

    return ModelPatch(kind="guidance", name=PATCH_NAME, apply=apply, options={"amount": amount})


def record_cross_attention(guider: Any, sampler: Any, sigmas: Tensor, latent: Any,
                           should_stop: Callable[[], bool] | None = None) -> tuple[CrossAttentionMaps, Any]:
    """Sample `latent` (an inverted one, no added noise) with `guider` and `sampler` down `sigmas`, recording every
    UNet call's cross-attention maps. Returns (the maps, the sampled LATENT)."""
    from nodes.sd.ksampler import sample_custom
    from nodes.sd.noise import Noise

    sink: list[RecordedCall] = []
    recording = replace(guider, model=guider.model.with_patch(recording_patch(sink)))
    result = sample_custom(Noise(0, enabled=False), recording, sampler, sigmas, latent, should_stop=should_stop,
                           keep_denoised=False)
    maps = CrossAttentionMaps(tuple(sink), tuple(float(s) for s in sigmas))
    return maps, result.output

