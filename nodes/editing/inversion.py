"""DDIMInversion (image latent -> the noise latent that samples back to it) and ImageReconstructionError."""

from __future__ import annotations

import torch

from nodegraph import Boolean, Combo, Float, Int, Node, NodeContext, NodeResult, NodeSchema, Out, Socket

from ..sampling.ksampler import run_model
from ..sd.schedules import SCHEDULERS
from ..sd.types import Conditioning, Latent, ModelHandle

CATEGORY = "sampling/editing"


class DDIMInversion(Node):
    schema = NodeSchema(
        type_id="DDIMInversion", display_name="DDIM Inversion", category=CATEGORY,
        description="Walks an image latent up the deterministic DDIM (euler) path with the prompt to the noise "
                    "latent that samples back to it: KSampler / SamplerCustom with add_noise disabled, the euler "
                    "sampler and the same prompt, steps, scheduler and denoise. The NOISE output does the same "
                    "from the source latent in SamplerCustomAdvanced (masked edits: DiffEdit). The round trip's "
                    "latent error is reported (Song et al. 2021; Mokady et al. 2022).",
        inputs=(Socket("model", "MODEL"), Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
                Socket("latent_image", "LATENT"),
                Int("steps", 20, min=1, max=10000),
                Float("cfg", 1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                      tooltip="Guidance along the inversion path; 1 (no guidance) inverts most faithfully."),
                Combo("scheduler", tuple(SCHEDULERS), "simple"),
                Float("denoise", 1.0, min=0.01, max=1.0, step=0.01,
                      tooltip="Invert only up to this fraction of the schedule (img2img strength)."),
                Int("refine_iterations", 0, min=0, max=20,
                    tooltip="Fixed-point iterations per step that make the euler sampler's round trip exact "
                            "(each costs one more model evaluation per step)."),
                Boolean("report_error", True,
                        tooltip="Sample the result back with euler and report the latent MSE / PSNR.")),
        outputs=(Out("LATENT", "inverted"), Out("NOISE", "noise"), Out("FLOAT", "reconstruction_mse"),
                 Out("FLOAT", "reconstruction_psnr")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, positive: Conditioning, negative: Conditioning,
                latent_image: Latent, steps: int, cfg: float, scheduler: str, denoise: float, refine_iterations: int,
                report_error: bool) -> NodeResult:
        from ..sd.inversion import as_noise, invert, inversion_sigmas, latent_psnr, sample_back

        model = run_model(ctx, model)
        sigmas = inversion_sigmas(model, scheduler, steps, denoise)
        inverted = invert(model, positive, negative, cfg, sigmas, latent_image, refine_iterations=refine_iterations,
                          callback=lambda done, total, _x: ctx.progress(done, total),
                          should_stop=lambda: ctx.interrupted)
        noise = as_noise(model, latent_image, inverted, sigmas)
        mse, psnr = -1.0, -1.0
        text = "reconstruction not measured"
        if report_error:
            back = sample_back(model, positive, negative, cfg, sigmas, inverted)
            mse, psnr = latent_psnr(latent_image.samples, back.samples)
            text = f"DDIM inversion round trip: latent MSE {mse:.3g}, PSNR {psnr:.2f} dB"
            print(f"[DDIMInversion {ctx.node_id}] {text}")
        return NodeResult(outputs=(inverted, noise, mse, psnr), ui={"text": [text]})


class ImageReconstructionError(Node):
    schema = NodeSchema(
        type_id="ImageReconstructionError", display_name="Image Reconstruction Error", category=CATEGORY,
        description="MSE and PSNR (dB, peak 1) of an image against a reference of the same size, e.g. an "
                    "inversion round trip decoded against the VAE's own reconstruction.",
        inputs=(Socket("reference", "IMAGE"), Socket("image", "IMAGE")),
        outputs=(Out("FLOAT", "mse"), Out("FLOAT", "psnr")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, reference: torch.Tensor, image: torch.Tensor) -> NodeResult:
        from ..sd.inversion import image_psnr

        mse, psnr = image_psnr(reference, image)
        text = f"image MSE {mse:.3g}, PSNR {psnr:.2f} dB"
        print(f"[ImageReconstructionError {ctx.node_id}] {text}")
        return NodeResult(outputs=(mse, psnr), ui={"text": [text]})


NODES = (DDIMInversion, ImageReconstructionError)
