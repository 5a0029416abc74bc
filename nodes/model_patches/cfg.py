"""Guidance patch nodes: CFG variants and perturbed-attention guidance (ComfyUI's nodes of the same names).

Each returns a new MODEL handle with one more patch (nodes/sd/cfg_variants.py, nodes/sd/pag.py); the input
handle and its UNet are left as they are.
"""

from __future__ import annotations

from nodegraph import Float, Int, Node, NodeContext, NodeSchema, Out, Socket

from nodes.sd.types import ModelHandle


class RescaleCFG(Node):
    schema = NodeSchema(
        type_id="RescaleCFG", display_name="RescaleCFG", category="advanced/model",
        description="CFG on v predictions rescaled toward the cond's std (Lin et al. 2023): less over-saturation "
                    "at high CFG.",
        inputs=(Socket("model", "MODEL"), Float("multiplier", 0.7, min=0.0, max=1.0, step=0.01)),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, multiplier: float) -> tuple[ModelHandle]:
        from nodes.sd.cfg_variants import rescale_cfg_patch

        return (model.with_patch(rescale_cfg_patch(multiplier)),)


class PerturbedAttentionGuidance(Node):
    schema = NodeSchema(
        type_id="PerturbedAttentionGuidance", display_name="PerturbedAttentionGuidance",
        category="model_patches/unet",
        description="Guides away from a prediction with the middle block's self-attention made identity "
                    "(Ahn et al. 2024, arXiv 2403.17377): sharper structure.",
        inputs=(Socket("model", "MODEL"), Float("scale", 3.0, min=0.0, max=100.0, step=0.01, round=0.01)),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, scale: float) -> tuple[ModelHandle]:
        from nodes.sd.pag import pag_patch

        return (model.with_patch(pag_patch(scale)),)


class APG(Node):
    schema = NodeSchema(
        type_id="APG", display_name="Adaptive Projected Guidance", category="sampling/custom_sampling",
        description="Adaptive projected guidance (Sadat et al. 2024, arXiv 2410.02416): damps the guidance "
                    "parallel to the cond prediction, with momentum and a norm limit.",
        inputs=(Socket("model", "MODEL"),
                Float("eta", 1.0, min=-10.0, max=10.0, step=0.01,
                      tooltip="Controls the scale of the parallel guidance vector. Default CFG behavior at a "
                              "setting of 1."),
                Float("norm_threshold", 5.0, min=0.0, max=50.0, step=0.1,
                      tooltip="Normalize guidance vector to this value, normalization disable at a setting of 0."),
                Float("momentum", 0.0, min=0.0, max=1.0, step=0.01,
                      tooltip="Controls a running average of guidance during diffusion, disabled at a setting "
                              "of 0.")),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, eta: float, norm_threshold: float,
                momentum: float) -> tuple[ModelHandle]:
        from nodes.sd.cfg_variants import apg_patch

        return (model.with_patch(apg_patch(eta, norm_threshold, momentum)),)


class CFGZeroStar(Node):
    schema = NodeSchema(
        type_id="CFGZeroStar", display_name="CFGZeroStar", category="advanced/guidance",
        description="CFG-Zero* (Fan et al. 2025, arXiv 2503.18886): the uncond scaled by its optimal projection "
                    "on the cond.",
        inputs=(Socket("model", "MODEL"),),
        outputs=(Out("MODEL", "patched_model"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle) -> tuple[ModelHandle]:
        from nodes.sd.cfg_variants import cfg_zero_star_patch

        return (model.with_patch(cfg_zero_star_patch()),)


class CFGNorm(Node):
    schema = NodeSchema(
        type_id="CFGNorm", display_name="CFGNorm", category="advanced/guidance",
        description="Limits the guided prediction's per-pixel channel norm to the cond prediction's.",
        inputs=(Socket("model", "MODEL"), Float("strength", 1.0, min=0.0, max=100.0, step=0.01)),
        outputs=(Out("MODEL", "patched_model"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, strength: float) -> tuple[ModelHandle]:
        from nodes.sd.cfg_variants import cfg_norm_patch

        return (model.with_patch(cfg_norm_patch(strength)),)


class TCFG(Node):
    schema = NodeSchema(
        type_id="TCFG", display_name="Tangential Damping CFG", category="advanced/guidance",
        description="TCFG – Tangential Damping CFG (2503.18137)\n\nRefine the uncond (negative) to align with "
                    "the cond (positive) for improving quality.",
        inputs=(Socket("model", "MODEL"),),
        outputs=(Out("MODEL", "patched_model"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle) -> tuple[ModelHandle]:
        from nodes.sd.cfg_variants import tcfg_patch

        return (model.with_patch(tcfg_patch()),)


class Mahiro(Node):
    schema = NodeSchema(
        type_id="Mahiro", display_name="Mahiro is so cute that she deserves a better guidance function!! (。・ω・。)",
        category="_for_testing",
        description="Modify the guidance to scale more on the 'direction' of the positive prompt rather than the "
                    "difference between the negative prompt.",
        inputs=(Socket("model", "MODEL"),),
        outputs=(Out("MODEL", "patched_model"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle) -> tuple[ModelHandle]:
        from nodes.sd.cfg_variants import mahiro_patch

        return (model.with_patch(mahiro_patch()),)


class FreSca(Node):
    schema = NodeSchema(
        type_id="FreSca", display_name="FreSca", category="_for_testing",
        description="Applies frequency-dependent scaling to the guidance",
        inputs=(Socket("model", "MODEL"),
                Float("scale_low", 1.0, min=0, max=10, step=0.01,
                      tooltip="Scaling factor for low-frequency components"),
                Float("scale_high", 1.25, min=0, max=10, step=0.01,
                      tooltip="Scaling factor for high-frequency components"),
                Int("freq_cutoff", 20, min=1, max=100, step=1,
                    tooltip="Number of frequency indices around center to consider as low-frequency")),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, scale_low: float, scale_high: float,
                freq_cutoff: int) -> tuple[ModelHandle]:
        from nodes.sd.cfg_variants import fresca_patch

        return (model.with_patch(fresca_patch(scale_low, scale_high, freq_cutoff)),)


NODES = (RescaleCFG, PerturbedAttentionGuidance, APG, CFGZeroStar, CFGNorm, TCFG, Mahiro, FreSca)
