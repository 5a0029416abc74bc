"""RRDBNet, the ESRGAN generator (Wang et al. 2018, "ESRGAN: Enhanced Super-Resolution Generative Adversarial
Networks", https://arxiv.org/abs/1809.00219), in the three key layouts its published files use.

The network: a first convolution; a trunk of Residual-in-Residual Dense Blocks (three dense blocks of five
convolutions each, every convolution seeing all earlier features, each block's output scaled by 0.2 and added
to its input); a trunk convolution added back to the first features; then per factor of 2 a nearest-neighbour
upscale and a convolution; then two final convolutions. Activations are LeakyReLU(0.2).

Layouts (converted to this module's names, the BasicSR ones, by `normalize_keys`):
- "old": the original ESRGAN repository's flattened sequential, `model.0` ... `model.1.sub.<i>.RDB<k>.conv<j>.0`,
  upscaling convolutions at `model.3`, `model.6`, ..., and the two final ones after them.
- "new": its later rewrite, `conv_first`, `RRDB_trunk.<i>.RDB<k>.conv<j>`, `trunk_conv`, `upconv<n>`, `HRconv`,
  `conv_last`.
- BasicSR / Real-ESRGAN: `conv_first`, `body.<i>.rdb<k>.conv<j>`, `conv_body`, `conv_up<n>`, `conv_hr`,
  `conv_last`; its 2x and 1x models first fold each 2x2 (4x4) pixel block into channels (pixel unshuffle), which
  shows as a first convolution taking 4 (16) times the output's channels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SLOPE = 0.2
RESIDUAL_SCALE = 0.2


@dataclass(frozen=True)
class RRDBConfig:
    in_channels: int = 3
    out_channels: int = 3
    features: int = 64
    blocks: int = 23
    growth: int = 32
    """Channels each dense convolution adds (the paper's growth rate)."""
    upsamples: int = 2
    """Nearest-neighbour 2x upscales, each followed by a convolution."""
    unshuffle: int = 1
    """Pixel-unshuffle factor applied to the input first (BasicSR's 2x models: 2, 1x models: 4)."""

    @property
    def scale(self) -> int:
        return 2**self.upsamples // self.unshuffle


class ResidualDenseBlock(nn.Module):
    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, growth, 3, padding=1)
        self.conv2 = nn.Conv2d(features + growth, growth, 3, padding=1)
        self.conv3 = nn.Conv2d(features + 2 * growth, growth, 3, padding=1)
        self.conv4 = nn.Conv2d(features + 3 * growth, growth, 3, padding=1)
        self.conv5 = nn.Conv2d(features + 4 * growth, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        seen = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            seen.append(F.leaky_relu(conv(torch.cat(seen, 1)), SLOPE))
        return self.conv5(torch.cat(seen, 1)) * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(features, growth)
        self.rdb2 = ResidualDenseBlock(features, growth)
        self.rdb3 = ResidualDenseBlock(features, growth)

    def forward(self, x: Tensor) -> Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    """ESRGAN's generator; `forward` takes [B, C, H, W] in 0..1 (H, W multiples of `unshuffle`)."""

    def __init__(self, config: RRDBConfig) -> None:
        super().__init__()
        self.config = config
        f = config.features
        self.conv_first = nn.Conv2d(config.in_channels * config.unshuffle**2, f, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(f, config.growth) for _ in range(config.blocks)))
        self.conv_body = nn.Conv2d(f, f, 3, padding=1)
        self.conv_up = nn.ModuleList(nn.Conv2d(f, f, 3, padding=1) for _ in range(config.upsamples))
        self.conv_hr = nn.Conv2d(f, f, 3, padding=1)
        self.conv_last = nn.Conv2d(f, config.out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.config.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.config.unshuffle)
        features = self.conv_first(x)
        features = features + self.conv_body(self.body(features))
        for conv in self.conv_up:
            features = F.leaky_relu(conv(F.interpolate(features, scale_factor=2, mode="nearest")), SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(features), SLOPE))


# -- reading files ------------------------------------------------------------------------------------------

_OLD_BLOCK = re.compile(r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)$")
_OLD_TOP = re.compile(r"model\.(\d+)\.(weight|bias)$")
_NEW_BLOCK = re.compile(r"RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\.(weight|bias)$")
_BASICSR_BLOCK = re.compile(r"body\.(\d+)\.rdb([123])\.conv([1-5])\.(weight|bias)$")
_NEW_NAMES = {"conv_first": "conv_first", "trunk_conv": "conv_body", "HRconv": "conv_hr", "conv_last": "conv_last"}
_BASICSR_NAMES = {"conv_first": "conv_first", "conv_body": "conv_body", "conv_hr": "conv_hr", "conv_last": "conv_last"}


