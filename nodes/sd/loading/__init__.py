"""Loading SD checkpoints into MODEL / CLIP / VAE handles, offline, from files only.

`load_checkpoint` reads SD1.x, SD2.x and SDXL-base single files (`.safetensors`, or pickles through
`torch.load(weights_only=True)`) and diffusers pipeline folders; `load_vae` reads standalone VAEs.
Loaded objects are kept in a small LRU keyed by the file's identity (path, mtime, size) and the device
and dtype asked for, so re-running a workflow does not reload gigabytes. Cached modules are shared:
callers must treat them as read-only (patches return new handles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from nodes.sd.loading.configs import family_defaults, nodegraph_config, template
from nodes.sd.loading.detect import UNET_PREFIX, VAE_PREFIX, detect_family
from nodes.sd.loading.diffusers_folder import load_diffusers_folder, read_json, vae_from_folder
from nodes.sd.loading.files import LRUCache, check_suffix, file_signature, folder_signature, read_weights
from nodes.sd.loading.handles import LoadedCheckpoint, vae_handle
from nodes.sd.loading.single_file import load_single_file, vae_from_original
from nodes.sd.types import Family, VaeHandle

__all__ = ["LoadedCheckpoint", "checkpoint_cache", "load_checkpoint", "load_vae", "vae_cache"]

checkpoint_cache = LRUCache(capacity=2)
"""Whole checkpoints: two fit an SDXL + refiner-sized workflow without holding every model ever used."""
vae_cache = LRUCache(capacity=4)


def _signature(path: Path) -> tuple:
    return folder_signature(path) if path.is_dir() else file_signature(path)


def load_checkpoint(
    path: str | Path,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    embedding_dirs: Sequence[str | Path] = (),
) -> LoadedCheckpoint:
    """Load a Stable Diffusion checkpoint (SD1.x, SD2.x, SDXL base), reusing a cached load when possible.

    Args:
        path: a single checkpoint file, or a diffusers pipeline folder (one with `model_index.json`).
        device: where the modules live.
        dtype: the floating-point type weights are converted to.
        embedding_dirs: folders `embedding:name` prompts look in; set on the returned CLIP handle.

    Raises:
        ValueError: unknown layout, refused file type, or weights that do not match the architecture
            (the message names the keys).
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{path}: a folder checkpoint must be a diffusers pipeline with model_index.json")
        loader = load_diffusers_folder
    else:
        check_suffix(path)
        loader = load_single_file
    key = (_signature(path), str(device), str(dtype))
    loaded = checkpoint_cache.get_or_load(key, partial(loader, path, device=device, dtype=dtype))
    if embedding_dirs:
        clip = replace(loaded.clip, embedding_dirs=tuple(str(d) for d in embedding_dirs))
        loaded = replace(loaded, clip=clip)
    return loaded


def _vae_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], Family | None]:
    """A VAE file's tensors without any `first_stage_model.`/`vae.` prefix; a full checkpoint gives its VAE."""
    tensors, metadata = read_weights(path)
    family: Family | None = None
    if any(key.startswith(UNET_PREFIX) for key in tensors):
        family = detect_family(list(tensors))
    for prefix in (VAE_PREFIX, "vae."):
        if any(key.startswith(prefix) for key in tensors):
            tensors = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
            break
    return tensors, metadata, family


def _load_vae_uncached(
    path: Path, device: str, dtype: torch.dtype, family: Family | None, scaling_factor: float | None
) -> VaeHandle:
    if path.is_dir():
        folder = path / "vae" if (path / "model_index.json").is_file() else path
        vae = vae_from_folder(folder, device=device, dtype=dtype)
        if scaling_factor is None and family is not None and "scaling_factor" not in read_json(folder / "config.json"):
            scaling_factor = template(family_defaults(family)["vae"])["scaling_factor"]
        return vae_handle(vae, device, str(path), scaling_factor)
    tensors, metadata, found_family = _vae_tensors(path)
    overrides = dict(nodegraph_config(metadata).get("vae", {}))
    family = family or found_family or "sd1"
    if scaling_factor is not None:
        overrides["scaling_factor"] = scaling_factor
    vae = vae_from_original(tensors, family, overrides, device=device, dtype=dtype, what=f"VAE ({path.name})")
    return vae_handle(vae, device, str(path))


def load_vae(
    path: str | Path,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    family: Family | None = None,
    scaling_factor: float | None = None,
) -> VaeHandle:
    """Load a standalone VAE (VAELoader): LDM or diffusers key layout, a single file or a diffusers folder.

    Args:
        path: a VAE weight file, a diffusers `vae/` folder, or a pipeline folder (its `vae/` is used).
        device: where the module lives.
        dtype: the floating-point type weights are converted to.
        family: which family's latent scaling applies when the file does not say. SD1/SD2 and SDXL VAEs have
            identical layouts but different scalings (0.18215 vs 0.13025), so an SDXL VAE file without
            metadata needs `family="sdxl"` (or `scaling_factor`).
        scaling_factor: overrides everything else.
    """
    path = Path(path)
    if not path.is_dir():
        check_suffix(path)
    key = (_signature(path), str(device), str(dtype), family, scaling_factor)
    return vae_cache.get_or_load(key, partial(_load_vae_uncached, path, device, dtype, family, scaling_factor))
