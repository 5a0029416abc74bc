"""Measures for the controlled-generation patches (scripts/evaluate_guidance_methods.py and its tests)."""

from __future__ import annotations

import torch

from nodes.sd.multidiffusion import views


def window_edges(width_latent: int, window: int, stride: int) -> list[int]:
    """Pixel columns where a MultiDiffusion view starts or ends inside a `width_latent`-wide latent (8 px each)."""
    cuts = {edge for view in views(window, width_latent, window, stride) for edge in view[2:]}
    return sorted(8 * edge for edge in cuts if 0 < edge < width_latent)


def seam_ratio(images: torch.Tensor, edges: list[int], reach: int | None = 4) -> float:
    """Mean squared horizontal gradient across the pixel columns `edges` (between x - 1 and x) over that across
    the other column pairs within `reach` pixels of each edge: about 1 where a border is invisible, well above 1
    for a seam. Comparing with the border's own neighbourhood keeps where the shapes happen to lie out of it.

    Args:
        images: IMAGE [B, H, W, C] in 0..1.
        edges: pixel columns x (reach < x < W - reach).
        reach: how many column pairs on each side form the border's neighbourhood; None compares with every
            other column pair of the image (the issue's literal "interior").
    """
    energy = (images[:, :, 1:] - images[:, :, :-1]).pow(2).mean(dim=(0, 1, 3))  # index x - 1
    if reach is None:
        border_mask = torch.zeros(energy.shape, dtype=torch.bool)
        border_mask[[x - 1 for x in edges]] = True
        return float(energy[border_mask].mean() / energy[~border_mask].mean())
    border = torch.stack([energy[x - 1] for x in edges]).mean()
    around = torch.cat([torch.cat([energy[x - 1 - reach : x - 1], energy[x : x + reach]]) for x in edges]).mean()
    return float(border / around)
