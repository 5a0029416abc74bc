"""TAESD, the tiny autoencoder (Ollin Boer Bohan, "Tiny AutoEncoder for Stable Diffusion",
github.com/madebyollin/taesd), as a VAE and as a fast step-preview decoder.

TAESD distils SD's VAE into a few plain 3x3 convolution blocks (64 channels, ReLU) that run in milliseconds.
Its encoder maps pixels in 0..1 straight to the latents the UNet sees (already multiplied by the family's
scaling factor) and its decoder maps those back, with a soft clamp tanh(z/3)*3 first. diffusers implements
the same architecture as `AutoencoderTiny`; we build that and fill it from the files TAESD ships, which are
two `nn.Sequential` state dicts (`taesd_encoder.*`, `taesd_decoder.*`) in the `vae_approx` model folder,
keyed by layer index. The decoder's Sequential starts with the clamp (no weights), which diffusers applies in
`forward` instead, so its layer indices are diffusers' plus one.

Like ComfyUI, VAELoader lists "taesd" (SD1/SD2 latents) and "taesdxl" (SDXL latents) when both files of a
pair are present; step previews use the decoder alone when the environment's preview method allows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import torch
from diffusers import AutoencoderTiny
from diffusers.configuration_utils import FrozenDict
from diffusers.models.autoencoders.vae import DecoderTiny

from nodes.sd.loading.build import empty_module, fill
from nodes.sd.loading.files import file_signature, read_weights
from nodes.sd.loading.keymap import KeyRule
from nodes.sd.taesd_names import PREVIEW_METHODS, TAESD_KINDS, find_files
from nodes.sd.types import VaeHandle


def _sequence(tensors: Mapping[str, torch.Tensor], what: str) -> list[tuple[int, str]]:
    """The Sequential's weighted layers in order: (index, "block" or "conv")."""
    indices = sorted({int(m.group(1)) for key in tensors if (m := re.match(r"(\d+)\.", key))})
    if not indices:
        raise ValueError(f"{what}: not a TAESD file (expected keys like '0.weight' or '1.conv.0.weight')")
    blocks = {int(key.split(".", 1)[0]) for key in tensors if re.match(r"\d+\.conv\.", key)}
    return [(i, "block" if i in blocks else "conv") for i in indices]


def _stages(layers: list[tuple[int, str]], tensors: Mapping[str, torch.Tensor]) -> tuple[list[int], list[int]]:
    """(blocks per stage, channels per stage): a stage is a run of blocks between two convolutions."""
    counts: list[int] = []
    channels: list[int] = []
    previous = "conv"
    for index, kind in layers:
        if kind == "block":
            if previous == "conv":
                counts.append(0)
                conv = next(k for k in (f"{index}.conv.{n}.weight" for n in (4, 2, 0)) if k in tensors)
                channels.append(int(tensors[conv].shape[0]))
            counts[-1] += 1
        previous = kind
    return counts, channels


def tiny_config(encoder: Mapping[str, torch.Tensor], decoder: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """An AutoencoderTiny config read from the two state dicts' shapes (stages, channels, latent channels)."""
    enc_layers, dec_layers = _sequence(encoder, "TAESD encoder"), _sequence(decoder, "TAESD decoder")
    enc_counts, enc_channels = _stages(enc_layers, encoder)
    dec_counts, dec_channels = _stages(dec_layers, decoder)
    first_dec = dec_layers[0][0]
    if first_dec != 1:
        raise ValueError(f"TAESD decoder: its first convolution is layer {first_dec}; TAESD's is 1 (after the clamp)")
    return {
        "in_channels": int(encoder[f"{enc_layers[0][0]}.weight"].shape[1]),
        "out_channels": int(decoder[f"{dec_layers[-1][0]}.weight"].shape[0]),
        "latent_channels": int(encoder[f"{enc_layers[-1][0]}.weight"].shape[0]),
        "encoder_block_out_channels": tuple(enc_channels), "num_encoder_blocks": tuple(enc_counts),
        "decoder_block_out_channels": tuple(dec_channels), "num_decoder_blocks": tuple(dec_counts),
        "act_fn": "relu", "upsample_fn": "nearest", "upsampling_scaling_factor": 2,
    }


def _rules(module_keys: list[str], side: str, offset: int) -> list[KeyRule]:
    """diffusers `encoder.layers.N.*` / `decoder.layers.N.*` -> TAESD's `N+offset.*` keys."""
    rules = []
    for key in module_keys:
        if key.startswith(f"{side}.layers."):
            index, rest = key.removeprefix(f"{side}.layers.").split(".", 1)
            rules.append(KeyRule(key, f"{side}.{int(index) + offset}.{rest}"))
    return rules


def build_autoencoder(encoder: Mapping[str, torch.Tensor], decoder: Mapping[str, torch.Tensor], *,
                      device: str = "cpu", dtype: torch.dtype = torch.float32) -> AutoencoderTiny:
    """A diffusers AutoencoderTiny filled strictly (every key accounted for) from TAESD's two state dicts."""
    config = tiny_config(encoder, decoder)
    module = empty_module(lambda: AutoencoderTiny(**config))
    keys = list(module.state_dict())
    rules = _rules(keys, "encoder", 0) + _rules(keys, "decoder", 1)
    tensors = {**{f"encoder.{k}": v for k, v in encoder.items()}, **{f"decoder.{k}": v for k, v in decoder.items()}}
    return fill(module, rules, tensors, "TAESD", device=device, dtype=dtype)


def build_decoder(decoder: Mapping[str, torch.Tensor], *, device: str = "cpu",
                  dtype: torch.dtype = torch.float32) -> DecoderTiny:
    """TAESD's decoder alone (what previews need), as diffusers' DecoderTiny."""
    layers = _sequence(decoder, "TAESD decoder")
    counts, channels = _stages(layers, decoder)
    latent_channels = int(decoder[f"{layers[0][0]}.weight"].shape[1])
    out_channels = int(decoder[f"{layers[-1][0]}.weight"].shape[0])
    module = empty_module(lambda: DecoderTiny(latent_channels, out_channels, tuple(counts), tuple(channels), 2,
                                              "relu", "nearest"))
    rules = [KeyRule(rule.target.removeprefix("decoder."), rule.source.removeprefix("decoder."))
             for rule in _rules([f"decoder.{k}" for k in module.state_dict()], "decoder", 1)]
    return fill(module, rules, decoder, "TAESD decoder", device=device, dtype=dtype)


class TinyVae(torch.nn.Module):
    """AutoencoderTiny behind the AutoencoderKL calls nodes/sd/vae.py makes (`encode(x).latent_dist.mean`,
    `decode(z).sample`, `config.block_out_channels`), in the unscaled latents those calls use: TAESD works
    on scaled latents, so `decode` scales first and `encode` unscales after."""

    def __init__(self, tiny: AutoencoderTiny, scaling_factor: float, shift_factor: float = 0.0) -> None:
        super().__init__()
        self.tiny, self.scaling_factor, self.shift_factor = tiny, scaling_factor, shift_factor
        self.config = FrozenDict(block_out_channels=tuple(tiny.config.encoder_block_out_channels),
                                 latent_channels=tiny.config.latent_channels, scaling_factor=scaling_factor,
                                 shift_factor=shift_factor)

    def encode(self, pixels: torch.Tensor) -> Any:
        latents = self.tiny.encode(pixels).latents / self.scaling_factor + self.shift_factor
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=latents))

    def decode(self, z: torch.Tensor) -> Any:
        return SimpleNamespace(sample=self.tiny.decode((z - self.shift_factor) * self.scaling_factor).sample)


