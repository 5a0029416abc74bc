"""Text encoders loaded alone (CLIPLoader, DualCLIPLoader): one file per encoder, assembled into the same CLIP
handle a checkpoint gives.

A text-encoder file holds OpenAI CLIP in transformers' layout (`text_model.embeddings.token_embedding.weight`,
as SD1's `text_encoder/` or ComfyUI's `clip_l.safetensors` store it), or OpenCLIP's own (`token_embedding.weight`,
`transformer.resblocks.N`, SD2's and SDXL's original layout), possibly still under a checkpoint prefix such as
`cond_stage_model.transformer.`. The encoder's role follows from its width and layout: CLIP-L (768 wide, SD1
and SDXL's first), OpenCLIP-H (1024, SD2's) and OpenCLIP-bigG (1280, SDXL's second, with its pooled
projection). Roles decide the config template (activation, heads), the tokenizer (OpenCLIP pads with 0, OpenAI
CLIP with end-of-text), whether the projection is kept, and the family of the handle; a file too small to tell
(tiny test models) takes the role its layout and position suggest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MethodType
from typing import Any, Literal

import torch

from nodes.sd.loading.build import check_keys, fill, new_text_encoder
from nodes.sd.loading.configs import family_defaults, nodegraph_config, text_config_from_weights
from nodes.sd.loading.detect import is_ignored
from nodes.sd.loading.files import WeightFile
from nodes.sd.loading.keymap import clip_rules, open_clip_rules
from nodes.sd.types import Family

Role = Literal["clip_l", "open_clip_h", "open_clip_g"]
ROLE_TEMPLATES: dict[Role, tuple[str, bool]] = {
    "clip_l": ("clip_l_text.json", False), "open_clip_h": ("open_clip_h_text.json", False),
    "open_clip_g": ("open_clip_bigg_text.json", True),
}
"""Each role's config template and whether its pooled projection is kept (SDXL's bigG only)."""
ROLE_WIDTHS: dict[int, Role] = {768: "clip_l", 1024: "open_clip_h", 1280: "open_clip_g"}
_TRANSFORMERS_TOKENS = "embeddings.token_embedding.weight"
_OPEN_CLIP_TOKENS = "token_embedding.weight"


@dataclass(frozen=True)
class TextEncoderFile:
    """One text encoder's file, inspected from its header: where its tensors are and what it is."""

    path: Path
    prefix: str
    """What every tensor key of the encoder starts with (removed before mapping)."""
    open_clip_layout: bool
    text_model_prefix: bool
    """transformers layout only: whether keys keep `text_model.` after the prefix (most files do)."""
    width: int
    has_projection: bool
    overrides: dict[str, Any]
    """Config values from our own `nodegraph_config` metadata (heads of a model too small for the 64-per-head rule)."""
    family: str | None = None
    """The family our `nodegraph_config` metadata names, if any."""

    @property
    def natural_role(self) -> Role | None:
        """The role its width names (None for widths no SD encoder has, e.g. tiny test models)."""
        return ROLE_WIDTHS.get(self.width)


def inspect_text_encoder(path: Path) -> TextEncoderFile:
    """Find the encoder's tensors in a file and read its layout and width from the header.

    Raises:
        ValueError: no CLIP token embedding, or more than one encoder in the file.
    """
    with WeightFile(path) as weights:
        keys = [key for key in weights if not is_ignored(key)]
        found = [(key[: -len(_TRANSFORMERS_TOKENS)], False) for key in keys if key.endswith(_TRANSFORMERS_TOKENS)]
        found += [(key[: -len(_OPEN_CLIP_TOKENS)], True) for key in keys
                  if key.endswith(_OPEN_CLIP_TOKENS) and not key.endswith(_TRANSFORMERS_TOKENS)]
        if len(found) != 1:
            what = "no CLIP token embedding" if not found else f"{len(found)} text encoders ({[p for p, _ in found]})"
            raise ValueError(f"{path.name}: not a single text-encoder file: {what}")
        prefix, open_clip = found[0]
        text_model = not open_clip and prefix.endswith("text_model.")
        if text_model:
            prefix = prefix[: -len("text_model.")]
        width = int(weights.shape(prefix + ("" if open_clip else "text_model." if text_model else "") +
                                  (_OPEN_CLIP_TOKENS if open_clip else _TRANSFORMERS_TOKENS))[1])
        projection = prefix + ("text_projection" if open_clip else "text_projection.weight")
        config = nodegraph_config(weights.metadata)
        overrides = dict((config.get("text_encoders") or [{}])[0])
        return TextEncoderFile(path, prefix, open_clip, text_model, width, projection in weights, overrides,
                               config.get("family"))


TEXT_TOWER_STARTS = {
    True: ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection"),
    False: ("text_model.", "embeddings.", "encoder.", "final_layer_norm.", "text_projection."),
}
"""What a text tower's keys start with (OpenCLIP, transformers): a whole CLIP model's file also holds its image
tower (`visual.*`, `vision_model.*`, `visual_projection`) and `logit_scale`, which a text encoder leaves out."""