def rrdb_layout(tensors: Mapping[str, Tensor]) -> str | None:
    """"old", "new" or "basicsr" when a state dict has that RRDBNet layout (by its tell-tale keys), else None."""
    if "model.0.weight" in tensors and any(_OLD_BLOCK.match(key) for key in tensors):
        return "old"
    if "conv_first.weight" in tensors and any(_NEW_BLOCK.match(key) for key in tensors):
        return "new"
    if "conv_first.weight" in tensors and any(_BASICSR_BLOCK.match(key) for key in tensors):
        return "basicsr"
    return None


def normalize_keys(tensors: Mapping[str, Tensor], layout: str, what: str) -> dict[str, Tensor]:
    """The state dict renamed to RRDBNet's keys. A key the layout does not explain is an error naming it."""
    rename = _old_name(tensors, what) if layout == "old" else _named_layout_name(layout)
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, tensor in tensors.items():
        name = rename(key)
        if name is None:
            unknown.append(key)
        else:
            out[name] = tensor
    if unknown:
        shown = ", ".join(sorted(unknown)[:5])
        raise ValueError(f"{what}: {len(unknown)} keys do not belong to an ESRGAN ({layout} layout) model, "
                         f"e.g. {shown}")
    return out


def _old_name(tensors: Mapping[str, Tensor], what: str) -> Callable[[str], str | None]:
    """The old layout's renaming: the flattened sequential's indices depend on the number of 2x upscales."""
    top = sorted({int(m[1]) for key in tensors if (m := _OLD_TOP.match(key))})
    last = top[-1] if top else 0
    upsamples, remainder = divmod(last - 4, 3)
    if last < 4 or remainder:
        raise ValueError(f"{what}: old ESRGAN layout ends at model.{last}; expected model.4, model.7, model.10...")
    names = {0: "conv_first", last - 2: "conv_hr", last: "conv_last"}
    names.update({3 + 3 * n: f"conv_up.{n}" for n in range(upsamples)})
    trunk = _count(tensors, _OLD_BLOCK)  # the trunk convolution follows the blocks in model.1.sub

    def rename(key: str) -> str | None:
        if m := _OLD_BLOCK.match(key):
            return f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"
        if m := re.fullmatch(r"model\.1\.sub\.(\d+)\.(weight|bias)", key):
            return f"conv_body.{m[2]}" if int(m[1]) == trunk else None
        if (m := _OLD_TOP.match(key)) and int(m[1]) in names:
            return f"{names[int(m[1])]}.{m[2]}"
        return None

    return rename


def _named_layout_name(layout: str) -> Callable[[str], str | None]:
    """The renaming of the "new" and BasicSR layouts, which name their modules."""
    block, singles = (_NEW_BLOCK, _NEW_NAMES) if layout == "new" else (_BASICSR_BLOCK, _BASICSR_NAMES)
    up = re.compile(r"upconv(\d+)" if layout == "new" else r"conv_up(\d+)")

    def rename(key: str) -> str | None:
        stem, _, kind = key.rpartition(".")
        if m := block.match(key):
            return f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"
        if stem in singles:
            return f"{singles[stem]}.{kind}"
        if (m := up.fullmatch(stem)) and int(m[1]) >= 1:
            return f"conv_up.{int(m[1]) - 1}.{kind}"
        return None

    return rename


def _count(tensors: Mapping[str, Tensor], pattern: re.Pattern[str]) -> int:
    return len({m.group(1) for key in tensors if (m := pattern.match(key))})


def rrdb_config(tensors: Mapping[str, Tensor], what: str) -> RRDBConfig:
    """The architecture a state dict in RRDBNet's own key names describes."""
    first, last = tensors["conv_first.weight"], tensors.get("conv_last.weight")
    if last is None or "body.0.rdb1.conv1.weight" not in tensors:
        raise ValueError(f"{what}: ESRGAN model without conv_last or a first dense block")
    out_channels = last.shape[0]
    ratio = first.shape[1] // out_channels
    unshuffle = math.isqrt(ratio)
    if unshuffle * unshuffle * out_channels != first.shape[1] or unshuffle not in (1, 2, 4):
        raise ValueError(f"{what}: the first convolution takes {first.shape[1]} channels, which is not "
                         f"1, 4 or 16 times the {out_channels} output channels")
    upsamples = len({key.split(".")[1] for key in tensors if key.startswith("conv_up.")})
    config = RRDBConfig(in_channels=out_channels, out_channels=out_channels, features=first.shape[0],
                        blocks=_count(tensors, re.compile(r"body\.(\d+)\.")),
                        growth=tensors["body.0.rdb1.conv1.weight"].shape[0], upsamples=upsamples, unshuffle=unshuffle)
    if 2**upsamples % unshuffle:
        raise ValueError(f"{what}: {upsamples} 2x upscales cannot undo a pixel unshuffle by {unshuffle}")
    return config
