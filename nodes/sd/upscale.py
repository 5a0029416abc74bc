"""Super-resolution models: reading their files, and running them over an image in tiles.

Files are recognised by their keys (ESRGAN's three layouts, Real-ESRGAN's compact SRVGGNet: see
upscale_rrdb.py, upscale_srvgg.py) and loaded through the model manager, which owns the module; the
UPSCALE_MODEL socket carries a small frozen handle. Safetensors files are read plainly, pickles only with
`torch.load(weights_only=True)` (files.py). The architectures are written here rather than taken from spandrel
(ComfyUI's choice): spandrel needs torchvision, and the only torchvision for torch 2.13 on this project's package
indexes (0.28.0) is a CUDA build whose C extension does not load against the CPU torch wheel.

Running a model over a large image at once can need more memory than the device has (a 4x ESRGAN keeps
dozens of full-resolution feature maps), so the image is cut into overlapping tiles, as ComfyUI does (512 px,
32 px overlap, the tile halved down to 128 px when the device runs out of memory): each tile is upscaled
alone and the results are blended with weights that ramp linearly across the overlap, so seams do not show.
A pixel near a tile's inner edge sees less context than in one whole pass, so tiled and untiled results differ
slightly there (tests/test_upscale_models.py measures it); an image no larger than a tile runs in one pass.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from nodegraph.models import ModelManager, ModelRef, resolve
from nodes.sd.loading.files import check_suffix, file_signature, read_raw
from nodes.sd.upscale_rrdb import RRDBNet, normalize_keys, rrdb_config, rrdb_layout
from nodes.sd.upscale_srvgg import SRVGGNetCompact, is_srvgg, srvgg_config

TILE = 512
OVERLAP = 32
MIN_TILE = 128
"""ComfyUI's tiling: 512 px tiles overlapping by 32 px, halved on out-of-memory while at least 128 px."""


@dataclass(frozen=True)
class UpscaleModelHandle:
    """UPSCALE_MODEL: the manager's ref to a super-resolution module and what the file said about it.
    Shared with the cache and other branches: never mutate it."""

    model_ref: ModelRef | torch.nn.Module
    architecture: str
    """"ESRGAN" or "SRVGGNetCompact"."""
    scale: int
    in_channels: int
    out_channels: int
    multiple: int = 1
    """Input sides must be multiples of this (pixel-unshuffling models); inputs are padded to fit."""
    source: str = ""

    @property
    def model(self) -> torch.nn.Module:
        return resolve(self.model_ref)


def build_upscale_module(tensors: Mapping[str, Tensor], what: str) -> tuple[torch.nn.Module, str]:
    """The module a super-resolution state dict describes, with its weights, and its architecture's name.

    Raises:
        ValueError: the layout is none this loader knows, or the weights do not fit it (naming `what`).
    """
    tensors = dict(tensors)
    if tensors and all(key.startswith("module.") for key in tensors):  # saved from a DataParallel wrapper
        tensors = {key.removeprefix("module."): value for key, value in tensors.items()}
    layout = rrdb_layout(tensors)
    if layout is not None:
        tensors = normalize_keys(tensors, layout, what)
        module: torch.nn.Module = _empty(RRDBNet, rrdb_config(tensors, what))
        architecture = "ESRGAN"
    elif is_srvgg(tensors):
        module = _empty(SRVGGNetCompact, srvgg_config(tensors, what))
        architecture = "SRVGGNetCompact"
    else:
        shown = ", ".join(sorted(tensors)[:5]) or "none"
        raise ValueError(f"{what}: unknown upscale model layout; supported are ESRGAN (model.0/model.1.sub.*, "
                         f"conv_first + RRDB_trunk.* or body.*.rdb1.*) and SRVGGNetCompact (body.<i> only); "
                         f"found keys e.g. {shown}")
    try:
        module.load_state_dict({key: value.float() for key, value in tensors.items()}, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"{what}: the weights do not fit the {architecture} their keys describe: {error}") from error
    module.requires_grad_(False)
    return module.eval(), architecture


def _empty(cls: type[torch.nn.Module], config: object) -> torch.nn.Module:
    with torch.device("meta"):  # every tensor comes from the file: no random init to overwrite
        return cls(config)


WRAPPERS = ("params_ema", "params", "state_dict", "model")
"""Keys that training frameworks nest a state dict under (BasicSR saves {"params_ema": ...}); EMA weights win."""


def read_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """A super-resolution file's tensors, unwrapped from a training framework's nesting (see WRAPPERS)."""
    try:
        data, _ = read_raw(path)
    except Exception as error:
        raise ValueError(f"{what}: cannot read the file: {error}") from error
    while isinstance(data, dict) and not any(isinstance(value, Tensor) for value in data.values()):
        nested = next((data[key] for key in WRAPPERS if isinstance(data.get(key), dict)), None)
        if nested is None:
            break
        data = nested
    if not isinstance(data, dict):
        raise ValueError(f"{what}: expected a dict of tensors, found {type(data).__name__}")
    return {key: value for key, value in data.items() if isinstance(value, Tensor)}


def _load(path: Path, device: str) -> torch.nn.Module:
    what = f"upscale model {path.name}"
    return build_upscale_module(read_state_dict(path, what), what)[0].to(device)


def describe(module: torch.nn.Module) -> dict[str, int | str]:
    """What a handle records of a module: architecture, scale, channels, input side multiple."""
    config = module.config  # type: ignore[attr-defined]
    if isinstance(module, RRDBNet):
        return dict(architecture="ESRGAN", scale=config.scale, in_channels=config.in_channels,
                    out_channels=config.out_channels, multiple=config.unshuffle)
    return dict(architecture="SRVGGNetCompact", scale=config.scale, in_channels=config.in_channels,
                out_channels=config.out_channels, multiple=1)


