"""UNet-only checkpoints that name the checkpoint their text encoder and VAE come from.

A fine-tune that changes only the UNet (the embedded InstructPix2Pix and depth-to-image models) need not ship
a second copy of the text encoder and VAE: its `nodegraph_config` metadata says `"parts_from": "<file name>"`,
a checkpoint in the same folder, and loading the file gives the UNet from it and the other parts from that
checkpoint, so CheckpointLoaderSimple returns all three as for any checkpoint. Stored fp8 (e4m3fn) tensors are
upcast to the dtype asked for, like every other tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nodes.sd.loading.build import new_unet
from nodes.sd.loading.configs import METADATA_KEY, nodegraph_config, unet_config_from_ldm
from nodes.sd.loading.detect import UNET_PREFIX, is_ignored
from nodes.sd.loading.files import PrefixView, WeightFile
from nodes.sd.loading.keymap import unet_rules
from nodes.sd.loading.single_file import SingleFileCheckpoint, _numel, _Shapes, check_part

PARTS_FROM = "parts_from"


def parts_from(path: Path) -> Path | None:
    """The checkpoint a UNet-only file borrows its text encoder and VAE from (None for an ordinary file).

    Raises:
        ValueError: the named checkpoint is missing, or the file holds tensors besides the UNet.
    """
    with WeightFile(path) as weights:
        name = nodegraph_config(weights.metadata).get(PARTS_FROM)
        if name is None:
            return None
        others = sorted(k for k in weights if not k.startswith(UNET_PREFIX) and not is_ignored(k))
    if others:
        raise ValueError(f"{path.name}: {METADATA_KEY}.{PARTS_FROM} is set, so it should hold only the UNet, "
                         f"but it also has {', '.join(others[:3])}")
    base = path.parent / Path(str(name)).name
    if not base.is_file():
        raise ValueError(f"{path.name} holds only a UNet and takes its text encoder and VAE from {name!r}, "
                         f"which is not in {path.parent}")
    return base


class BorrowedPartsCheckpoint(SingleFileCheckpoint):
    """A UNet-only file plus the checkpoint `parts_from` names: built part by part like any single file."""

    def __init__(self, path: Path, base_path: Path) -> None:
        self.path, self.base = path, SingleFileCheckpoint(base_path)
        self.family, self.layout, self.vae_config = self.base.family, self.base.layout, self.base.vae_config
        self._text_configs = self.base._text_configs
        with WeightFile(path) as weights:
            self.metadata = weights.metadata
            own = nodegraph_config(self.metadata)
            self.config: dict[str, Any] = {**self.base.config, **{k: v for k, v in own.items() if k != "unet"}}
            self.prediction = own.get("prediction", self.base.prediction)
            self.kind, self.schedule = self.base.kind, self.config.get("schedule", self.base.schedule)
            unet_part = _Shapes(PrefixView(weights, UNET_PREFIX, is_ignored), weights, UNET_PREFIX)
            self.unet_config = unet_config_from_ldm(unet_part, self.family, own.get("unet", {}), None)
            unet = new_unet(self.unet_config)
            check_part(unet, unet_rules(list(unet.state_dict()), self.unet_config), unet_part, f"UNet ({path.name})")
            self._numel = {**self.base._numel, "unet": _numel(weights, UNET_PREFIX)}

    def build_text_encoder(self, index: int, *, device: str, dtype: torch.dtype) -> torch.nn.Module:
        return self.base.build_text_encoder(index, device=device, dtype=dtype)

    def build_vae(self, *, device: str, dtype: torch.dtype) -> torch.nn.Module:
        return self.base.build_vae(device=device, dtype=dtype)
