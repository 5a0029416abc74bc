"""The denoising loss every fine-tuning method here minimises, with any set of trainable tensors.

Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", Algorithm 1): draw a timestep t uniformly and noise
eps ~ N(0, I), form x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with the model's own cumulative alphas, and
regress the UNet's output on eps (epsilon prediction) or on v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
(v-prediction, Salimans & Ho 2022, "Progressive Distillation", section 4). Every draw comes from the step's
generator, so the loss of a step is a function of (trainable tensors, seed, step).

What is trained is the caller's: `unet_with(unet, overrides)` runs the UNet with some of its weights replaced by
tensors computed from trainable ones (W + up @ down for LoRA, new K/V weights for Custom Diffusion) without ever
touching the module the model manager caches; an embedding is trained through the conditioning instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch.func import functional_call

LOSSES: tuple[str, ...] = ("MSE", "L1", "Huber", "SmoothL1")
"""The regression losses a training node offers (ComfyUI's TrainLoraNode choices), torch's defaults (delta 1)."""

UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(x_t [B,4,h,w], timesteps [B] int64, text states [B,T,D]) -> UNet output [B,4,h,w]."""


def regression(prediction: torch.Tensor, target: torch.Tensor, loss: str = "MSE") -> torch.Tensor:
    """Per-item loss [B] (mean over each item's elements) of one of LOSSES."""
    functions = {"MSE": F.mse_loss, "L1": F.l1_loss, "Huber": F.huber_loss, "SmoothL1": F.smooth_l1_loss}
    if loss not in functions:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    return functions[loss](prediction.float(), target.float(), reduction="none").flatten(1).mean(dim=1)


def unet_with(unet: torch.nn.Module, overrides: Mapping[str, torch.Tensor] | None = None) -> UNetFn:
    """A UNet call whose weights named in `overrides` are replaced (for this call only).

    Every other parameter is passed detached, so gradients reach only the tensors `overrides` is computed
    from, and the cached module is left exactly as it was (no .grad, no changed weight, no hook).
    """
    weights = {name: param.detach() for name, param in unet.named_parameters()}
    unknown = sorted(set(overrides or {}) - set(weights))
    if unknown:
        raise ValueError(f"UNet has no parameter(s) {', '.join(unknown[:5])}")
    weights.update(overrides or {})

    def call(x: torch.Tensor, timesteps: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        out = functional_call(unet, weights, (x, timesteps), {"encoder_hidden_states": states}, strict=False)
        return out.sample if hasattr(out, "sample") else out[0]

    return call


def plain_unet(unet: torch.nn.Module) -> UNetFn:
    """A UNet call with the module's weights as they are at call time (see `replaced_weights`)."""

    def call(x: torch.Tensor, timesteps: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        out = unet(x, timesteps, encoder_hidden_states=states)
        return out.sample if hasattr(out, "sample") else out[0]

    return call


@contextlib.contextmanager
def replaced_weights(unet: torch.nn.Module, overrides: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Run the UNet with `overrides` in place of those weights and every other weight detached, for the whole
    forward AND backward pass of a step; restored on exit.

    `unet_with` swaps weights for the forward call only, which is all a plain backward needs; gradient
    checkpointing recomputes blocks during backward, so the swapped weights must still be in place then (the
    recomputation must see the tensors the forward saw). The cached module is changed only inside the block,
    on the worker's one thread, and gets no gradient.
    """
    weights = {name: param.detach() for name, param in unet.named_parameters()}
    unknown = sorted(set(overrides) - set(weights))
    if unknown:
        raise ValueError(f"UNet has no parameter(s) {', '.join(unknown[:5])}")
    weights.update(overrides)
    saved: list[tuple[torch.nn.Module, str, torch.Tensor | None]] = []
    try:
        for name, tensor in weights.items():
            owner_path, _, leaf = name.rpartition(".")
            owner = unet.get_submodule(owner_path)
            saved.append((owner, leaf, owner._parameters[leaf]))
            owner._parameters[leaf] = tensor  # type: ignore[assignment]  (a plain tensor, for this step only)
        yield
    finally:
        for owner, leaf, original in reversed(saved):
            owner._parameters[leaf] = original


def noisy_latents(latents: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator, *,
                  timestep_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, eps, t): forward-diffused latents, the noise used and the timesteps, all drawn from `generator`.

    Args:
        latents: clean latents x_0 [B, C, h, w] in the UNet's units.
        alphas_cumprod: the model's schedule (ModelHandle.alphas_cumprod), T values.
        timestep_range: [low, high) to draw t from (default: all T timesteps).
    """
    low, high = timestep_range or (0, alphas_cumprod.shape[0])
    batch = latents.shape[0]
    timesteps = torch.randint(low, high, (batch,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    alpha_bar = alphas_cumprod[timesteps].to(torch.float32).view(-1, 1, 1, 1)
    noise = noise.to(latents.device)
    alpha_bar = alpha_bar.to(latents.device)
    noisy = alpha_bar.sqrt() * latents.float() + (1.0 - alpha_bar).sqrt() * noise
    return noisy, noise, timesteps.to(latents.device)


def noise_loss(
    unet: UNetFn,
    latents: torch.Tensor,
    states: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator,
    *,
    prediction: str = "epsilon",
    loss: str = "MSE",
    weights: torch.Tensor | None = None,
    timestep_range: tuple[int, int] | None = None,
    teacher: tuple[UNetFn, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The denoising loss of one batch (a scalar to backpropagate).

    Args:
        unet: the UNet call (`unet_with(...)`, or any UNetFn).
        latents: clean latents [B, 4, h, w] in the UNet's units (VAE latents times the scaling factor).
        states: text conditioning [B, T, D] (one caption's states per item).
        alphas_cumprod: the model's cumulative alphas (ModelHandle.alphas_cumprod).
        generator: the step's generator (loop.step_generator).
        prediction: "epsilon" or "v_prediction" (ModelHandle.prediction).
        loss: one of LOSSES.
        weights: per-item weights [B] (DreamBooth's prior-preservation weight, say); the mean of
            weight * item loss is returned.
        teacher: (a frozen UNet call, bool mask [B]): the masked items regress on that UNet's output for the
            same noisy input instead of on the noise (prior preservation by distillation: the base model's
            own prediction, a far less noisy target than a fresh noise draw).
    """
    if prediction not in ("epsilon", "v_prediction"):
        raise ValueError(f"unknown prediction type {prediction!r}; expected 'epsilon' or 'v_prediction'")
    if states.shape[0] != latents.shape[0]:
        raise ValueError(f"{latents.shape[0]} latents but {states.shape[0]} conditioning items")
    noisy, noise, timesteps = noisy_latents(latents, alphas_cumprod, generator, timestep_range=timestep_range)
    target = noise
    if prediction == "v_prediction":
        alpha_bar = alphas_cumprod[timesteps.cpu()].to(torch.float32).view(-1, 1, 1, 1).to(latents.device)
        target = alpha_bar.sqrt() * noise - (1.0 - alpha_bar).sqrt() * latents.float()
    if teacher is not None:
        frozen, mask = teacher
        mask = mask.to(latents.device)
        if mask.any():
            with torch.no_grad():
                taught = frozen(noisy[mask], timesteps[mask], states[mask]).float()
            target = target.clone()
            target[mask] = taught
    per_item = regression(unet(noisy, timesteps, states), target, loss)
    if weights is not None:
        per_item = per_item * weights.to(per_item)
    return per_item.mean()
