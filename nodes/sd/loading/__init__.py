"""Loading SD checkpoints into MODEL / CLIP / VAE handles, offline, from files only.

`load_checkpoint` reads SD1.x, SD2.x and SDXL-base single files (`.safetensors`, or pickles through
`torch.load(weights_only=True)`) and diffusers pipeline folders; `load_vae` reads standalone VAEs.
Opening a checkpoint reads its header and checks every part against its architecture; the parts
themselves are ModelRefs the model manager loads when first used (a workflow that only encodes text never
reads the UNet), keyed by the file's identity (path, mtime, size) and the dtype asked for, so re-running a
workflow, or another loader node naming the same file, reuses what is loaded. Loaded modules are shared:
callers treat them as read-only (patches return new handles and derived refs).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from nodegraph.models import ModelManager
from nodes.sd.loading.borrowed import BorrowedPartsCheckpoint, parts_from
from nodes.sd.loading.configs import family_defaults, nodegraph_config, template, vae_config_from_weights
from nodes.sd.loading.detect import UNET_PREFIX, VAE_PREFIX, detect_family
from nodes.sd.loading.diffusers_folder import DiffusersFolderCheckpoint, read_json, vae_from_folder
from nodes.sd.loading.files import (
    SAFETENSORS_SUFFIXES, PrefixView, WeightFile, check_suffix, file_signature, folder_signature,
)
from nodes.sd.loading.handles import LoadedCheckpoint, assemble, vae_handle
from nodes.sd.loading.single_file import SingleFileCheckpoint, vae_from_original
from nodes.sd.loading.vae_family import detect_vae_latent_format
from nodes.sd.types import Family, VaeHandle

logger = logging.getLogger(__name__)
__all__ = ["LoadedCheckpoint", "load_checkpoint", "load_vae", "open_checkpoint"]


def signature(path: Path) -> tuple:
    """What identifies a model file's contents cheaply: path, mtime and size (every file, for a folder)."""
    return folder_signature(path) if path.is_dir() else file_signature(path)


def _manager(manager: ModelManager | None, device: str) -> ModelManager:
    """The caller's manager; scripts and tests that pass none get a private one without budgets."""
    return manager if manager is not None else ModelManager(device, ram_budget=sys.maxsize)


