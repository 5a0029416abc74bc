"""Alpha compositing: Porter and Duff's operators (Porter & Duff 1984, "Compositing Digital Images") plus the
separable modes ComfyUI offers beside them, on premultiplied colours; alpha planes and RGBA splitting.

ComfyUI passes alpha as a MASK, where 1 means transparent: every function here takes and returns masks in that
convention and converts to alpha (1 - mask) inside.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ...sd.imageops import resize

Tensor = torch.Tensor
Operator = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
"""(Cs, As, Cd, Ad) -> (Co, Ao), with C premultiplied by its A."""


def _union(a_s: Tensor, a_d: Tensor) -> Tensor:
    return a_s + a_d - a_s * a_d


PORTER_DUFF: dict[str, Operator] = {
    "ADD": lambda cs, a_s, cd, a_d: (torch.clamp(cs + cd, 0, 1), torch.clamp(a_s + a_d, 0, 1)),
    "CLEAR": lambda cs, a_s, cd, a_d: (torch.zeros_like(cd), torch.zeros_like(a_d)),
    "DARKEN": lambda cs, a_s, cd, a_d: ((1 - a_d) * cs + (1 - a_s) * cd + torch.minimum(cs, cd), _union(a_s, a_d)),
    "DST": lambda cs, a_s, cd, a_d: (cd, a_d),
    "DST_ATOP": lambda cs, a_s, cd, a_d: (a_s * cd + (1 - a_d) * cs, a_s),
    "DST_IN": lambda cs, a_s, cd, a_d: (cd * a_s, a_s * a_d),
    "DST_OUT": lambda cs, a_s, cd, a_d: ((1 - a_s) * cd, (1 - a_s) * a_d),
    "DST_OVER": lambda cs, a_s, cd, a_d: (cd + (1 - a_d) * cs, a_d + (1 - a_d) * a_s),
    "LIGHTEN": lambda cs, a_s, cd, a_d: ((1 - a_d) * cs + (1 - a_s) * cd + torch.maximum(cs, cd), _union(a_s, a_d)),
    "MULTIPLY": lambda cs, a_s, cd, a_d: (cs * cd, a_s * a_d),
    "OVERLAY": lambda cs, a_s, cd, a_d: (torch.where(2 * cd < a_d, 2 * cs * cd,
                                                     a_s * a_d - 2 * (a_d - cs) * (a_s - cd)), _union(a_s, a_d)),
    "SCREEN": lambda cs, a_s, cd, a_d: (cs + cd - cs * cd, _union(a_s, a_d)),
    "SRC": lambda cs, a_s, cd, a_d: (cs, a_s),
    "SRC_ATOP": lambda cs, a_s, cd, a_d: (a_d * cs + (1 - a_s) * cd, a_d),
    "SRC_IN": lambda cs, a_s, cd, a_d: (cs * a_d, a_s * a_d),
    "SRC_OUT": lambda cs, a_s, cd, a_d: ((1 - a_d) * cs, (1 - a_d) * a_s),
    "SRC_OVER": lambda cs, a_s, cd, a_d: (cs + (1 - a_s) * cd, a_s + (1 - a_s) * a_d),
    "XOR": lambda cs, a_s, cd, a_d: ((1 - a_d) * cs + (1 - a_s) * cd, (1 - a_d) * a_s + (1 - a_s) * a_d),
}
PORTER_DUFF_MODES = tuple(PORTER_DUFF)
"""In ComfyUI's order (its enum is alphabetical), which is also the widget's option order."""


def porter_duff(source: Tensor, source_mask: Tensor, destination: Tensor, destination_mask: Tensor,
                mode: str) -> tuple[Tensor, Tensor]:
    """One picture [H,W,C] with its mask [H,W,1] composited over another of the same shape.

    The colours are premultiplied, combined with the operator, and divided back by the result's alpha (0 where
    that alpha is ~0). Returns (colour [H,W,C] in 0..1, mask [H,W,1]).
    """
    if mode not in PORTER_DUFF:
        raise ValueError(f"Porter-Duff mode {mode!r} is not one of {PORTER_DUFF_MODES}")
    a_s, a_d = 1 - source_mask, 1 - destination_mask
    colour, alpha = PORTER_DUFF[mode](source * a_s, a_s, destination * a_d, a_d)
    colour = torch.where(alpha > 1e-5, colour / alpha, torch.zeros_like(colour))
    return torch.clamp(colour, 0, 1), 1 - alpha


def _fit(planes: Tensor, height: int, width: int) -> Tensor:
    """[H,W,C] resized (bicubic, centre crop to the aspect ratio) to height x width, as ComfyUI fits mismatches."""
    if planes.shape[:2] == (height, width):
        return planes
    return resize(planes.movedim(-1, 0).unsqueeze(0), width, height, "bicubic", "center").squeeze(0).movedim(0, -1)


def porter_duff_batch(source: Tensor, source_mask: Tensor, destination: Tensor, destination_mask: Tensor,
                      mode: str) -> tuple[Tensor, Tensor]:
    """PorterDuffImageComposite over batches: the shortest of the four inputs sets the batch; the destination
    mask and the source are fitted to the destination picture, the source mask to the destination mask."""
    count = min(len(source), len(source_mask), len(destination), len(destination_mask))
    images, masks = [], []
    for i in range(count):
        dst = destination[i]
        if source[i].shape[-1] != dst.shape[-1]:
            raise ValueError(f"source has {source[i].shape[-1]} channels, destination {dst.shape[-1]}: "
                             "Porter-Duff compositing needs the same number")
        dst_mask = _fit(destination_mask[i].unsqueeze(-1), *dst.shape[:2])
        src = _fit(source[i], *dst.shape[:2])
        src_mask = _fit(source_mask[i].unsqueeze(-1), *dst_mask.shape[:2])
        image, mask = porter_duff(src, src_mask, dst, dst_mask, mode)
        images.append(image)
        masks.append(mask.squeeze(-1))
    return torch.stack(images), torch.stack(masks)


def split_alpha(image: Tensor) -> tuple[Tensor, Tensor]:
    """RGB and a MASK (1 - alpha; all 0, i.e. opaque, for a picture without an alpha channel)."""
    alpha = image[..., 3] if image.shape[-1] > 3 else torch.ones_like(image[..., 0])
    return image[..., :3], 1.0 - alpha


def repeat_to_batch(tensor: Tensor, size: int) -> Tensor:
    """The first `size` items, cycling through the batch when it is shorter (ComfyUI's repeat_to_batch_size)."""
    if tensor.shape[0] >= size:
        return tensor[:size]
    repeats = -(-size // tensor.shape[0])
    return tensor.repeat((repeats,) + (1,) * (tensor.dim() - 1))[:size]


def join_alpha(image: Tensor, mask: Tensor) -> Tensor:
    """RGBA from RGB and a MASK (alpha = 1 - mask, the mask resized bilinearly to the picture)."""
    count = max(len(image), len(mask))
    image, mask = repeat_to_batch(image, count), repeat_to_batch(mask, count)
    mask = F.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]), size=image.shape[1:3], mode="bilinear").squeeze(1)
    return torch.cat((image[..., :3], (1.0 - mask).unsqueeze(-1)), dim=-1)
