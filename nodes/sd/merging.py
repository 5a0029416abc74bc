"""Model merging: weighted sums of two models' weights, tensor by tensor, as new derived models.

ComfyUI merges by patching model1 with model2's weights: every tensor becomes
`strength_model * w1 + strength_patch * w2`, formed in float32 and cast back to model1's dtype. The merge
nodes differ only in the two strengths:

- ModelMergeSimple / CLIPMergeSimple (ratio r): (1 - r) * w1 + r * w2 (r = 1 gives model2);
- ModelMergeBlocks / ModelMergeSD1 / SD2 / SDXL: the same with r chosen per tensor by the longest of the
  node's block prefixes ("input_blocks.4.", "middle_block.", "out.") that starts the tensor's LDM name, else
  the first ratio the node declares;
- ModelMergeSubtract / CLIPMergeSubtract (multiplier m): m * (w1 - w2);
- ModelMergeAdd / CLIPMergeAdd: w1 + w2.

Our UNets are diffusers modules, so block prefixes are matched against each weight's name in the original
LDM layout (from the checkpoint loader's own key map, nodes/sd/loading/keymap.py). Tensors model2 lacks, or
whose shapes differ, keep model1's values (ComfyUI skips them with a warning too); CLIP's `position_ids` and
`logit_scale` are never merged.

A merge never touches a loaded model: the result is a model the manager derives from model1's (tagged with
the recipe and model2's identity), a copy that owns every merged tensor and shares the rest, built once
when first used.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor

from nodegraph.models import ModelRef, as_ref
from nodes.sd.types import ClipHandle, ModelHandle

logger = logging.getLogger(__name__)

MergeKind = Literal["simple", "blocks", "subtract", "add"]
CLIP_SKIPPED = (".position_ids", ".logit_scale")
"""CLIP tensors CLIPMerge* leave as model1 has them (an index buffer and the contrastive temperature)."""


@dataclass(frozen=True)
class MergeRecipe:
    """How each tensor of a merge is formed: `coefficients(name)` = (strength of w1, strength of w2).

    `ratios` holds ("", r) for simple merges, (prefix, r) per block for block merges (the first is the
    default), ("", m) for subtraction and nothing for addition. Hashable: it is part of the derived model's key.
    """

    kind: MergeKind
    ratios: tuple[tuple[str, float], ...] = ()

    def ratio(self, name: str) -> float:
        """The ratio for a tensor (by its LDM name for block merges): the longest matching prefix wins."""
        if self.kind != "blocks":
            return self.ratios[0][1]
        chosen, length = self.ratios[0][1], 0
        for prefix, value in self.ratios:
            if name.startswith(prefix) and len(prefix) > length:
                chosen, length = value, len(prefix)
        return chosen

    def coefficients(self, name: str) -> tuple[float, float]:
        if self.kind == "add":
            return 1.0, 1.0
        if self.kind == "subtract":
            multiplier = self.ratios[0][1]
            return multiplier, -multiplier
        ratio = self.ratio(name)
        return 1.0 - ratio, ratio

    def describe(self) -> str:
        if self.kind == "add":
            return "add"
        if self.kind == "blocks":
            return "blocks " + ",".join(f"{p or '*'}={r:g}" for p, r in self.ratios)
        return f"{self.kind} {self.ratios[0][1]:g}"


def merge_tensor(w1: Tensor, w2: Tensor, strength_model: float, strength_patch: float) -> Tensor:
    """`strength_model * w1 + strength_patch * w2` in float32, cast to w1's dtype and device (ComfyUI's order
    of operations: scale w1, then add the scaled w2, so results agree bit for bit in float32)."""
    total = w1.detach().to(torch.float32, copy=True)
    if strength_model != 1.0:
        total.mul_(strength_model)
    if strength_patch != 0.0:
        total.add_(strength_patch * w2.detach().to(total.device, torch.float32))
    return total.to(w1.dtype)


@torch.no_grad()
def with_replaced_tensors(root: torch.nn.Module, tensors: Mapping[str, Tensor]) -> torch.nn.Module:
    """A copy of `root` whose named parameters / buffers are `tensors`; every other tensor is shared.

    Only the modules on the path to a replaced tensor are copied (shallowly, with their own parameter, buffer
    and child dicts), so the original, and everyone sharing it, keeps its exact tensors.
    """
    if not tensors:
        return root
    copies: dict[str, torch.nn.Module] = {}

    def copy_of(path: str) -> torch.nn.Module:
        if path in copies:
            return copies[path]
        parent_path, _, child = path.rpartition(".")
        parent = copy_of(parent_path) if path else None
        original = root if parent is None else parent._modules[child]
        assert original is not None
        clone = copy.copy(original)
        clone._modules = dict(original._modules)  # type: ignore[assignment]
        clone._parameters = dict(original._parameters)  # type: ignore[assignment]
        clone._buffers = dict(original._buffers)  # type: ignore[assignment]
        if parent is not None:
            parent._modules[child] = clone
        copies[path] = clone
        return clone

    for name, tensor in tensors.items():
        module_path, _, attribute = name.rpartition(".")
        owner = copy_of(module_path)
        if attribute in owner._parameters:
            owner._parameters[attribute] = torch.nn.Parameter(tensor, requires_grad=False)
        elif attribute in owner._buffers:
            owner._buffers[attribute] = tensor
        else:
            raise KeyError(f"{name}: no parameter or buffer of that name to replace")
    return copies[""]


def merge_modules(module1: torch.nn.Module, module2: torch.nn.Module, recipe: MergeRecipe, *,
                  names: Mapping[str, str] | None = None, skip: tuple[str, ...] = (), what: str = "model") -> torch.nn.Module:
    """module1 with each floating-point tensor module2 also has replaced by the recipe's weighted sum.

    Args:
        module1, module2: modules of one architecture (module2's extra or mis-shaped tensors are skipped).
        recipe: the strengths per tensor.
        names: module key -> the name the recipe's prefixes match (LDM names for UNets); default the key.
        skip: key suffixes never merged.
        what: named in the warning about skipped tensors.
    """
    state1, state2 = module1.state_dict(), module2.state_dict()
    merged: dict[str, Tensor] = {}
    mismatched = []
    for key, w2 in state2.items():
        w1 = state1.get(key)
        if w1 is None or key.endswith(skip) or not w1.is_floating_point():
            continue
        if w1.shape != w2.shape:
            mismatched.append(f"{key} {tuple(w1.shape)} vs {tuple(w2.shape)}")
            continue
        strength_model, strength_patch = recipe.coefficients((names or {}).get(key, key))
        if strength_model == 1.0 and strength_patch == 0.0:
            continue  # the sum is w1 itself: keep sharing it
        merged[key] = merge_tensor(w1, w2, strength_model, strength_patch)
    if mismatched:
        logger.warning("merging %s: %d tensor(s) differ in shape and keep model1's values: %s", what,
                       len(mismatched), ", ".join(mismatched[:5]))
    return with_replaced_tensors(module1, merged)


def unet_ldm_names(unet: torch.nn.Module) -> dict[str, str]:
    """diffusers UNet keys -> their names in the LDM layout ComfyUI's block prefixes refer to."""
    try:
        from nodes.sd.loading.keymap import unet_rules  # the loaders: imported on first use

        return {rule.target: rule.source for rule in unet_rules(list(unet.state_dict()), unet.config)}
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"block merging needs a UNet with an SD (LDM) layout: {error}") from error


