"""SDXL's two prompts: CLIP-L reads `text_l` and OpenCLIP bigG reads `text_g` (ComfyUI's CLIPTextEncodeSDXL).

SDXL conditions its UNet on both encoders' hidden states side by side (Podell et al. 2023, "SDXL: Improving
Latent Diffusion Models for High-Resolution Image Synthesis", section 2.1) and on bigG's pooled output; the
two prompts may differ. When one prompt needs more 77-token windows than the other, the shorter is padded with
windows of the empty prompt, so both encoders give the same number of tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nodes.sd.text import ClipRun, _encode_one, tokenize
from nodes.sd.types import ClipHandle, CondItem


@torch.no_grad()
def encode_sdxl(clip: ClipHandle, text_g: str, text_l: str) -> CondItem:
    """One conditioning entry from two prompts: embeds [1, 77 * windows, 768 + 1280] and bigG's pooled output.

    Args:
        clip: an SDXL CLIP handle (CLIP-L, then bigG); its layer choice and "weights" patches apply.
        text_g: the prompt for OpenCLIP bigG.
        text_l: the prompt for CLIP-L.
    """
    if clip.family != "sdxl" or len(clip.encoder_refs) != 2:
        raise ValueError(f"CLIPTextEncodeSDXL needs an SDXL CLIP (two text encoders); this one is {clip.family!r} "
                         f"with {len(clip.encoder_refs)} encoder(s)")
    run = ClipRun(encoders=list(clip.encoders), handle=clip)
    undos: list[Callable[[], Any]] = []
    try:
        for patch in clip.patches:
            if patch.kind != "weights":
                raise ValueError(f"CLIP patch {patch.name!r} has kind {patch.kind!r}; CLIP supports only 'weights'")
            undo = patch.apply(run)
            if undo is not None:
                undos.append(undo)
        windows_l = tokenize(clip, text_l)[0]
        windows_g = tokenize(clip, text_g)[1]
        empty_l, empty_g = (windows[0] for windows in tokenize(clip, ""))
        windows_l = windows_l + [empty_l] * (len(windows_g) - len(windows_l))
        windows_g = windows_g + [empty_g] * (len(windows_l) - len(windows_g))
        z_l, _ = _encode_one(run.encoders[0], clip.tokenizers[0], windows_l, clip.layer_idx, False)
        z_g, pooled = _encode_one(run.encoders[1], clip.tokenizers[1], windows_g, clip.layer_idx, False)
    finally:
        for undo in reversed(undos):
            undo()
    return CondItem(embeds=torch.cat([z_l, z_g], dim=-1).cpu(), pooled=None if pooled is None else pooled.cpu())
