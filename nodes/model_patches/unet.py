"""UNet patch nodes (ComfyUI's "model_patches/unet" and friends): FreeU, FreeU_V2, HyperTile, TomePatchModel,
PatchModelAddDownscale, DifferentialDiffusion. Each returns a new MODEL handle with one more patch."""

from __future__ import annotations

from nodegraph import Boolean, Combo, Float, Int, Node, NodeContext, NodeSchema, Out, Socket

from nodes.sd.freeu import UPSCALE_METHODS
from nodes.sd.types import ModelHandle


def _freeu_inputs(b1: float, b2: float) -> tuple:
    return (Socket("model", "MODEL"),
            Float("b1", b1, min=0.0, max=10.0, step=0.01), Float("b2", b2, min=0.0, max=10.0, step=0.01),
            Float("s1", 0.9, min=0.0, max=10.0, step=0.01), Float("s2", 0.2, min=0.0, max=10.0, step=0.01))


class FreeU(Node):
    schema = NodeSchema(
        type_id="FreeU", display_name="FreeU", category="model_patches/unet",
        description="FreeU (Si et al. 2024, arXiv 2309.11497): boosts the decoder's backbone features (b) and "
                    "damps the skips' low frequencies (s).",
        inputs=_freeu_inputs(1.1, 1.2), outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, b1: float, b2: float, s1: float,
                s2: float) -> tuple[ModelHandle]:
        from nodes.sd.freeu import freeu_patch

        return (model.with_patch(freeu_patch(b1, b2, s1, s2, v2=False)),)


class FreeU_V2(Node):
    schema = NodeSchema(
        type_id="FreeU_V2", display_name="FreeU_V2", category="model_patches/unet",
        description="FreeU v2: the backbone boost weighted by each pixel's normalised mean feature.",
        inputs=_freeu_inputs(1.3, 1.4), outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, b1: float, b2: float, s1: float,
                s2: float) -> tuple[ModelHandle]:
        from nodes.sd.freeu import freeu_patch

        return (model.with_patch(freeu_patch(b1, b2, s1, s2, v2=True)),)


class HyperTile(Node):
    schema = NodeSchema(
        type_id="HyperTile", display_name="HyperTile", category="model_patches/unet",
        description="Self-attention on tiles of the latent (HyperTile): faster at large sizes.",
        inputs=(Socket("model", "MODEL"), Int("tile_size", 256, min=1, max=2048), Int("swap_size", 2, min=1, max=128),
                Int("max_depth", 0, min=0, max=10), Boolean("scale_depth", False)),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, tile_size: int, swap_size: int, max_depth: int,
                scale_depth: bool) -> tuple[ModelHandle]:
        from nodes.sd.hypertile import hypertile_patch

        return (model.with_patch(hypertile_patch(tile_size, swap_size, max_depth, scale_depth)),)


class TomePatchModel(Node):
    schema = NodeSchema(
        type_id="TomePatchModel", display_name="TomePatchModel", category="model_patches/unet",
        description="Token merging (Bolya & Hoffman 2023, arXiv 2303.17603): merges similar query tokens in the "
                    "top-level self-attention.",
        inputs=(Socket("model", "MODEL"), Float("ratio", 0.3, min=0.0, max=1.0, step=0.01)),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, ratio: float) -> tuple[ModelHandle]:
        from nodes.sd.tome import tome_patch

        return (model.with_patch(tome_patch(ratio)),)


class PatchModelAddDownscale(Node):
    schema = NodeSchema(
        type_id="PatchModelAddDownscale", display_name="PatchModelAddDownscale (Kohya Deep Shrink)",
        category="model_patches/unet",
        description="Kohya's Deep Shrink: shrinks an input block's output for the early steps, so large images "
                    "keep the composition the model learned at its native size.",
        inputs=(Socket("model", "MODEL"), Int("block_number", 3, min=1, max=32, step=1),
                Float("downscale_factor", 2.0, min=0.1, max=9.0, step=0.001),
                Float("start_percent", 0.0, min=0.0, max=1.0, step=0.001),
                Float("end_percent", 0.35, min=0.0, max=1.0, step=0.001),
                Boolean("downscale_after_skip", True),
                Combo("downscale_method", UPSCALE_METHODS), Combo("upscale_method", UPSCALE_METHODS)),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, block_number: int, downscale_factor: float,
                start_percent: float, end_percent: float, downscale_after_skip: bool, downscale_method: str,
                upscale_method: str) -> tuple[ModelHandle]:
        from nodes.sd.controlnet import percent_to_sigma
        from nodes.sd.freeu import downscale_patch
        from nodes.sd.schedules import model_sigmas

        sigmas = model_sigmas(model.alphas_cumprod)
        patch = downscale_patch(block_number, downscale_factor, percent_to_sigma(start_percent, sigmas),
                                percent_to_sigma(end_percent, sigmas), downscale_after_skip, downscale_method,
                                upscale_method)
        return (model.with_patch(patch),)


class DifferentialDiffusion(Node):
    schema = NodeSchema(
        type_id="DifferentialDiffusion", display_name="Differential Diffusion", category="_for_testing",
        description="Inpainting with a soft mask as per-pixel strength (Levin & Fried 2024, arXiv 2306.00950).",
        inputs=(Socket("model", "MODEL"), Float("strength", 1.0, min=0.0, max=1.0, step=0.01, optional=True)),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, strength: float = 1.0) -> tuple[ModelHandle]:
        from nodes.sd.differential_diffusion import differential_diffusion_patch

        return (model.with_patch(differential_diffusion_patch(strength)),)


NODES = (FreeU, FreeU_V2, HyperTile, TomePatchModel, PatchModelAddDownscale, DifferentialDiffusion)
