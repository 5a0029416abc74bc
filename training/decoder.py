"""Stage 4 of the embedded model's run: fine-tune the VAE's decoder on the frozen encoder's latents.

The VAE phase gets a fifth of a CPU budget, which leaves its reconstructions soft and their colours off
(a black background decoded dark green). Retraining the whole VAE would move the latent space and
throw the UNet away; fine-tuning only the decoder (and `post_quant_conv`), as Stability did for SD's
ft-MSE VAE, keeps every latent the UNet learned valid and sharpens what it decodes to. A share of each
batch is drawn in the striped style of the embedded model's LoRA, whose bands the first VAE never saw.

Flat images come from the latent cache (already encoded); striped ones are encoded as they are drawn.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from training import data
from training.checkpointing import read_tensors
from training.config import SD1_SCALING_FACTOR, RunSettings
from training.ema import EMA
from training.loop import Phase, PhaseResult, run_phase
from training.vae import encode_means, image_gradients


def decoder_loss(
    vae: torch.nn.Module, latents: torch.Tensor, images: torch.Tensor, gradient_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + MSE + weighted L1 on image gradients between decode(latents) and the images (-1..1)."""
    reconstruction = vae.decode(latents).sample.float()
    l1 = (reconstruction - images).abs().mean()
    mse = F.mse_loss(reconstruction, images)
    gradient = sum((a - b).abs().mean() for a, b in zip(image_gradients(reconstruction), image_gradients(images)))
    loss = l1 + mse + gradient_weight * gradient
    return loss, {"l1": float(l1.detach()), "mse": float(mse.detach()), "grad": float(gradient.detach())}


def freeze_encoder(vae: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Freeze everything up to the latent; returns the decoder side's parameters (what trains)."""
    trainable = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    keep = {id(p) for p in trainable}
    for parameter in vae.parameters():
        parameter.requires_grad_(id(parameter) in keep)
    return trainable


def decoder_phase(settings: RunSettings, paths, device: str) -> Phase:
    """The fine-tuning phase, starting from the folded VAE of the latent cache (`pipeline.folded_vae`)."""
    from training.pipeline import folded_vae, step_generator

    ds = settings.decoder
    cache = load_file(str(paths.latents))
    latents, seeds = cache["latents"] / SD1_SCALING_FACTOR, cache["seeds"]  # the decoder's input scale
    torch.manual_seed(settings.seed + 2)  # building the VAE draws initial weights: the RNG state is then fixed
    vae = folded_vae(settings, paths, device)
    trainable = freeze_encoder(vae)
    optimizer = torch.optim.AdamW(trainable, lr=ds.lr, betas=(0.9, 0.99), weight_decay=0.01)
    striped = round(ds.batch_size * ds.striped_fraction)
    flat = ds.batch_size - striped

    def loss_at(step: int, total: int) -> tuple[torch.Tensor, dict[str, float]]:
        generator = step_generator(settings.seed, data.DECODER_STREAM, step)
        rows = torch.randint(0, latents.shape[0], (flat,), generator=generator)
        specs = [data.spec_from_seed(int(seeds[row])) for row in rows]
        images = [data.render_specs(specs, settings.resolution)] if flat else []
        inputs = [latents[rows]] if flat else []
        if striped:
            styled = data.render_specs(
                data.stream_specs(settings.seed, data.DECODER_STREAM, step * striped, striped),
                settings.resolution, striped=True,
            )  # fmt: skip
            images.append(styled)
            inputs.append(encode_means(vae, styled.to(device)).cpu())
        return decoder_loss(vae, torch.cat(inputs).to(device), torch.cat(images).to(device), ds.gradient_weight)

    return Phase(
        name="decoder", modules={"vae": vae}, emas={"vae": EMA(vae, ds.ema)}, optimizer=optimizer,
        loss_at=loss_at, peak_lr=ds.lr, warmup=ds.warmup, min_lr_fraction=ds.min_lr_fraction,
        settings={"seed": settings.seed, "resolution": settings.resolution, **settings.to_json()["decoder"]},
    )  # fmt: skip


def train_decoder(settings: RunSettings, paths, device: str, seconds: float | None, progress: bool) -> PhaseResult:
    """Fine-tune (or continue fine-tuning) the decoder; at most `seconds` of wall-clock in this session."""
    phase = decoder_phase(settings, paths, device)
    return run_phase(phase, paths.decoder, total_steps=settings.decoder.steps, seconds=seconds, progress=progress)


def finetuned_vae(settings: RunSettings, paths, device: str = "cpu") -> torch.nn.Module:
    """The folded VAE with the fine-tuned decoder's EMA weights (the shipped VAE once the stage has run)."""
    from training.pipeline import folded_vae

    vae = folded_vae(settings, paths, device)
    if Path(paths.decoder).exists():
        weights = read_tensors(paths.decoder, "model/vae/")
        weights.update(read_tensors(paths.decoder, "ema/vae/"))
        vae.load_state_dict(weights)
    return vae.to(device).eval()
