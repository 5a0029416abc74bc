"""Perp-Neg: negative prompts that only remove what is perpendicular to the positive (Armandpour et al. 2023,
"Re-imagine the Negative Prompt Algorithm: Transform 2D Diffusion into 3D, alleviate Janus problem and Beyond",
arXiv 2304.04968).

Plain CFG subtracts the whole negative direction, including the part it shares with the positive, which
weakens the positive concept. Perp-Neg takes both directions relative to an empty prompt, projects the
negative onto the positive, and subtracts only the perpendicular remainder. The maths works on x0 predictions
(an affine map of the eps predictions at one x and sigma, so the directions and the projection are the same).

`perp_neg_patch` is ComfyUI's PerpNeg model patch: a "guidance" ModelPatch whose term evaluates the empty
prompt in the CFG batch (`CFGDenoiser.extra_conds`) and replaces the run's CFG with Perp-Neg.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from nodes.sd.denoisers import CFGDenoiser, GuidanceInputs
from nodes.sd.types import CondItem, ModelPatch

PATCH_NAME = "perp_neg"


def perp_neg(positive: Tensor, negative: Tensor, empty: Tensor, neg_scale: float, cond_scale: float) -> Tensor:
    """empty + cond_scale * (pos - neg_scale * perp), with pos = positive - empty, neg = negative - empty and
    perp = neg - (<neg, pos> / |pos|^2) pos.

    The projection is taken over the whole tensor (every batch item together), as ComfyUI does.
    """
    pos = positive - empty
    neg = negative - empty
    perp = neg - ((neg * pos).sum() / pos.norm() ** 2) * pos
    return empty + cond_scale * (pos - perp * neg_scale)


class PerpNegTerm:
    """The guidance term of one run: swaps CFG's result for Perp-Neg's, keeping what earlier terms added."""

    def __init__(self, extra_index: int, neg_scale: float) -> None:
        self.extra_index, self.neg_scale = extra_index, neg_scale

    def __call__(self, inputs: GuidanceInputs) -> Tensor:
        uncond = inputs.uncond_denoised
        if uncond is None:
            raise ValueError("PerpNeg needs the negative prediction, but CFG skipped it")
        cond, empty = inputs.cond_denoised, inputs.extra_denoised[self.extra_index]
        plain = uncond + (cond - uncond) * inputs.cfg
        return inputs.denoised - plain + perp_neg(cond, uncond, empty, self.neg_scale, inputs.cfg)


def perp_neg_patch(empty_conditioning: Sequence[CondItem], neg_scale: float) -> ModelPatch:
    """A "guidance" ModelPatch applying Perp-Neg with `empty_conditioning` as the neutral prompt."""
    if not empty_conditioning:
        raise ValueError("PerpNeg: empty_conditioning has no entries (encode an empty prompt)")
    empty = tuple(empty_conditioning)

    def apply(cfg_denoiser: CFGDenoiser) -> Callable[[], None]:
        index = len(cfg_denoiser.extra_conds)
        cfg_denoiser.extra_conds.append(empty)
        term = PerpNegTerm(index, neg_scale)
        cfg_denoiser.guidance_terms.append(term)

        def undo() -> None:
            cfg_denoiser.guidance_terms.remove(term)
            del cfg_denoiser.extra_conds[index]

        return undo

    return ModelPatch(kind="guidance", name=PATCH_NAME, apply=apply, options={"neg_scale": neg_scale})
