"""Text-to-image for evaluation: a pluggable `GenerateFn(prompts, seeds) -> images`.

The default goes through what a user's first run uses as far as it exists: the checkpoint loader, the
node layer's prompt encoding (`nodes.sd.text.encode`) and VAE decoding (`nodes.sd.vae.decode`), with
diffusers' Euler scheduler ("trailing" timestep spacing) and classifier-free guidance in between. Once the node layer's samplers land, an
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
DecodeFn = Callable[[torch.Tensor], list[Image.Image]]
"""scaled latents [B, 4, h, w] (what the UNet sees) -> images."""


def module_decoder(vae: torch.nn.Module, scaling_factor: float) -> DecodeFn:
    """Decode with an AutoencoderKL directly (when no node layer is at hand)."""

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> list[Image.Image]:
        dtype = next(vae.parameters()).dtype
        return tensor_to_images(vae.decode((latents / scaling_factor).to(dtype)).sample)

    return decode


def seeded_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Initial latent noise for one image: a CPU generator seeded with `seed` (ComfyUI's convention)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class EulerGenerator:
    """Euler sampling (Karras et al. 2022, Algorithm 2 without churn) with CFG over SD-style modules.

    Args:
        unet: an epsilon-prediction UNet2DConditionModel.
        encode: prompt -> conditioning (the node layer's encoder, or a plain CLIP forward).
        decode: scaled latents -> images (the node layer's VAE decode, or `module_decoder`).
        steps, cfg, resolution: sampling settings.
        spacing: diffusers' timestep_spacing; "trailing" starts at t=999 (see the model card).
        batch_size: images denoised together (the UNet runs on twice as many for CFG).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        encode: EncodeFn,
        decode: DecodeFn,
        *,
        steps: int = 20,
        cfg: float = 6.0,
        resolution: int = 128,
        spacing: str = "trailing",
        batch_size: int = 16,
    ) -> None:
        self.unet, self.encode, self.decode = unet.eval(), encode, decode
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
        return self.decode(latents)

    def __call__(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        images: list[Image.Image] = []
        for start in range(0, len(prompts), self.batch_size):
            end = start + self.batch_size
            images += self._batch(prompts[start:end], seeds[start:end])
        return images


def generator_from_checkpoint(path: str | Path, **options) -> EulerGenerator:
    """An EulerGenerator over a checkpoint read by our loader; prompts and latents go through the node layer."""
    from nodes.sd.loading import load_checkpoint
    from nodes.sd.text import encode
    from nodes.sd.vae import decode

    loaded = load_checkpoint(path)

    def decode_images(latents: torch.Tensor) -> list[Image.Image]:
        pixels = (decode(loaded.vae, latents) * 255.0).round().to(torch.uint8).numpy()
        return [Image.fromarray(array) for array in pixels]

    return EulerGenerator(loaded.model.unet, lambda text: encode(loaded.clip, text).embeds, decode_images, **options)
