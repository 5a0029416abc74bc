"""Feature networks for the set metrics (FID, KID, IS, precision/recall) and the reference-folder feature cache.

A FEATURE_MODEL is one of:

- "inception": FID's Inception-v3 from a pytorch-fid weight file (nodes/sd/metrics/inception.py): 2048-d pool3
  features and 1008 ImageNet-ish class logits. Numbers are comparable with published FID/KID/IS/precision-recall
  figures computed with the same weights at the same image count (FID is biased upward at small counts).
- "clip_vision": a CLIP vision tower's projected image embedding as the features, and, when class prompts were
  encoded, zero-shot class logits (100 x cosine with each class's text embedding) for the Inception Score. With the
  shipped tiny tower this is the "embedded" variant: its numbers are comparable only with other numbers from the
  same tower (and the same class prompts), never with Inception figures.

Reference-folder features are cached as files under the environment's temp folder (`metrics/`), keyed by the
feature network's identity and the folder's content digest: the environment owns that folder, so the cache is
inspectable and freed by deleting it, and nothing is held in module state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from nodegraph.models import ModelManager, ModelRef, resolve

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CACHE_FOLDER = "metrics"
CACHE_VERSION = 1


@dataclass(frozen=True)
class FeatureModel:
    """FEATURE_MODEL: a feature network (by the model manager's ref) and what it is."""

    model_ref: ModelRef | torch.nn.Module
    kind: str
    """"inception" or "clip_vision"."""
    identity: str
    """Names the network's weights (file and signature) and settings: the key of cached reference features."""
    class_embeds: Tensor | None = None
    """[C, D] unit text embeddings of the class prompts (clip_vision only): zero-shot logits for the IS."""
    logit_scale: float = 100.0

    @property
    def model(self) -> torch.nn.Module:
        return resolve(self.model_ref)


def _held(ref: ModelRef | torch.nn.Module) -> Any:
    return ref.manager.using(ref) if isinstance(ref, ModelRef) else nullcontext([ref])


@torch.no_grad()
def image_features(model: FeatureModel, images: Tensor, *, batch: int = 16) -> tuple[Tensor, Tensor | None]:
    """(features [N, D] float64, class logits [N, C] or None) of an IMAGE batch [N, H, W, C] in 0..1."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"metrics expect an IMAGE [B, H, W, C], got shape {tuple(images.shape)}")
    rgb = images[..., :3] if images.shape[-1] >= 3 else images.expand(-1, -1, -1, 3)
    features, logits = [], []
    with _held(model.model_ref) as (network,):
        parameter = next(network.parameters())
        for chunk in rgb.split(batch):
            if model.kind == "inception":
                pixels = chunk.movedim(-1, 1).to(parameter.device, parameter.dtype)
                feats, classes = network(pixels)
            else:
                from ..clip_vision import encode_image

                feats = encode_image(network, chunk).image_embeds
                classes = None
                if model.class_embeds is not None:
                    unit = torch.nn.functional.normalize(feats.float(), dim=-1)
                    classes = model.logit_scale * unit @ model.class_embeds.float().T
            features.append(feats.double().cpu())
            if classes is not None:
                logits.append(classes.double().cpu())
    return torch.cat(features), torch.cat(logits) if logits else None


def load_image_file(path: Path) -> Tensor:
    """IMAGE [1, H, W, 3] in 0..1 from an image file."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array)[None]


def folder_images(folder: Path) -> list[Path]:
    """The image files of a folder (recursively, sorted), or a ValueError naming the folder when there are none."""
    if not folder.is_dir():
        raise ValueError(f"reference folder {folder} does not exist (it is read relative to the input folder)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"reference folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def reference_features(model: FeatureModel, folder: Path, *, cache_dir: Path, digest: str,
                       progress: Callable[[int, int], None] | None = None) -> tuple[Tensor, Tensor | None]:
    """Features (and logits) of every image in `folder`, computed once per (network, folder content) and kept in
    `cache_dir/metrics/<key>.pt`. `digest` is the folder's content digest (NodeContext.fingerprint_file)."""
    key = hashlib.sha256(f"{CACHE_VERSION}|{model.identity}|{digest}".encode()).hexdigest()[:32]
    cache_file = cache_dir / CACHE_FOLDER / f"{key}.pt"
    if cache_file.is_file():
        stored = torch.load(cache_file, map_location="cpu", weights_only=True)
        return stored["features"], stored.get("logits")
    files = folder_images(folder)
    features, logits = [], []
    for index, path in enumerate(files):  # one at a time: reference images may differ in size
        feats, classes = image_features(model, load_image_file(path))
        features.append(feats)
        if classes is not None:
            logits.append(classes)
        if progress is not None:
            progress(index + 1, len(files))
    result = torch.cat(features), torch.cat(logits) if logits else None
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_file.with_suffix(".tmp")
    torch.save({"features": result[0], "logits": result[1], "files": [p.name for p in files]}, partial)
    partial.replace(cache_file)
    return result


def load_fid_inception(path: Path, *, manager: ModelManager) -> FeatureModel:
    """FEATURE_MODEL of a pytorch-fid Inception weight file, loaded (once per file identity) by the manager."""
    from nodes.sd.loading.files import file_signature, read_weights

    from .inception import build_fid_inception

    signature = file_signature(path)

    def load(device: str) -> torch.nn.Module:
        tensors, _ = read_weights(path)
        return build_fid_inception(tensors, f"Inception file {path.name}").to(device)

    ref = manager.ref((signature, "fid_inception"), load, name=f"{path.name} FID Inception")
    ref.get()  # fail here, on the loader node, when the file is not Inception weights
    return FeatureModel(model_ref=ref, kind="inception", identity=f"fid_inception|{signature}")


def clip_vision_feature_model(clip_vision: Any, class_embeds: Tensor | None = None,
                              class_prompts: tuple[str, ...] = ()) -> FeatureModel:
    """FEATURE_MODEL of a CLIP_VISION handle (features: the projected image embedding), with optional classes."""
    from nodes.sd.loading.files import file_signature

    source = getattr(clip_vision, "source", "")
    source = repr(file_signature(source)) if source and Path(source).is_file() else repr(clip_vision.model_ref)
    classes = hashlib.sha256("\n".join(class_prompts).encode()).hexdigest()[:16] if class_prompts else "none"
    return FeatureModel(model_ref=clip_vision.model_ref, kind="clip_vision", identity=f"clip_vision|{source}|{classes}",
                        class_embeds=class_embeds)