def _merge_unets(other: ModelRef, recipe: MergeRecipe, unet1: torch.nn.Module) -> torch.nn.Module:
    names = unet_ldm_names(unet1) if recipe.kind == "blocks" else None
    return merge_modules(unet1, other.get(), recipe, names=names, what="UNet")


def _merge_encoders(other: ModelRef, recipe: MergeRecipe, encoder1: torch.nn.Module) -> torch.nn.Module:
    return merge_modules(encoder1, other.get(), recipe, skip=CLIP_SKIPPED, what="text encoder")


def _full_bytes(module: torch.nn.Module) -> int:
    """A merge replaces (nearly) every tensor: the copy is counted as a whole model."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def derive_merge(ref1: Any, ref2: Any, recipe: MergeRecipe, build: Callable[[ModelRef, MergeRecipe, Any], Any],
                 what: str) -> ModelRef:
    """The model the manager derives from `ref1` by `build(ref2, recipe, module1)`, keyed by recipe and ref2."""
    base, other = as_ref(ref1, what), as_ref(ref2, what)
    tag: Hashable = ("merge", recipe, other.key)
    return base.derive(tag, partial(build, other, recipe), name=f"{base.name} {recipe.describe()} {other.name}",
                       size=_full_bytes)


def merge_models(model1: ModelHandle, model2: ModelHandle, recipe: MergeRecipe) -> ModelHandle:
    """A new MODEL: model1 (its schedule and patches) with a UNet merged from both by `recipe`."""
    return replace(model1, unet_ref=derive_merge(model1.unet_ref, model2.unet_ref, recipe, _merge_unets, "UNet"))


def merge_clips(clip1: ClipHandle, clip2: ClipHandle, recipe: MergeRecipe) -> ClipHandle:
    """A new CLIP: clip1 with each text encoder merged with clip2's encoder of the same position (an
    encoder clip2 lacks stays as it is)."""
    if len(clip2.encoder_refs) != len(clip1.encoder_refs):
        logger.warning("merging CLIP: %d text encoder(s) with %d; only matching positions are merged",
                       len(clip1.encoder_refs), len(clip2.encoder_refs))
    refs = list(clip1.encoder_refs)
    for index, other in enumerate(clip2.encoder_refs[: len(refs)]):
        refs[index] = derive_merge(refs[index], other, recipe, _merge_encoders, f"text encoder {index + 1}")
    return replace(clip1, encoder_refs=tuple(refs))


def block_prefixes(family: str) -> tuple[str, ...]:
    """ModelMergeSD1/SD2 (trailing dots) and ModelMergeSDXL (none on numbered blocks) inputs, in ComfyUI's order."""
    if family == "sdxl":
        return ("time_embed.", "label_emb.", *(f"input_blocks.{i}" for i in range(9)),
                *(f"middle_block.{i}" for i in range(3)), *(f"output_blocks.{i}" for i in range(9)), "out.")
    return ("time_embed.", "label_emb.", *(f"input_blocks.{i}." for i in range(12)),
            *(f"middle_block.{i}." for i in range(3)), *(f"output_blocks.{i}." for i in range(12)), "out.")
