"""Text-to-image for evaluation: a pluggable `GenerateFn(prompts, seeds) -> images`.

The default goes through what a user's first run uses as far as it exists: the checkpoint loader and
the node layer's prompt encoding (`nodes.sd.text.encode`), then diffusers' Euler scheduler with
"trailing" timestep spacing and classifier-free guidance. Once the node layer's samplers land, an
evaluation can pass a GenerateFn built on them instead; the scores then measure exactly what ships.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler
from PIL import Image

from training.config import SD_SCHEDULE
from training.data import tensor_to_images

GenerateFn = Callable[[Sequence[str], Sequence[int]], list[Image.Image]]
EncodeFn = Callable[[str], torch.Tensor]
"""prompt -> [1, 77, dim] conditioning."""


def seeded_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Initial latent noise for one image: a CPU generator seeded with `seed` (ComfyUI's convention)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class EulerGenerator:
    """Euler sampling (Karras et al. 2022, Algorithm 2 without churn) with CFG over SD-style modules.

    Args:
        unet: an epsilon-prediction UNet2DConditionModel.
        vae: the AutoencoderKL whose latents the UNet learned.
        encode: prompt -> conditioning (the node layer's encoder, or a plain CLIP forward).
        scaling_factor: the VAE's latent scale.
        steps, cfg, resolution: sampling settings.
        spacing: diffusers' timestep_spacing; "trailing" starts at t=999 (see the model card).
        batch_size: images denoised together (the UNet runs on twice as many for CFG).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        encode: EncodeFn,
        scaling_factor: float,
        *,
        steps: int = 20,
        cfg: float = 6.0,
        resolution: int = 128,
        spacing: str = "trailing",
        batch_size: int = 16,
    ) -> None:
        self.unet, self.vae, self.encode = unet.eval(), vae.eval(), encode
        self.scaling_factor = scaling_factor
        self.steps, self.cfg, self.resolution, self.spacing, self.batch_size = (
            steps,
            cfg,
            resolution,
            spacing,
            batch_size,
        )
        self._cache: dict[str, torch.Tensor] = {}

    def _conditioning(self, prompt: str) -> torch.Tensor:
        if prompt not in self._cache:
            self._cache[prompt] = self.encode(prompt).float()
        return self._cache[prompt]

    def scheduler(self) -> EulerDiscreteScheduler:
        scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, prediction_type="epsilon", timestep_spacing=self.spacing)
        scheduler.set_timesteps(self.steps)
        return scheduler

    @torch.no_grad()
    def _batch(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        dtype = next(self.unet.parameters()).dtype
        side = self.resolution // 8
        cond = torch.cat([self._conditioning(p) for p in prompts])
        uncond = self._conditioning("").expand(len(prompts), -1, -1)
        context = torch.cat([uncond, cond]).to(dtype)
        scheduler = self.scheduler()
        latents = torch.cat([seeded_noise(s, (1, 4, side, side)) for s in seeds]) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t).to(dtype)
            eps_uncond, eps_cond = self.unet(model_input, t, encoder_hidden_states=context).sample.float().chunk(2)
            latents = scheduler.step(eps_uncond + self.cfg * (eps_cond - eps_uncond), t, latents).prev_sample
        vae_dtype = next(self.vae.parameters()).dtype
        pixels = self.vae.decode((latents / self.scaling_factor).to(vae_dtype)).sample
        return tensor_to_images(pixels)

    def __call__(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        images: list[Image.Image] = []
        for start in range(0, len(prompts), self.batch_size):
            end = start + self.batch_size
            images += self._batch(prompts[start:end], seeds[start:end])
        return images


def generator_from_checkpoint(path: str | Path, **options) -> EulerGenerator:
    """An EulerGenerator over a checkpoint read by our loader, prompts encoded by the node layer."""
    from nodes.sd.loading import load_checkpoint
    from nodes.sd.text import encode

    loaded = load_checkpoint(path)
    return EulerGenerator(
        loaded.model.unet, loaded.vae.vae, lambda text: encode(loaded.clip, text).embeds, loaded.vae.scaling_factor,
        **options,
    )  # fmt: skip
