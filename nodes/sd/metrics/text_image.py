"""Text <-> image agreement: CLIP score, class-prompt expansion, and conditional accuracy on the shapes data.

CLIP score (Hessel et al. 2021, "CLIPScore", arXiv:2104.08718; torchmetrics' CLIPScore convention): 100 x
max(cos(image embedding, text embedding), 0), averaged over the batch. The image side is a CLIP vision tower's
projected embedding; the text side is a CLIP text encoder's projected embedding (`text_embeds`, where the
encoder has a projection) or its pooled end-of-text token (SD1's text encoder has no projection; the shipped tiny
tower was trained against exactly that pooled output of the embedded text encoder). The two must share a space:
OpenAI's ViT-L/14 vision tower with SD1's (ViT-L/14) text encoder, or the shipped tower with the embedded model.

Conditional accuracy: the fraction of images whose analytic classification (nodes/sd/shapes_classifier.py) agrees
with what the prompt asks for (foreground colour, shape and background colour named in the prompt).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..shapes import COLOURS, SHAPES

ATTRIBUTES = ("all", "shape", "foreground", "background")
_BRACES = re.compile(r"\{([^{}]*)\}")


def expand_prompts(text: str) -> list[str]:
    """One prompt per non-empty line, each `{a|b|c}` group expanded into one prompt per alternative (all
    combinations, in order): "a {red|blue} {circle|star}" -> four prompts."""
    out: list[str] = []
    for line in (part.strip() for part in text.splitlines()):
        if not line:
            continue
        pieces = _BRACES.split(line)  # literal, group, literal, group, ...
        choices = [[piece] if index % 2 == 0 else piece.split("|") for index, piece in enumerate(pieces)]
        out.extend("".join(combo) for combo in itertools.product(*choices))
    return out


@torch.no_grad()
def text_embeddings(clip: object, prompts: list[str], width: int | None = None, *, batch: int = 128) -> Tensor:
    """[N, D] unit text embeddings of prompts from a CLIP handle: the first encoder whose output width is `width`
    (any when None), its projection's `text_embeds` when it has one, else its pooled output.

    Raises:
        ValueError: no encoder of the CLIP handle gives `width`-wide embeddings.
    """
    if not prompts:
        raise ValueError("no prompts to encode")
    found = []
    for encoder, tokenizer in zip(clip.encoders, clip.tokenizers):  # type: ignore[attr-defined]
        device = next(encoder.parameters()).device
        windows = []
        for prompt in prompts:
            ids = tokenizer(prompt)
            if len(ids) > tokenizer.max_length:  # CLIP score reads the first window, as CLIP itself does
                ids = ids[: tokenizer.max_length - 1] + [ids[-1]]
            windows.append(tokenizer.window(ids))
        rows = []
        for start in range(0, len(windows), batch):  # batched: one call per prompt costs far more on a CPU
            out = encoder(input_ids=torch.tensor(windows[start : start + batch], device=device))
            embeds = getattr(out, "text_embeds", None)
            rows.append((embeds if embeds is not None else out.pooler_output).float().cpu())
        embeddings = torch.cat(rows)
        found.append(embeddings.shape[-1])
        if width is None or embeddings.shape[-1] == width:
            return F.normalize(embeddings, dim=-1)
    raise ValueError(f"the CLIP text encoder(s) give {found}-wide embeddings but the vision tower's are {width}-wide: "
                     f"pair a vision tower with the text encoder it was trained with")


def clip_score(image_embeds: Tensor, text_embeds: Tensor) -> float:
    """Mean of 100 x max(cos, 0) over pairs (one text for all images, or one per image)."""
    if text_embeds.shape[0] == 1:
        text_embeds = text_embeds.expand(image_embeds.shape[0], -1)
    cosine = F.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
    return float((100.0 * cosine.clamp(min=0)).mean())


def asked_attributes(prompt: str) -> dict[str, str]:
    """What a shapes prompt asks for: {"foreground", "shape", "background"} read from its words (the first colour
    named is the foreground, a colour right before "background" the background)."""
    words = re.findall(r"[a-z]+", prompt.lower())
    asked: dict[str, str] = {}
    colours = [(index, word) for index, word in enumerate(words) if word in COLOURS]
    for index, word in colours:
        if index + 1 < len(words) and words[index + 1] == "background":
            asked["background"] = word
        elif "foreground" not in asked:
            asked["foreground"] = word
    shapes = [word for word in words if word in SHAPES]
    if shapes:
        asked["shape"] = shapes[0]
    return asked


def conditional_accuracy(images: Tensor, prompts: list[str], attribute: str = "all") -> float:
    """Fraction of images whose classified attribute(s) match what their prompt asks (one prompt for all images,
    or one per image). "all" needs every attribute the prompt names to match.

    Raises:
        ValueError: an unknown attribute, or a prompt that names none of the attributes asked about.
    """
    from ..shapes_classifier import classify

    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be one of {ATTRIBUTES}, got {attribute!r}")
    if len(prompts) == 1:
        prompts = prompts * images.shape[0]
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts (give one, or one per image)")
    hits = 0
    for image, prompt in zip(images, prompts):
        asked = asked_attributes(prompt)
        wanted = asked if attribute == "all" else {k: v for k, v in asked.items() if k == attribute}
        if not wanted:
            raise ValueError(f"prompt {prompt!r} names no {attribute if attribute != 'all' else 'shape or colour'} "
                             f"of the shapes data ({', '.join(SHAPES)}; colours {', '.join(COLOURS)})")
        found = classify((image[..., :3].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
        read = {"foreground": found.fg, "shape": found.shape, "background": found.bg}
        hits += all(read[key] == value for key, value in wanted.items())
    return hits / images.shape[0]
