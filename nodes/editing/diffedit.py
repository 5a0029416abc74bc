"""DiffEditMask: where an edit from a source to a target prompt should happen (DiffEdit's step 1), as a MASK."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nodegraph import Combo, Float, Int, Node, NodeContext, NodeSchema, Out, Socket

from ..sampling.ksampler import MAX_SEED, run_model
from ..sd.schedules import SCHEDULERS
from ..sd.types import Conditioning, Latent, ModelHandle
from .inversion import CATEGORY


class DiffEditMask(Node):
    schema = NodeSchema(
        type_id="DiffEditMask", display_name="DiffEdit Mask", category=CATEGORY,
        description="DiffEdit's mask (Couairon et al. 2022, arXiv 2210.11427): the image latent is noised to "
                    "`strength` with num_maps seeded draws, and where the target prompt's noise prediction "
                    "differs most from the source prompt's (mean over draws and channels, clamped at "
                    "threshold_ratio x its mean, > 0.5) the mask is 1, as diffusers' generate_mask computes it. "
                    "Feed it to SetLatentNoiseMask and sample from DDIMInversion's NOISE to edit only there.",
        inputs=(Socket("model", "MODEL"), Socket("source", "CONDITIONING"), Socket("target", "CONDITIONING"),
                Socket("negative", "CONDITIONING"), Socket("latent_image", "LATENT"),
                Int("seed", 0, min=0, max=MAX_SEED, control_after_generate=True),
                Int("steps", 20, min=1, max=10000),
                Float("cfg", 7.5, min=0.0, max=100.0, step=0.1, round=0.01),
                Combo("scheduler", tuple(SCHEDULERS), "simple"),
                Float("strength", 0.5, min=0.01, max=1.0, step=0.01,
                      tooltip="Noise level of the comparison, as a fraction of the schedule (diffusers' "
                              "mask_encode_strength)."),
                Int("num_maps", 10, min=1, max=100, tooltip="Noise draws averaged (num_maps_per_mask)."),
                Float("threshold_ratio", 3.0, min=0.01, max=100.0, step=0.01,
                      tooltip="Clamp at this multiple of the mean difference before thresholding at half of it "
                              "(mask_thresholding_ratio).")),
        outputs=(Out("MASK", "mask"), Out("MASK", "difference_map")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, source: Conditioning, target: Conditioning,
                negative: Conditioning, latent_image: Latent, seed: int, steps: int, cfg: float, scheduler: str,
                strength: float, num_maps: int, threshold_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
        from ..sd.diffedit import diffedit_mask

        mask, guidance_map = diffedit_mask(
            run_model(ctx, model), latent_image.samples, (source, negative), (target, negative), cfg=cfg,
            scheduler=scheduler, steps=steps, strength=strength, num_maps=num_maps, threshold_ratio=threshold_ratio,
            seed=seed)
        scaled = (guidance_map / (guidance_map.mean() * threshold_ratio)).clamp(0, 1)
        difference = F.interpolate(scaled[:, None], size=tuple(mask.shape[-2:]), mode="nearest")[:, 0]
        return mask, difference


NODES = (DiffEditMask,)
