"""Attend-and-Excite (Chefer et al. 2023, "Attend-and-Excite: Attention-Based Semantic Guidance for Text-to-Image
Diffusion Models", arXiv 2301.13826) as a "latent_update" model patch.

Text-to-image models often drop one of several subjects ("catastrophic neglect"). At each early step the latent
z_t (the variance-preserving latent diffusers' schedulers hold, x / sqrt(1 + sigma^2) in sigma form) is moved by
one gradient step that makes every selected subject token attended somewhere in the image:

1. The UNet runs on z_t with the positive conditioning alone; the cross-attention probabilities of every layer
   whose map has the chosen resolution are averaged over heads and layers: A [h, w, tokens].
2. The start-of-text token is dropped and the rest re-normalised: softmax(100 * A[..., 1:stop]) over tokens
   (paper Sec. 3.2). `stop` is the end-of-text position in the paper's code (the prompt's own tokens);
   diffusers' pipeline keeps every position but the last (stop = 76, padding included).
3. Each subject token's map is smoothed by a 3x3 Gaussian (the authors' kernel exp(-(d / 2 sigma)^2),
   sigma 0.5, reflect padding) and its maximum taken; loss = max over tokens of (1 - that maximum), i.e.
   1 - the weakest subject's strongest attention.
4. z_t <- z_t - alpha_t * dL/dz_t with alpha_t = scale * sqrt(linspace(1, 0.5, steps)[t]), for the first
   `max_iter_to_alter` steps. At the threshold steps (default 0, 10, 20) the step repeats (up to
   `max_refinement_steps` times) while the loss is above 1 - threshold ("iterative latent refinement").

The model is then evaluated (with CFG and every other patch) at the moved latent, and the sampler continues
from it (`ksampler.LatentUpdateDenoiser`), so with DDIM/Euler this is diffusers'
StableDiffusionAttendAndExcitePipeline step for step. Attention is recorded by a diffusers attention processor
set on the UNet's cross-attention layers only while the A&E evaluation runs (a UNet wrapper), and restored right
after: sampling calls and the shared, cached UNet never see it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nodes.sd.denoisers import CFGDenoiser, UNetCall, UNetDenoiser, calc_cond_batch
from nodes.sd.types import CondItem, ModelPatch

PATCH_NAME = "attend_and_excite"
DEFAULT_THRESHOLDS: dict[int, float] = {0: 0.05, 10: 0.5, 20: 0.8}
"""Steps with iterative refinement and the subject attention each must reach (the paper's and diffusers')."""
SOFTMAX_TEMPERATURE = 100.0
SMOOTHING_SIGMA = 0.5


@dataclass(frozen=True)
class ExciteSettings:
    """What the AttendAndExcite node chose: token positions in the prompt's 77-token window and the schedule."""

    indices: tuple[int, ...]
    """Positions of the subject tokens (0 is start-of-text)."""
    stop: int
    """Tokens 1..stop-1 are re-normalised by the softmax (the end-of-text position in the paper's code)."""
    scale: float = 20.0
    max_iter_to_alter: int = 25
    thresholds: Mapping[int, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    max_refinement_steps: int = 20
    attention_downscale: int = 4
    """Maps are read at the latent size divided by this (diffusers' attn_res: image size / 32)."""


def parse_thresholds(text: str) -> dict[int, float]:
    """"0:0.05, 10:0.5" -> {0: 0.05, 10: 0.5}; empty text is no refinement."""
    thresholds: dict[int, float] = {}
    for part in text.replace(";", ",").split(","):
        if not part.strip():
            continue
        step, sep, value = part.partition(":")
        try:
            thresholds[int(step)] = float(value)
        except ValueError:
            raise ValueError(f"threshold {part.strip()!r} is not 'step:value' (e.g. '0:0.05, 10:0.5')") from None
        if not sep or not 0.0 <= thresholds[int(step)] <= 1.0 or int(step) < 0:
            raise ValueError(f"threshold {part.strip()!r} needs a step >= 0 and a value in 0..1")
    return thresholds


def smoothing_kernel(sigma: float = SMOOTHING_SIGMA, size: int = 3) -> Tensor:
    """The authors' 2-D smoothing kernel: prod over axes of exp(-((i - centre) / (2 sigma))^2), summing to 1."""
    positions = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    profile = torch.exp(-((positions / (2 * sigma)) ** 2))
    kernel = profile[:, None] * profile[None, :]
    return kernel / kernel.sum()


def max_attention_per_token(maps: Tensor, indices: Sequence[int], stop: int) -> Tensor:
    """The smoothed maximum attention of each subject token, [len(indices)] (paper Sec. 3.2).

    Args:
        maps: averaged cross-attention probabilities [h, w, tokens] of one image.
        indices: subject token positions (>= 1, < stop).
        stop: tokens 1..stop-1 take part in the softmax.
    """
    text = torch.softmax(maps[:, :, 1:stop] * SOFTMAX_TEMPERATURE, dim=-1)
    kernel = smoothing_kernel().to(maps.device, maps.dtype)[None, None]
    maxima = []
    for index in indices:
        image = F.pad(text[:, :, index - 1][None, None], (1, 1, 1, 1), mode="reflect")
        maxima.append(F.conv2d(image, kernel).max())
    return torch.stack(maxima)


def excite_loss(maxima: Tensor) -> Tensor:
    """1 - the weakest subject's attention maximum, never below 0 (paper eq. 1's max over tokens)."""
    return torch.clamp(1.0 - maxima, min=0.0).max()


class CrossAttentionRecorder:
    """A diffusers attention processor computing cross-attention explicitly (so gradients reach the
    probabilities) and keeping probabilities [batch * heads, h * w, tokens] whose map has `size` pixels."""

    def __init__(self, previous: Any, store: list[Tensor], size: int) -> None:
        self.previous, self.store, self.size = previous, store, size

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs: Any) -> Tensor:
        plain = (encoder_hidden_states is None or hidden_states.ndim != 3 or attn.group_norm is not None
                 or attn.spatial_norm is not None or attn.residual_connection or attn.norm_cross)
        if plain:
            return self.previous(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, temb=temb, **kwargs)
        mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], hidden_states.shape[0])
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, mask)
        if probs.shape[1] == self.size:
            self.store.append(probs)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def cross_attention_modules(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The UNet's cross-attention layers (diffusers' attn2 in down, mid and up blocks)."""
    return [(name, module) for name, module in unet.named_modules()
            if name.endswith(".attn2") and hasattr(module, "set_processor")]


class AttendAndExcite:
    """One sampling run's A&E: the latent update (a CFGDenoiser "latent_update") and the UNet wrapper that
    records cross-attention while that update evaluates the model."""

    def __init__(self, settings: ExciteSettings, cfg_denoiser: CFGDenoiser) -> None:
        self.settings, self.cfg_denoiser = settings, cfg_denoiser
        self.unet_denoiser: UNetDenoiser = cfg_denoiser.model
        self.positive: tuple[CondItem, ...] = cfg_denoiser.positive
        self.recording: tuple[list[Tensor], int] | None = None
        self.done: set[int] = set()
        self.losses: list[tuple[int, float]] = []
        """(step, loss before the step's update) per image, for inspection and tests."""

    def record(self, call: UNetCall, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor:
        """UNetWrapper: with recording on, run the call with CrossAttentionRecorders on the attn2 layers."""
        if self.recording is None:
            return call(sample, timestep, kwargs)
        store, size = self.recording
        restore = []
        try:
            for _name, module in cross_attention_modules(self.unet_denoiser.unet):
                restore.append((module, module.processor))
                module.set_processor(CrossAttentionRecorder(module.processor, store, size))
            return call(sample, timestep, kwargs)
        finally:
            for module, previous in reversed(restore):
                module.set_processor(previous)

    def step_index(self, sigma: Tensor) -> int | None:
        """The schedule position of this evaluation's sigma, or None for a sigma between the schedule's."""
        sigmas = self.cfg_denoiser.run_sigmas
        if sigmas is None:
            raise ValueError("Attend-and-Excite needs the run's sigmas (CFGDenoiser.run_sigmas); sample through "
                             "ksampler.sample_custom")
        value = float(sigma.reshape(-1)[0])
        distance = (sigmas[:-1].double() - value).abs()
        index = int(distance.argmin())
        return index if distance[index] <= 1e-4 * max(value, 1e-3) else None

    def loss(self, z: Tensor, sigma: Tensor) -> Tensor:
        """The A&E loss of one image's variance-preserving latent z [1, C, H, W] (differentiable in z)."""
        down = self.settings.attention_downscale
        size = (z.shape[-2] // down) * (z.shape[-1] // down)
        store: list[Tensor] = []
        self.recording = (store, size)
        try:
            scale = (sigma.reshape(-1, 1, 1, 1) ** 2 + 1).sqrt()
            calc_cond_batch(self.unet_denoiser, [self.positive], z * scale.to(z), sigma)
        finally:
            self.recording = None
        if not store:
            raise ValueError(f"Attend-and-Excite found no cross-attention map at {z.shape[-2] // down}x"
                             f"{z.shape[-1] // down} (latent / attention_downscale {down}); pick another downscale")
        maps = torch.cat([probs.reshape(-1, z.shape[-2] // down, z.shape[-1] // down, probs.shape[-1])
                          for probs in store]).mean(0)
        return excite_loss(max_attention_per_token(maps, self.settings.indices, self.settings.stop))

    def moved(self, z: Tensor, sigma: Tensor, step: int) -> Tensor:
        """One image's latent after the step's refinement and gradient update (diffusers' order)."""
        settings = self.settings
        steps = len(self.cfg_denoiser.run_sigmas) - 1  # type: ignore[arg-type]
        size = settings.scale * math.sqrt(1.0 - 0.5 * step / max(steps - 1, 1))

        def update(latent: Tensor, loss: Tensor) -> Tensor:
            (grad,) = torch.autograd.grad(loss, [latent])
            return (latent - size * grad).detach()

        latent = z.detach().requires_grad_(True)
        loss = self.loss(latent, sigma)
        self.losses.append((step, float(loss.detach())))
        threshold = settings.thresholds.get(step)
        if threshold is not None and float(loss.detach()) > 1.0 - threshold:
            # iterative refinement in diffusers' order: each try evaluates, then steps (also the try that
            # reached the target), then one more evaluation gives the loss of the step's regular update
            for _ in range(settings.max_refinement_steps):
                latent = latent.detach().requires_grad_(True)
                loss = self.loss(latent, sigma)
                if float(loss.detach()) > 0.0:
                    latent = update(latent, loss)
                if float(loss.detach()) <= 1.0 - threshold:
                    break
            latent = latent.detach().requires_grad_(True)
            loss = self.loss(latent, sigma)
        if step < settings.max_iter_to_alter and float(loss.detach()) > 0.0:
            latent = update(latent, loss)
        return latent.detach()

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """LatentUpdate: x moved by A&E at the first evaluation of each of the first steps; else x itself."""
        step = self.step_index(sigma)
        settings = self.settings
        if step is None or step in self.done or (step >= settings.max_iter_to_alter
                                                 and step not in settings.thresholds):
            return x
        self.done.add(step)
        sigma = sigma.reshape(-1).to(x.device, x.dtype).expand(x.shape[0])
        scale = (sigma**2 + 1).sqrt().reshape(-1, 1, 1, 1)
        with torch.enable_grad():
            z = torch.cat([self.moved((x[k : k + 1] / scale[k]), sigma[k : k + 1], step)
                           for k in range(x.shape[0])])
        return z * scale


def attend_excite_patch(settings: ExciteSettings) -> ModelPatch:
    """A "latent_update" ModelPatch for Attend-and-Excite: on the run's CFGDenoiser it installs the latent update
    and, on its UNetDenoiser, the wrapper recording cross-attention during that update only."""
    if not settings.indices:
        raise ValueError("Attend-and-Excite needs at least one subject token")
    if any(index < 1 or index >= settings.stop for index in settings.indices):
        raise ValueError(f"subject token positions {list(settings.indices)} must lie in 1..{settings.stop - 1}")

    def apply(cfg_denoiser: CFGDenoiser) -> Callable[[], None]:
        excite = AttendAndExcite(settings, cfg_denoiser)
        cfg_denoiser.model.wrappers.append(excite.record)
        cfg_denoiser.latent_updates.append(excite)

        def undo() -> None:
            cfg_denoiser.latent_updates.remove(excite)
            cfg_denoiser.model.wrappers.remove(excite.record)

        return undo

    options = {"indices": list(settings.indices), "stop": settings.stop, "scale": settings.scale,
               "max_iter_to_alter": settings.max_iter_to_alter, "thresholds": dict(settings.thresholds),
               "max_refinement_steps": settings.max_refinement_steps,
               "attention_downscale": settings.attention_downscale}
    return ModelPatch(kind="latent_update", name=PATCH_NAME, apply=apply, options=options)


def subject_token_positions(window_ids: Sequence[int], word_ids: Sequence[Sequence[int]], eos_id: int,
                            words: Sequence[str]) -> tuple[tuple[int, ...], int]:
    """The positions of each word's tokens in a bos ... eos window, and the end-of-text position.

    Raises:
        ValueError: a word whose tokens do not occur in the prompt.
    """
    stop = list(window_ids).index(eos_id, 1)
    positions: list[int] = []
    for word, ids in zip(words, word_ids):
        found = [p for p in range(1, stop - len(ids) + 1) if list(window_ids[p : p + len(ids)]) == list(ids)]
        if not ids or not found:
            raise ValueError(f"subject word {word!r} is not in the prompt")
        positions += [p + k for p in found[:1] for k in range(len(ids))]
    return tuple(dict.fromkeys(positions)), stop
