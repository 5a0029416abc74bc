"""SRVGGNetCompact, the compact super-resolution network of Real-ESRGAN (Wang et al. 2021, "Real-ESRGAN:
Training Real-World Blind Super-Resolution with Pure Synthetic Data", https://arxiv.org/abs/2107.10833).

A plain stack of 3x3 convolutions at low resolution, each followed by an activation, whose last convolution
makes `scale**2` values per output channel that a pixel shuffle (Shi et al. 2016, https://arxiv.org/abs/1609.05158)
spreads over the `scale x scale` output pixels; the network learns only the residual over a nearest-neighbour
upscale of its input. Being this simple is why it is fast and why tiny versions train in minutes.

Files use the published `body.<i>` layout: body.0 the first convolution, then (activation, convolution) pairs,
the last convolution at the highest index. PReLU activations carry a weight, so `body.1.weight` tells them apart
from parameter-free ReLU / LeakyReLU ones (which the files cannot tell from each other; published models use
PReLU, and LeakyReLU(0.1) is assumed otherwise, as in the reference implementation's default).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

_BODY_KEY = re.compile(r"body\.(\d+)\.(weight|bias)$")


@dataclass(frozen=True)
class SRVGGConfig:
    in_channels: int = 3
    out_channels: int = 3
    features: int = 64
    convolutions: int = 16
    """Convolutions between the first and the last (the reference's `num_conv`)."""
    scale: int = 4
    activation: str = "prelu"
    """"prelu" (one learnt slope per feature), "relu" or "leakyrelu" (slope 0.1)."""


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact network; `forward` takes [B, C, H, W] in 0..1 and returns [B, C, H*s, W*s]."""

    def __init__(self, config: SRVGGConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, config.features, 3, padding=1),
                                   _activation(config)]
        for _ in range(config.convolutions):
            layers += [nn.Conv2d(config.features, config.features, 3, padding=1), _activation(config)]
        layers.append(nn.Conv2d(config.features, config.out_channels * config.scale**2, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.upsampler = nn.PixelShuffle(config.scale)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.upsampler(self.body(x))
        return residual + F.interpolate(x, scale_factor=self.config.scale, mode="nearest")


def _activation(config: SRVGGConfig) -> nn.Module:
    if config.activation == "prelu":
        return nn.PReLU(num_parameters=config.features)
    if config.activation == "relu":
        return nn.ReLU()
    if config.activation == "leakyrelu":
        return nn.LeakyReLU(0.1)
    raise ValueError(f"SRVGGNetCompact: unknown activation {config.activation!r}; expected prelu, relu or leakyrelu")


def is_srvgg(tensors: Mapping[str, Tensor]) -> bool:
    """Whether a state dict has the SRVGGNetCompact layout (only body.<i>.weight/bias keys, body.0 a 3x3 conv)."""
    return ("body.0.weight" in tensors and all(_BODY_KEY.match(key) for key in tensors)
            and tensors["body.0.weight"].dim() == 4)


def srvgg_config(tensors: Mapping[str, Tensor], what: str) -> SRVGGConfig:
    """The architecture a state dict of SRVGGNetCompact layout describes (see the module docstring).

    Raises:
        ValueError: the shapes do not form a SRVGGNetCompact (the message names `what` and the key).
    """
    indices = sorted({int(match.group(1)) for key in tensors if (match := _BODY_KEY.match(key))})
    last = indices[-1]
    first = tensors["body.0.weight"]
    features, in_channels = first.shape[:2]
    prelu = "body.1.weight" in tensors
    if last < 2 or last % 2:
        raise ValueError(f"{what}: SRVGGNetCompact layout needs its last convolution at an even body index >= 2; "
                         f"found body.{last}")
    expected = {0, last} | set(range(2, last, 2)) | (set(range(1, last, 2)) if prelu else set())
    if set(indices) != expected:
        raise ValueError(f"{what}: SRVGGNetCompact layout has unexpected or missing body indices "
                         f"{sorted(set(indices) ^ expected)}")
    shuffled = tensors[f"body.{last}.weight"].shape[0]
    scale = math.isqrt(shuffled // in_channels)
    if scale < 1 or scale * scale * in_channels != shuffled:
        raise ValueError(f"{what}: body.{last} makes {shuffled} channels, not channels x scale^2 for "
                         f"{in_channels} channels")
    return SRVGGConfig(in_channels=in_channels, out_channels=in_channels, features=features,
                       convolutions=(last - 2) // 2, scale=scale, activation="prelu" if prelu else "leakyrelu")
