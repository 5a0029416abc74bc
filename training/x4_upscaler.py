"""Training and measuring a tiny x4 upscaler in Stable Diffusion's x4-upscaler architecture, on the shapes data.

The model is what stable-diffusion-x4-upscaler is, scaled down (nodes/sd/loading/x4_upscaler.py): a latent
diffusion model whose UNet takes the low-resolution image (-1..1) as 3 extra input channels and the
noise-augmentation level as a class label, v-prediction on the x4 schedule (scaled_linear 1e-4..0.02), a
three-level VAE (4x down-sampling) whose latents are scaled by 0.08333, and an OpenCLIP-layout text encoder.

- Text: this upscaler is not prompt-guided. Its text encoder's token table is all zeros, so its output is the
  same for every prompt (a function of the positions only); CFG then has no effect and any prompt works.
  The table still has CLIP's 49,408 rows (the tokenizer's ids index it) at width 2: 99 k of the parameters.
- VAE: widths (16, 16, 16), GroupNorm 16, no mid-block attention (fully convolutional, so training on 32 px
  crops carries over to whole images), trained first on 32 px crops of 128 px renders with training/vae.py's
  reconstruction loss plus a term tying latent channels 0-2 to the 4x4 area average (`vae_step_loss`); its latent
  statistics are then folded into quant_conv/post_quant_conv (training/vae.py) so scaled latents have zero mean
  and unit variance per channel at the x4 scale 0.08333.
- UNet: widths (32, 32, 32); attention (self and text) only in the mid block, at a quarter of the latent size:
  the text is constant, so cross-attention elsewhere would only add a learned bias, and full-resolution
  self-attention would make large images costly (the real model has none in its high-resolution levels
  either). 351 noise-level classes (0..350, the levels SD_4XUpscale_Conditioning
  gives). Trained with the v-prediction loss on whole 128 px renders (their latents 32 px),
  low-res image its 4x4 area average, noise-augmented to a random level a third of the time (Ho et al. 2021,
  "Cascaded Diffusion Models", conditioning augmentation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel

from nodes.sd.loading.configs import alphas_cumprod
from nodes.sd.loading.x4_upscaler import X4_SCALING_FACTOR, X4_SCHEDULE
from nodes.sd.shapes import render, render_striped
from nodes.sd.x4_upscale import MAX_NOISE_LEVEL, augment
from training.config import VaeSettings
from training.data import EVALUATION_STREAM, images_to_tensor, stream_specs
from training.vae import encode_means, fold_latent_statistics, image_gradients, latent_statistics

X4_STREAM = 23
"""The data stream the x4 upscaler trains on (apart from every other model's streams)."""


@dataclass(frozen=True)
class X4Settings:
    vae_channels: tuple[int, ...] = (16, 16, 16)
    vae_groups: int = 16
    unet_channels: tuple[int, ...] = (32, 32, 32)
    text_width: int = 2
    classes: int = MAX_NOISE_LEVEL + 1
    images: int = 512
    """Distinct 128 px training renders (half plain, half striped)."""
    crop: int = 128
    """Side of the UNet's training images (its latents are a quarter of that): whole renders, because GroupNorm
    normalises over the whole image, and the statistics of crops of flat shapes are not those of whole pictures
    (trials: a VAE trained on 32 px crops reconstructed crops at 22.3 dB PSNR and whole images at 12.6 dB)."""
    vae_crop: int = 32
    """Side of the crops of the joint VAE training (fast); the decoder is then fine-tuned on whole images."""
    vae_minutes: float = 9.0
    unet_minutes: float = 9.0
    batch_size: int = 16
    decoder_batch_size: int = 4
    unet_batch_size: int = 8
    vae_learning_rate: float = 2e-3
    unet_learning_rate: float = 1e-3
    augment_probability: float = 1 / 3
    align_weight: float = 1.0
    """Weight of the loss tying latent channels 0-2 to the image's 4x4 area average (see `vae_step_loss`)."""
    vae_min_lr_fraction: float = 0.05
    decoder_minutes: float = 4.0
    """Of vae_minutes, the last ones train the decoder alone on posterior means (no sampling noise), as the
    embedded model's decoder fine-tuning did; the encoder, and so the latent space, stays as it was."""
    seed: int = 0
    vae_loss: VaeSettings = field(default_factory=VaeSettings)


def build_modules(settings: X4Settings) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """Fresh UNet, VAE and text encoder of the tiny x4 architecture (the text encoder already final: zeros)."""
    torch.manual_seed(settings.seed)
    levels = len(settings.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=7, out_channels=4, block_out_channels=settings.unet_channels, layers_per_block=1,
        down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
        only_cross_attention=(True,) * levels, cross_attention_dim=settings.text_width, attention_head_dim=8,
        use_linear_projection=True, num_class_embeds=settings.classes, norm_num_groups=32)
    vae = AutoencoderKL(
        block_out_channels=settings.vae_channels, down_block_types=("DownEncoderBlock2D",) * len(settings.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(settings.vae_channels), layers_per_block=1, latent_channels=4,
        norm_num_groups=settings.vae_groups, sample_size=128, scaling_factor=X4_SCALING_FACTOR,
        mid_block_add_attention=False)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=settings.text_width, intermediate_size=2 * settings.text_width,
        num_hidden_layers=2, num_attention_heads=1, max_position_embeddings=77, hidden_act="gelu",
        projection_dim=settings.text_width, bos_token_id=49406, eos_token_id=49407, pad_token_id=0))
    with torch.no_grad():  # a constant: no token reaches the output, and the layers add nothing to their input
        text.get_input_embeddings().weight.zero_()
        for name, parameter in text.encoder.named_parameters():
            if "layer_norm" not in name:
                parameter.zero_()
    return unet, vae, text.eval().requires_grad_(False)