def load_upscale_model(path: str | Path, *, manager: ModelManager | None = None,
                       device: str = "cpu") -> UpscaleModelHandle:
    """Load a super-resolution model file through the model manager (a private one when None), which keeps it
    by file identity; built now, so a broken or unknown file fails in its loader node.

    Raises:
        ValueError: the file is unreadable or of a layout not supported (the message names the file).
    """
    path = Path(path)
    check_suffix(path)
    manager = manager if manager is not None else ModelManager(device, ram_budget=sys.maxsize)
    ref = manager.ref((file_signature(path), "upscale_model"), partial(_load, path), name=f"upscale model {path.name}")
    return UpscaleModelHandle(ref, source=str(path), **describe(ref.get()))  # type: ignore[arg-type]


# -- running ------------------------------------------------------------------------------------------------


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of `tile` px start along a side of `size` px: `tile - overlap` apart, the last one flush with
    the end (so every tile is whole); one tile at 0 when the side fits in one."""
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap {overlap} must be at least 0 and less than the tile size {tile}")
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def feather(length: int, ramp: int, at_start: bool, at_end: bool, device: torch.device) -> Tensor:
    """Blend weights along one side of a tile: ramping linearly over `ramp` px from 1/ramp to 1 at an edge
    that another tile overlaps (`at_start`/`at_end`), 1 elsewhere."""
    weights = torch.ones(length, device=device)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        rising = torch.arange(1, ramp + 1, device=device, dtype=weights.dtype) / ramp
        if at_start:
            weights[:ramp] = rising
        if at_end:
            weights[length - ramp:] = torch.minimum(weights[length - ramp:], rising.flip(0))
    return weights


def tiled_scale(image: Tensor, function: Callable[[Tensor], Tensor], scale: int, *, tile: int = TILE,
                overlap: int = OVERLAP, progress: Callable[[int, int], None] | None = None) -> Tensor:
    """`function` (a `scale`x upscaler of [B, C, h, w] tiles) over `image` [B, C, H, W] in overlapping tiles,
    blended linearly across each overlap (see the module docstring). One pass when the image fits a tile."""
    batch, _, height, width = image.shape
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    if len(rows) == len(cols) == 1:
        result = function(image)
        if progress is not None:
            progress(1, 1)
        return result
    out: Tensor | None = None
    total = torch.zeros(1, 1, height * scale, width * scale, device=image.device)
    done, steps = 0, len(rows) * len(cols)
    for top in rows:
        for left in cols:
            piece = function(image[:, :, top:top + min(tile, height), left:left + min(tile, width)])
            if out is None:
                out = torch.zeros(batch, piece.shape[1], height * scale, width * scale, device=image.device,
                                  dtype=piece.dtype)
            h, w = piece.shape[-2:]
            ramp = overlap * scale
            weight = (feather(h, ramp, top > 0, top + h // scale < height, image.device)[:, None]
                      * feather(w, ramp, left > 0, left + w // scale < width, image.device)[None, :])
            y, x = top * scale, left * scale
            out[:, :, y:y + h, x:x + w] += piece * weight
            total[:, :, y:y + h, x:x + w] += weight
            done += 1
            if progress is not None:
                progress(done, steps)
    assert out is not None
    return out / total


def run_padded(module: torch.nn.Module, tile: Tensor, multiple: int) -> Tensor:
    """The module on a tile whose sides are padded (by reflection) up to `multiple`, output cropped back."""
    height, width = tile.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h or pad_w:
        tile = F.pad(tile, (0, pad_w, 0, pad_h), mode="replicate")
    out = module(tile)
    scale = out.shape[-1] // tile.shape[-1]
    return out[..., : height * scale, : width * scale]


def upscale_image(handle: UpscaleModelHandle, image: Tensor, *, device: str | None = None, tile: int = TILE,
                  overlap: int = OVERLAP, module: torch.nn.Module | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Tensor:
    """ComfyUI's ImageUpscaleWithModel: an IMAGE [B, H, W, C] upscaled by the model, tiled, clamped to 0..1.

    Tiles start at `tile` px and halve on out-of-memory while at least MIN_TILE px (then the error stands).

    Args:
        handle: the UPSCALE_MODEL.
        image: IMAGE in 0..1; channels beyond the model's input channels (alpha) are dropped.
        device: where to compute (default: where the model's weights are).
        module: the loaded module, when the caller already holds it (pinned in the manager).
    """
    if image.dim() != 4:
        raise ValueError(f"ImageUpscaleWithModel: image must be an IMAGE [B, H, W, C], got shape {tuple(image.shape)}")
    if image.shape[-1] < handle.in_channels:
        raise ValueError(f"ImageUpscaleWithModel: the model takes {handle.in_channels} channels; the image has "
                         f"{image.shape[-1]}")
    module = module if module is not None else handle.model
    parameter = next(module.parameters())
    device = device or str(parameter.device)
    pixels = image[..., : handle.in_channels].movedim(-1, 1).to(device, parameter.dtype)
    function = partial(run_padded, module, multiple=handle.multiple)
    while True:
        try:
            with torch.no_grad():  # not inference_mode: later nodes may still want autograd on the result
                out = tiled_scale(pixels, function, handle.scale, tile=tile, overlap=overlap, progress=progress)
            break
        except torch.OutOfMemoryError:
            tile //= 2
            if tile < MIN_TILE:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return out.clamp(0.0, 1.0).movedim(1, -1).float().cpu()