def load_taesd(env: Any, kind_name: str, dtype: torch.dtype = torch.float32) -> VaeHandle:
    """The VAE handle of a TAESD pair from the environment's `vae_approx` folder, owned by its model manager.

    Raises:
        ValueError: an unknown kind, or a pair with a file missing.
    """
    kind = TAESD_KINDS.get(kind_name)
    if kind is None:
        raise ValueError(f"unknown TAESD {kind_name!r}; expected one of {', '.join(TAESD_KINDS)}")
    stems = find_files(env.models.list("vae_approx"))
    missing = [stem for stem in (kind.encoder, kind.decoder) if stem not in stems]
    if missing:
        raise ValueError(f"{kind_name}: vae_approx has no {' or '.join(missing)} file (both halves are needed)")
    paths = [env.models.resolve("vae_approx", stems[stem]) for stem in (kind.encoder, kind.decoder)]

    def build(device: str) -> torch.nn.Module:
        encoder, decoder = (read_weights(path)[0] for path in paths)
        tiny = build_autoencoder(encoder, decoder, device=device, dtype=dtype)
        return TinyVae(tiny, kind.scaling_factor, kind.shift_factor)

    key = (*(file_signature(path) for path in paths), "taesd", str(dtype))
    ref = env.manager.ref(key, build, name=f"{kind_name} ({str(dtype).removeprefix('torch.')})")
    ref.get()  # small: build now, so a broken file fails in its loader node
    return VaeHandle(vae_ref=ref, scaling_factor=kind.scaling_factor, shift_factor=kind.shift_factor,
                     device=env.manager.device, source=kind_name)


@torch.no_grad()
def taesd_preview(decoder: torch.nn.Module, x0: torch.Tensor) -> torch.Tensor:
    """IMAGE [1, H*8, W*8, 3] in 0..1 from the first latent of a batch (scaled, as the UNet sees it)."""
    parameter = next(decoder.parameters())
    pixels = decoder(x0[:1].to(parameter.device, parameter.dtype))
    return ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu()


def preview_function(env: Any, family: str | None) -> Callable[[torch.Tensor], torch.Tensor | None] | None:
    """The step-preview function the environment's preview method asks for: TAESD's decoder for the family's
    latents ("auto"/"taesd", when the decoder is in `vae_approx`), no image ("none"), or None: the caller's
    default (the linear projection)."""
    method = getattr(env, "preview_method", "auto")
    if method not in PREVIEW_METHODS:
        raise ValueError(f"unknown preview method {method!r}; expected one of {', '.join(PREVIEW_METHODS)}")
    if method == "none":
        return lambda x0: None
    models = getattr(env, "models", None)
    if method == "latent2rgb" or family is None or models is None:
        return None
    kind = next((k for k in TAESD_KINDS.values() if family in k.families), None)
    name = find_files(models.list("vae_approx")).get(kind.decoder) if kind is not None else None
    if name is None:
        return None
    path = models.resolve("vae_approx", name)
    ref = env.manager.ref((file_signature(path), "taesd_preview"),
                          lambda device: build_decoder(read_weights(path)[0], device=device), name=f"{name} (preview)")
    return lambda x0: taesd_preview(ref.get(), x0)