def open_checkpoint(path: str | Path) -> SingleFileCheckpoint | DiffusersFolderCheckpoint:
    """Inspect a checkpoint (header and configs only) and check its parts; nothing is built yet.

    Raises:
        ValueError: unknown layout, refused file type, or weights that do not match the architecture
            (the message names the keys).
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{path}: a folder checkpoint must be a diffusers pipeline with model_index.json")
        return DiffusersFolderCheckpoint(path)
    check_suffix(path)
    base = parts_from(path) if path.suffix.lower() in SAFETENSORS_SUFFIXES else None
    return SingleFileCheckpoint(path) if base is None else BorrowedPartsCheckpoint(path, base)


def inspected(path: Path, manager: ModelManager, key: tuple | None = None) -> SingleFileCheckpoint | DiffusersFolderCheckpoint:
    """`open_checkpoint(path)`, kept by the manager by file identity: a loader node that runs again (its
    outputs evicted from the cache, or another node naming the same file) reads no header twice."""
    key = key if key is not None else signature(path)
    return manager.ref((key, "inspected"), lambda device: open_checkpoint(path), name=f"{path.name} header").get()


def load_checkpoint(
    path: str | Path,
    *,
    manager: ModelManager | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    text_dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype | None = None,
    embedding_dirs: Sequence[str | Path] = (),
    opened: SingleFileCheckpoint | DiffusersFolderCheckpoint | None = None,
) -> LoadedCheckpoint:
    """Open an SD checkpoint (SD1.x, SD2.x, SDXL base) as handles whose parts the model manager loads.

    Args:
        path: a single checkpoint file, or a diffusers pipeline folder (one with `model_index.json`).
        manager: the model manager that owns the parts (a private one when None).
        device: the compute device when no manager is given (else the manager's).
        dtype: the UNet's floating-point type (and the other parts' unless given).
        text_dtype: the text encoders' type.
        vae_dtype: the VAE's type.
        embedding_dirs: folders `embedding:name` prompts look in; set on the returned CLIP handle.
        opened: what `open_checkpoint(path)` returned, when the caller already inspected the file.

    Raises:
        ValueError: unknown layout, refused file type, or weights that do not match the architecture.
    """
    path = Path(path)
    manager = _manager(manager, device)
    key = signature(path)
    source = opened or inspected(path, manager, key)
    text_dtype, vae_dtype = text_dtype or dtype, vae_dtype or dtype
    name = path.name

    def hint(part: str, part_dtype: torch.dtype) -> int | None:
        return source.nbytes(part, part_dtype) if isinstance(source, SingleFileCheckpoint) else None

    def label(what: str, part_dtype: torch.dtype) -> str:
        return f"{name} {what} ({str(part_dtype).removeprefix('torch.')})"

    unet = manager.ref((key, "unet", str(dtype)), lambda dev: source.build_unet(device=dev, dtype=dtype),
                       name=label("UNet", dtype), size_hint=hint("unet", dtype))
    encoders = [
        manager.ref((key, f"text_encoder_{index}", str(text_dtype)),
                    lambda dev, index=index: source.build_text_encoder(index, device=dev, dtype=text_dtype),
                    name=label(f"text encoder {index + 1}", text_dtype),
                    size_hint=hint(f"text_encoder_{index}", text_dtype))
        for index in range(len(source.open_clip if isinstance(source, DiffusersFolderCheckpoint)
                               else source.layout.open_clip))
    ]
    vae = manager.ref((key, "vae", str(vae_dtype)), lambda dev: source.build_vae(device=dev, dtype=vae_dtype),
                      name=label("VAE", vae_dtype), size_hint=hint("vae", vae_dtype))
    if isinstance(source, DiffusersFolderCheckpoint):
        schedule, open_clip, clip_layer_idx = source.schedule, source.open_clip, None
    else:
        schedule, open_clip = source.schedule, source.layout.open_clip
        clip_layer_idx = source.config.get("clip_layer_idx")
    loaded = assemble(
        family=source.family, prediction=source.prediction, schedule=schedule, unet=unet, vae=vae,
        vae_config=source.vae_config, encoders=encoders, open_clip=open_clip, device=manager.device, dtype=dtype,
        source=str(path), metadata=source.metadata, clip_layer_idx=clip_layer_idx, kind=source.kind,
    )
    if embedding_dirs:
        clip = replace(loaded.clip, embedding_dirs=tuple(str(d) for d in embedding_dirs))
        loaded = replace(loaded, clip=clip)
    return loaded


def load_vae(
    path: str | Path,
    *,
    manager: ModelManager | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    family: Family | None = None,
    scaling_factor: float | None = None,
) -> VaeHandle:
    """Open a standalone VAE (VAELoader): LDM or diffusers key layout, a single file or a diffusers folder.

    Args:
        path: a VAE weight file, a diffusers `vae/` folder, or a pipeline folder (its `vae/` is used).
        manager: the model manager that owns it (a private one when None).
        device: the compute device when no manager is given.
        dtype: the floating-point type weights are converted to.
        family: which family's latent scaling applies. SD1/SD2 and SDXL VAEs have identical layouts but
            different scalings (0.18215 vs 0.13025); when neither this nor `scaling_factor` is given, the
            file's metadata, else its latents' statistics, decide (nodes/sd/loading/vae_family.py).
        scaling_factor: overrides everything else.
    """
    path = Path(path)
    manager = _manager(manager, device)
    key = (signature(path), "vae", str(dtype))
    if path.is_dir():
        folder = path / "vae" if (path / "model_index.json").is_file() else path
        config = read_json(folder / "config.json")
        if scaling_factor is None and family is not None and "scaling_factor" not in config:
            scaling_factor = template(family_defaults(family)["vae"])["scaling_factor"]
        config.setdefault("scaling_factor", template(family_defaults("sd1")["vae"])["scaling_factor"])
        ref = manager.ref(key, lambda dev: vae_from_folder(folder, device=dev, dtype=dtype), name=f"{path.name} VAE")
        return vae_handle(ref, manager.device, str(path), scaling_factor=scaling_factor, config=config)
    check_suffix(path)
    with WeightFile(path) as weights:
        metadata = weights.metadata
        found_family: Family | None = None
        if any(key.startswith(UNET_PREFIX) for key in weights):
            found_family = detect_family(list(weights))
        prefix = next((p for p in (VAE_PREFIX, "vae.") if any(k.startswith(p) for k in weights)), "")
    overrides = dict(nodegraph_config(metadata).get("vae", {}))
    build_family = family or found_family or "sd1"  # the layout is the same; only the latent scaling differs

    def build(dev: str) -> torch.nn.Module:
        with WeightFile(path) as weights:
            part = PrefixView(weights, prefix)
            return vae_from_original(part, build_family, overrides, device=dev, dtype=dtype, what=f"VAE ({path.name})")

    ref = manager.ref((*key, family, scaling_factor), build, name=f"{path.name} VAE")
    module = ref.get()  # VAEs are small: build now, so a broken file fails in its loader node
    with WeightFile(path) as weights:
        if family is None and found_family is None and scaling_factor is None:
            # SD1/SD2 and SDXL VAEs share one layout: metadata, else the built VAE's latent statistics, tell them apart
            found = detect_vae_latent_format(PrefixView(weights, prefix), metadata, vae=module)
            logger.info("VAE %s: %s, scaling %g (%s)", path.name, found.family, found.scaling_factor, found.how)
            build_family = found.family
            overrides.setdefault("scaling_factor", found.scaling_factor)
            overrides.setdefault("shift_factor", found.shift_factor)
        if scaling_factor is not None:
            overrides["scaling_factor"] = scaling_factor
        config = vae_config_from_weights(PrefixView(weights, prefix), build_family, overrides)
    return vae_handle(ref, manager.device, str(path), config=config)
