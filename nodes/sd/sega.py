"""Semantic guidance, SEGA (Brack et al. 2023, "SEGA: Instructing Text-to-Image Models using Semantic
Guidance", arXiv 2301.12247): steer an image toward or away from concepts, on top of classifier-free guidance.

Each concept c is a text prompt whose noise prediction eps_c is evaluated with cond and uncond (one batched
UNet call: the concept's conditioning joins `CFGDenoiser.extra_conds`). Per step, in epsilon space as the
paper and diffusers' `SemanticStableDiffusionPipeline` define it:

    e_c = s_c * (+/-)(eps_c - eps_uncond)                 (- for "remove": reverse direction)
    e_c = e_c where |e_c| >= quantile(|e_c|, threshold_c), else 0      (per image and latent channel)
    g_c = w_c * e_c + momentum_scale_c * m_c              (w_c: edit weight, clamped at 0)
    m_c <- momentum_beta_c * m_c + (1 - momentum_beta_c) * g_c          (every step, warm-up included)
    eps = eps_cfg + sum_c g_c                             once every concept is past its warm-up
    eps = eps_cfg + sum_{c warm} w_c e_c / sum_{c warm} w_c   while only some are (no momentum then)

diffusers keeps one momentum for the weighted sum of all concepts with one (scale, beta); momentum is linear,
so one momentum per concept is the same thing when every concept has the same (scale, beta), and lets chained
nodes set their own. Our denoiser works in x0 = x - sigma * eps, so the concept's epsilon offset is
(x0_uncond - x0_c) / sigma and the result is applied as x0_cfg - sigma * guidance (exact for epsilon models,
the implied epsilon for v-prediction ones).

A *step* is a noise level: an evaluation at a sigma different from the previous one starts the next step.
Evaluations repeated at one level (Heun's corrector, then the next step at the same sigma) use the momentum
from before that level, and the last of them sets the momentum carried on. All state lives in the term
built for one sampling run (`SemanticGuidance`), so nothing leaks between runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nodes.sd.denoisers import CFGDenoiser, GuidanceInputs
from nodes.sd.types import CondItem, ModelPatch

PATCH_NAME = "sega"


@dataclass(frozen=True)
class Concept:
    """One SEGA concept and its hyper-parameters (diffusers' editing_prompt and edit_* arguments)."""

    cond: tuple[CondItem, ...]
    """The concept prompt's conditioning (CLIPTextEncode of the concept text)."""
    reverse: bool = False
    """True steers away from the concept ("remove"), False toward it ("add")."""
    scale: float = 5.0
    warmup_steps: int = 10
    """Steps before the concept is applied (its momentum builds up from step 0)."""
    threshold: float = 0.9
    """Quantile of |guidance| below which the guidance is dropped: 0.9 keeps the largest 10 %."""
    momentum_scale: float = 0.1
    momentum_beta: float = 0.4
    weight: float = 1.0
    """The concept's edit weight against the others (diffusers' edit_weights); negative counts as 0."""

    def __post_init__(self) -> None:
        if not self.cond:
            raise ValueError("a SEGA concept needs conditioning (its prompt encoded)")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"SEGA threshold must be in [0, 1], got {self.threshold}")
        if not 0.0 <= self.momentum_beta <= 1.0:
            raise ValueError(f"SEGA momentum_beta must be in [0, 1], got {self.momentum_beta}")
        if self.warmup_steps < 0:
            raise ValueError(f"SEGA warmup_steps must be >= 0, got {self.warmup_steps}")

    @property
    def evaluated(self) -> bool:
        """A zero-scale concept's guidance is zero whatever the model says: it costs no UNet evaluation."""
        return self.scale != 0.0


def threshold_guidance(guidance: Tensor, threshold: float) -> Tensor:
    """Keep entries whose magnitude reaches the `threshold` quantile of |guidance| over each image's channel.

    The quantile (linear interpolation) is taken over the spatial positions of every (image, channel) pair,
    as in diffusers' pipeline; entries below it become 0.
    """
    magnitude = guidance.abs()
    flat = magnitude.flatten(start_dim=2)
    floor = torch.quantile(flat.float(), threshold, dim=2).to(guidance.dtype)
    return torch.where(magnitude >= floor[:, :, None, None], guidance, torch.zeros_like(guidance))