def constant_text(text: CLIPTextModel) -> Tensor:
    """What CLIPTextEncode gives for any prompt with this text encoder, at any CLIP layer: the final layer norm
    of the position embeddings (the token table is zero and both layers are identities), [1, 77, width]."""
    with torch.no_grad():
        embeddings = text.embeddings(input_ids=torch.zeros(1, 77, dtype=torch.long))
        return text.final_layer_norm(embeddings)


def renders(stream: int, count: int, *, held_out: bool = False, run_seed: int = 0) -> Tensor:
    """128 px renders [N, 3, 128, 128] in 0..1; the second half striped (fine detail to upscale)."""
    specs = stream_specs(run_seed, stream, 0, count, held_out=held_out)
    images = [(render_striped if index >= count // 2 else render)(spec, 128)[0] for index, spec in enumerate(specs)]
    return (images_to_tensor(images) + 1) / 2


def downscale(high: Tensor) -> Tensor:
    """The degradation the model undoes: a 4x4 area average (ComfyUI's ImageScaleBy "area" by 0.25)."""
    return F.avg_pool2d(high, 4)


def _crops(tensors: list[Tensor], scales: list[int], size: int, batch: int, generator: torch.Generator) -> list[Tensor]:
    """Aligned random crops of the same items: `size` is the side at scale 1; tensor k is at 1/scales[k]."""
    count, side = tensors[0].shape[0], tensors[0].shape[-1] * scales[0]
    picks = torch.randint(0, count, (batch,), generator=generator).tolist()
    offsets = (torch.randint(0, (side - size) // 4 + 1, (batch, 2), generator=generator) * 4).tolist()
    out = []
    for tensor, scale in zip(tensors, scales):
        crop = size // scale
        out.append(torch.stack([tensor[p, :, y // scale: y // scale + crop, x // scale: x // scale + crop]
                                for p, (y, x) in zip(picks, offsets)]))
    return out


def vae_step_loss(vae: AutoencoderKL, images: Tensor, settings: X4Settings,
                  generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
    """training/vae.py's reconstruction loss (L1 + MSE + edges + small KL) plus an alignment term: latent
    channels 0-2 (posterior means) should equal the image's 4x4 area average. The latent then already holds the
    low-res image the UNet is given, and channel 3 the detail: the UNet's x0 is easy to predict from its input
    even at t = 999, and the decoder learns to upsample from that (without it, the first trial's latents were
    unpredictable from the low-res image: x0 error 0.39 of the latent variance at t = 999)."""
    posterior = vae.encode(images).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator)
    reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample
    l1 = (reconstruction - images).abs().mean()
    mse = F.mse_loss(reconstruction, images)
    gradient = sum((a - b).abs().mean() for a, b in zip(image_gradients(reconstruction), image_gradients(images)))
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    align = F.mse_loss(posterior.mean[:, :3], F.avg_pool2d(images, 4))
    loss = (l1 + mse + settings.vae_loss.gradient_weight * gradient + settings.vae_loss.kl_weight * kl
            + settings.align_weight * align)
    return loss, {"l1": float(l1.detach()), "align": float(align.detach())}


def set_cosine_lr(optimizer: torch.optim.Optimizer, peak: float, elapsed: float, budget: float,
                  floor_fraction: float = 0.0) -> None:
    """Learning rate on a cosine over a wall-clock budget: `peak` at the start, `floor_fraction * peak` at the end."""
    fraction = floor_fraction + (1 - floor_fraction) * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
    for group in optimizer.param_groups:
        group["lr"] = peak * fraction


def train_vae(vae: AutoencoderKL, high: Tensor, settings: X4Settings, log: Callable[[str], None]) -> int:
    """Adam with the learning rate decayed on a cosine over the time budget."""
    generator = torch.Generator().manual_seed(settings.seed + 1)
    optimizer = torch.optim.Adam(vae.parameters(), lr=settings.vae_learning_rate)
    vae.train()
    started, step, budget = time.perf_counter(), 0, settings.vae_minutes * 60
    while (elapsed := time.perf_counter() - started) < budget:
        step += 1
        set_cosine_lr(optimizer, settings.vae_learning_rate, elapsed, budget, settings.vae_min_lr_fraction)
        (images,) = _crops([high * 2 - 1], [1], settings.vae_crop, settings.batch_size, generator)
        loss, figures = vae_step_loss(vae, images, settings, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            log(f"vae step {step} l1 {figures['l1']:.4f} align {figures['align']:.4f} ({elapsed:.0f} s)")
    vae.eval().requires_grad_(False)
    return step


def finetune_decoder(vae: AutoencoderKL, high: Tensor, settings: X4Settings, log: Callable[[str], None]) -> int:
    """The decoder alone on the encoder's posterior means of whole images: L1 + MSE + edges, cosine-decayed
    learning rate."""
    generator = torch.Generator().manual_seed(settings.seed + 3)
    parameters = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(parameters, lr=settings.vae_learning_rate / 2)
    vae.decoder.train()
    started, step, budget = time.perf_counter(), 0, settings.decoder_minutes * 60
    while (elapsed := time.perf_counter() - started) < budget:
        step += 1
        set_cosine_lr(optimizer, settings.vae_learning_rate / 2, elapsed, budget)
        (images,) = _crops([high * 2 - 1], [1], high.shape[-1], settings.decoder_batch_size, generator)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mean
        reconstruction = vae.decode(latents).sample
        gradient = sum((a - b).abs().mean() for a, b in zip(image_gradients(reconstruction), image_gradients(images)))
        l1 = (reconstruction - images).abs().mean()
        loss = l1 + F.mse_loss(reconstruction, images) + settings.vae_loss.gradient_weight * gradient
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            log(f"decoder step {step} l1 {float(l1):.4f} ({elapsed:.0f} s)")
    vae.eval().requires_grad_(False)
    return step


def train_unet(unet: UNet2DConditionModel, latents: Tensor, low: Tensor, text: Tensor, settings: X4Settings,
               log: Callable[[str], None]) -> int:
    """v-prediction loss (Salimans & Ho 2022) on the x4 schedule, uniform timesteps."""
    generator = torch.Generator().manual_seed(settings.seed + 2)
    alphas = alphas_cumprod(X4_SCHEDULE).float()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.unet_learning_rate, weight_decay=0.0)
    unet.train()
    started, step = time.perf_counter(), 0
    while time.perf_counter() - started < settings.unet_minutes * 60:
        step += 1
        x0, image = _crops([latents, low * 2 - 1], [4, 4], settings.crop, settings.unet_batch_size, generator)
        batch = x0.shape[0]
        levels = torch.randint(0, MAX_NOISE_LEVEL + 1, (batch,), generator=generator)
        levels = torch.where(torch.rand(batch, generator=generator) < settings.augment_probability, levels, 0)
        image_noise = torch.randn(image.shape, generator=generator)
        image = torch.stack([augment(i, int(level), n) if level > 0 else i
                             for i, level, n in zip(image, levels.tolist(), image_noise)]).float()
        t = torch.randint(0, 1000, (batch,), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=generator)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0
        output = unet(torch.cat([noisy, image], dim=1), t, encoder_hidden_states=text.expand(batch, -1, -1),
                      class_labels=levels).sample
        loss = F.mse_loss(output, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            log(f"unet step {step} loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)")
    unet.eval().requires_grad_(False)
    return step


def train_x4(settings: X4Settings, *, log: Callable[[str], None] = print) -> dict[str, object]:
    """Train VAE then UNet within their time budgets; returns the modules and the training record."""
    unet, vae, text = build_modules(settings)
    high = renders(X4_STREAM, settings.images, run_seed=settings.seed)
    started = time.perf_counter()
    joint = replace(settings, vae_minutes=settings.vae_minutes - settings.decoder_minutes)
    vae_steps = train_vae(vae, high, joint, log)
    decoder_steps = finetune_decoder(vae, high, settings, log) if settings.decoder_minutes > 0 else 0
    raw = encode_means(vae, high * 2 - 1)
    mean, std = latent_statistics(raw)
    fold_latent_statistics(vae, mean, std, scaling_factor=X4_SCALING_FACTOR)
    latents = encode_means(vae, high * 2 - 1) * X4_SCALING_FACTOR
    log(f"latents: mean {latents.mean():.3f} std {latents.std():.3f}")
    unet_steps = train_unet(unet, latents, downscale(high), constant_text(text), settings, log)
    minutes = (time.perf_counter() - started) / 60
    return {"unet": unet, "vae": vae, "text": text, "vae_steps": vae_steps, "decoder_steps": decoder_steps,
            "unet_steps": unet_steps,
            "train_minutes": round(minutes, 2)}


def settings_record(settings: X4Settings) -> dict[str, object]:
    return {k: v for k, v in asdict(settings).items() if k != "vae_loss"}


def evaluation_set(count: int = 32) -> tuple[Tensor, Tensor]:
    """(low [N, 3, 32, 32], high [N, 3, 128, 128]) in 0..1: held-out shape/colour combinations."""
    high = renders(EVALUATION_STREAM, count, held_out=True)
    return downscale(high), high


def psnr(prediction: Tensor, target: Tensor) -> float:
    """PSNR in dB of images in 0..1 over the whole set (the squared error pooled)."""
    mse = F.mse_loss(prediction.clamp(0, 1).double(), target.double()).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def evaluate_x4(path: str, *, count: int = 32, steps: int = 10, seed: int = 0,
                noise_augmentation: float = 0.0) -> dict[str, float]:
    """PSNR on held-out shapes of: the x4 file run as a workflow runs it (CheckpointLoaderSimple's loader,
    CLIPTextEncode, SD_4XUpscale_Conditioning, KSampler euler/normal at cfg 1, VAEDecode), bicubic, and the
    VAE's own reconstruction of the targets (the ceiling any latent upscaler with this VAE can reach)."""
    from nodes.control.upscale_diffusion import SD_4XUpscale_Conditioning
    from nodes.sd.ksampler import sample
    from nodes.sd.loading import load_checkpoint
    from nodes.sd.text import encode
    from nodes.sd.vae import decode, encode as vae_encode

    loaded = load_checkpoint(path)
    low, high = evaluation_set(count)
    text = encode(loaded.clip, "")
    outputs = []
    for start in range(0, count, 8):
        images = low[start:start + 8].movedim(1, -1)
        positive, negative, latent = SD_4XUpscale_Conditioning.execute(
            None, images=images, positive=(text,), negative=(text,), scale_ratio=4.0,
            noise_augmentation=noise_augmentation)
        result = sample(loaded.model, seed=seed + start, steps=steps, cfg=1.0, sampler_name="euler",
                        scheduler="normal", positive=positive, negative=negative, latent=latent)
        outputs.append(decode(loaded.vae, result.samples).movedim(-1, 1))
    upscaled = torch.cat(outputs)
    bicubic = F.interpolate(low, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    ceiling = decode(loaded.vae, vae_encode(loaded.vae, high.movedim(1, -1))).movedim(-1, 1)
    return {"model_psnr_db": round(psnr(upscaled, high), 3), "bicubic_psnr_db": round(psnr(bicubic, high), 3),
            "vae_ceiling_psnr_db": round(psnr(ceiling, high), 3), "images": count, "steps": steps,
            "low_resolution": 32, "noise_augmentation": noise_augmentation}