def _part(weights: WeightFile, source: TextEncoderFile, keep_projection: bool, meta: bool) -> dict[str, Any]:
    """The encoder's tensors without the prefix (meta tensors of their shapes when `meta`)."""
    starts = TEXT_TOWER_STARTS[source.open_clip_layout]
    names = [key for key in weights if key.startswith(source.prefix) and not is_ignored(key)
             and key[len(source.prefix):].startswith(starts)]
    part = {key[len(source.prefix):]: torch.empty(weights.shape(key), device="meta") if meta else weights[key]
            for key in names}
    if not keep_projection:
        part.pop("text_projection", None)
        part.pop("text_projection.weight", None)
    return part


class TextEncoderSource:
    """A text-encoder file in a role: its config, checked against the file's keys, and a builder."""

    def __init__(self, source: TextEncoderFile, role: Role) -> None:
        self.source, self.role = source, role
        template, self.with_projection = ROLE_TEMPLATES[role]
        if self.with_projection and not source.has_projection:
            raise ValueError(f"{source.path.name}: SDXL's OpenCLIP-bigG encoder needs its text_projection, which "
                             "this file lacks")
        with WeightFile(source.path) as weights:
            part = _part(weights, source, self.with_projection, meta=True)
            inner = part if source.open_clip_layout else {k.removeprefix("text_model."): v for k, v in part.items()}
            self.config = text_config_from_weights(inner, template, source.overrides, open_clip=source.open_clip_layout)
            module, rules = self._skeleton()
            check_keys({rule.source for rule in rules}, part.keys(), f"text encoder ({source.path.name})")

    def _skeleton(self) -> tuple[torch.nn.Module, list[Any]]:
        module = new_text_encoder(self.config, with_projection=self.with_projection)
        keys = list(module.state_dict())
        if self.source.open_clip_layout:
            return module, open_clip_rules(keys)
        return module, clip_rules(keys, text_model_prefix=self.source.text_model_prefix)

    def build(self, *, device: str, dtype: torch.dtype) -> torch.nn.Module:
        with WeightFile(self.source.path) as weights:
            part = _part(weights, self.source, self.with_projection, meta=False)
            module, rules = self._skeleton()
            return fill(module, rules, part, f"text encoder ({self.source.path.name})", device=device, dtype=dtype)

    @property
    def open_clip_tokenizer(self) -> bool:
        """OpenCLIP encoders (SD2's H, SDXL's bigG) pad with token 0."""
        return self.role != "clip_l"


def stable_diffusion_roles(files: Sequence[TextEncoderFile], clip_type: str) -> tuple[Family, list[Role]]:
    """The family and each file's role, for CLIPLoader (one file) or DualCLIPLoader (two).

    Raises:
        ValueError: a type whose encoders (T5, Gemma, ...) nodegraph does not run, or files that do not make an
            SD1 / SD2 / SDXL set.
    """
    if len(files) == 1:
        if clip_type != "stable_diffusion":
            raise ValueError(f"CLIPLoader type {clip_type!r} loads another model family's text encoders; nodegraph "
                             "runs SD1/SD2 encoders only (type stable_diffusion)")
        (only,) = files
        role = only.natural_role or ("open_clip_h" if only.open_clip_layout or only.family == "sd2" else "clip_l")
        if role == "open_clip_g":
            raise ValueError(f"{only.path.name}: an OpenCLIP-bigG encoder alone is SDXL's refiner or Stable Cascade's, "
                             "not run here; for SDXL load it with CLIP-L in DualCLIPLoader (type sdxl)")
        return ("sd2" if role == "open_clip_h" else "sd1"), [role]
    if clip_type != "sdxl":
        raise ValueError(f"DualCLIPLoader type {clip_type!r} loads another model family's text encoders; nodegraph "
                         "runs SDXL's pair only (type sdxl)")
    if len(files) != 2:
        raise ValueError(f"SDXL needs two text encoders, got {len(files)}")
    roles = [f.natural_role for f in files]
    if sorted(r for r in roles if r) not in (["clip_l", "open_clip_g"], ["clip_l"], ["open_clip_g"], []):
        names = ", ".join(f"{f.path.name} ({f.width} wide)" for f in files)
        raise ValueError(f"SDXL needs CLIP-L (768 wide) and OpenCLIP-bigG (1280 wide); got {names}")
    return "sdxl", ["clip_l", "open_clip_g"]


def sdxl_order(files: Sequence[TextEncoderFile]) -> list[TextEncoderFile]:
    """CLIP-L first, bigG second, whichever input each came in: the narrower first, a projection breaking ties."""
    return sorted(files, key=lambda f: (f.width, f.has_projection))


def clip_layer_default(family: Family) -> int:
    return int(family_defaults(family)["clip_layer_idx"])


def _to_keeping_cpu(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
    """`Module.to` that applies a dtype and ignores a device."""
    _, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
    return type(self).to(self, dtype=dtype) if dtype is not None else self


def pin_to_cpu(module: torch.nn.Module) -> torch.nn.Module:
    """Make a freshly built encoder ignore moves to another device (CLIPLoader's device "cpu": the model manager
    moves models to the compute device, and this one must stay and run on the CPU). Dtype changes still apply.
    Only this instance changes (its class, which transformers inspects, stays the same)."""
    object.__setattr__(module, "to", MethodType(_to_keeping_cpu, module))
    object.__setattr__(module, "cuda", MethodType(lambda self, *args, **kwargs: self, module))
    return module