class _ConceptRun:
    """One concept during one run: where its prediction is in `extra_denoised`, and its momentum."""

    def __init__(self, concept: Concept, extra_index: int | None) -> None:
        self.concept, self.extra_index = concept, extra_index
        self.momentum_before: Tensor | None = None
        """Momentum at the end of the previous step (None: zero)."""
        self.momentum_after: Tensor | None = None
        """Momentum after the latest evaluation of the current step."""

    def edit(self, inputs: GuidanceInputs, uncond: Tensor, sigma: Tensor) -> Tensor:
        """e_c in epsilon space: scaled, signed, thresholded concept direction (zeros for scale 0)."""
        if self.extra_index is None:
            return torch.zeros_like(uncond)
        concept_x0 = inputs.extra_denoised[self.extra_index]
        direction = (uncond - concept_x0) / sigma  # eps_c - eps_uncond
        if self.concept.reverse:
            direction = -direction
        return threshold_guidance(direction * self.concept.scale, self.concept.threshold)


class SemanticGuidance:
    """The SEGA guidance term of one sampling run: every SEGA patch of the model adds a concept to it.

    Call it with GuidanceInputs (after CFG); it returns x0 with the concepts' guidance added.
    """

    def __init__(self, cfg_denoiser: CFGDenoiser) -> None:
        self.cfg_denoiser = cfg_denoiser
        self.concepts: list[_ConceptRun] = []
        self.step = -1
        self._last_sigma: tuple[float, ...] | None = None

    def add(self, concept: Concept) -> Callable[[], None]:
        """Add a concept (its conditioning joins the CFG batch unless its scale is 0); returns the undo."""
        index = None
        if concept.evaluated:
            index = len(self.cfg_denoiser.extra_conds)
            self.cfg_denoiser.extra_conds.append(concept.cond)
        run = _ConceptRun(concept, index)
        self.concepts.append(run)

        def undo() -> None:
            self.concepts.remove(run)
            if index is not None:
                del self.cfg_denoiser.extra_conds[index]

        return undo

    def _advance(self, sigma: Tensor) -> None:
        """Start the next step when the noise level changed since the last evaluation."""
        key = tuple(float(s) for s in sigma.reshape(-1))
        if key == self._last_sigma:
            return
        self._last_sigma = key
        self.step += 1
        for run in self.concepts:
            run.momentum_before = run.momentum_after

    def __call__(self, inputs: GuidanceInputs) -> Tensor:
        if not any(run.concept.evaluated for run in self.concepts):
            return inputs.denoised
        uncond = inputs.uncond_denoised
        if uncond is None:
            raise ValueError("SEGA needs the unconditional prediction, but CFG skipped it")
        self._advance(inputs.sigma)
        sigma = inputs.sigma.reshape(-1).to(uncond).expand(uncond.shape[0]).reshape(-1, 1, 1, 1)
        weighted: list[Tensor] = []
        combined = torch.zeros_like(uncond)
        for run in self.concepts:
            concept = run.concept
            weighted.append(max(concept.weight, 0.0) * run.edit(inputs, uncond, sigma))
            momentum = run.momentum_before
            step_guidance = weighted[-1] if momentum is None else weighted[-1] + concept.momentum_scale * momentum
            run.momentum_after = (
                (1 - concept.momentum_beta) * step_guidance
                if momentum is None
                else concept.momentum_beta * momentum + (1 - concept.momentum_beta) * step_guidance
            )
            combined = combined + step_guidance
        warm = [k for k, run in enumerate(self.concepts) if self.step >= run.concept.warmup_steps]
        if not warm:
            return inputs.denoised
        if len(warm) < len(self.concepts):
            total_weight = sum(max(self.concepts[k].concept.weight, 0.0) for k in warm)
            if total_weight <= 0.0:
                return inputs.denoised
            combined = sum((weighted[k] for k in warm), torch.zeros_like(uncond)) / total_weight
        return inputs.denoised - sigma * combined


def sega_patch(concept: Concept) -> ModelPatch:
    """A "guidance" ModelPatch adding `concept` to the run's SEGA term (created by the first such patch).

    Chained SEGA patches share one term, so warm-up and weights act across all of a model's concepts as in
    the paper; each run builds its own term, so momentum never outlives the run.
    """

    def apply(cfg_denoiser: CFGDenoiser) -> Callable[[], None]:
        term = next((t for t in cfg_denoiser.guidance_terms if isinstance(t, SemanticGuidance)), None)
        created = term is None
        if term is None:
            term = SemanticGuidance(cfg_denoiser)
            cfg_denoiser.guidance_terms.append(term)
        remove_concept = term.add(concept)

        def undo() -> None:
            remove_concept()
            if created:
                cfg_denoiser.guidance_terms.remove(term)

        return undo

    options = {
        "reverse": concept.reverse, "scale": concept.scale, "warmup_steps": concept.warmup_steps,
        "threshold": concept.threshold, "momentum_scale": concept.momentum_scale,
        "momentum_beta": concept.momentum_beta, "weight": concept.weight,
    }
    return ModelPatch(kind="guidance", name=PATCH_NAME, apply=apply, options=options)
