"""Porter-Duff compositing and alpha split/join against the operators' textbook formulas (Porter & Duff 1984) in
straight (non-premultiplied) colour, with ComfyUI's masks (1 = transparent)."""

import pytest
import torch

from nodes.image import JoinImageWithAlpha, PorterDuffImageComposite, SplitImageWithAlpha
from nodes.image.ops.compositing import PORTER_DUFF_MODES


def _over(c1, a1, c2, a2):
    alpha = a1 + a2 * (1 - a1)
    return (c1 * a1 + c2 * a2 * (1 - a1)) / alpha, alpha


def expected(mode, cs, a_s, cd, a_d):
    """Result colour and alpha of each operator, written in straight colour as the paper's table gives them
    (DARKEN, LIGHTEN and OVERLAY as ComfyUI defines them on premultiplied values)."""
    ps, pd = cs * a_s, cd * a_d
    union = a_s + a_d - a_s * a_d
    table = {
        "SRC_OVER": _over(cs, a_s, cd, a_d),
        "DST_OVER": _over(cd, a_d, cs, a_s),
        "SRC_IN": (cs, a_s * a_d),
        "DST_IN": (cd, a_s * a_d),
        "SRC_OUT": (cs, a_s * (1 - a_d)),
        "DST_OUT": (cd, a_d * (1 - a_s)),
        "SRC_ATOP": (cs * a_s + cd * (1 - a_s), a_d),
        "DST_ATOP": (cd * a_d + cs * (1 - a_d), a_s),
        "XOR": ((ps * (1 - a_d) + pd * (1 - a_s)) / (a_s * (1 - a_d) + a_d * (1 - a_s)),
                a_s * (1 - a_d) + a_d * (1 - a_s)),
        "SRC": (cs, a_s),
        "DST": (cd, a_d),
        "CLEAR": (torch.zeros_like(cs), torch.zeros_like(a_s)),
        "ADD": (torch.clamp(ps + pd, 0, 1) / torch.clamp(a_s + a_d, 0, 1), torch.clamp(a_s + a_d, 0, 1)),
        "MULTIPLY": (cs * cd, a_s * a_d),
        "SCREEN": ((ps + pd - ps * pd) / union, union),
        "DARKEN": (((1 - a_d) * ps + (1 - a_s) * pd + torch.minimum(ps, pd)) / union, union),
        "LIGHTEN": (((1 - a_d) * ps + (1 - a_s) * pd + torch.maximum(ps, pd)) / union, union),
        "OVERLAY": (torch.where(2 * pd < a_d, 2 * ps * pd, a_s * a_d - 2 * (a_d - ps) * (a_s - pd)) / union, union),
    }
    colour, alpha = table[mode]
    return torch.clamp(colour, 0, 1), alpha


@pytest.mark.parametrize("mode", PORTER_DUFF_MODES)
def test_porter_duff_modes_follow_their_formulas(mode):
    generator = torch.Generator().manual_seed(1)
    source, destination = torch.rand(2, 5, 6, 3, generator=generator), torch.rand(2, 5, 6, 3, generator=generator)
    a_s = 0.2 + 0.8 * torch.rand(2, 5, 6, generator=generator)
    a_d = 0.2 + 0.8 * torch.rand(2, 5, 6, generator=generator)
    image, mask = PorterDuffImageComposite.execute(None, source=source, source_alpha=1 - a_s,
                                                   destination=destination, destination_alpha=1 - a_d, mode=mode)
    colour, alpha = expected(mode, source, a_s.unsqueeze(-1), destination, a_d.unsqueeze(-1))
    assert image.shape == (2, 5, 6, 3) and mask.shape == (2, 5, 6)
    assert torch.allclose(mask, 1 - alpha.squeeze(-1), atol=1e-6)
    visible = alpha.squeeze(-1) > 1e-5
    assert torch.allclose(image[visible], colour.expand_as(image)[visible], atol=1e-5)
    assert image[~visible].eq(0).all()  # colour is 0 where nothing is left


def test_porter_duff_uses_the_shortest_batch_and_fits_sizes():
    source = torch.ones(3, 4, 4, 3)
    destination = torch.zeros(2, 8, 8, 3)
    opaque = torch.zeros(1, 4, 4)  # mask 0 = opaque, smaller than the destination: resized
    image, mask = PorterDuffImageComposite.execute(None, source=source, source_alpha=opaque.expand(3, 4, 4),
                                                   destination=destination, destination_alpha=opaque, mode="SRC_OVER")
    assert image.shape == (1, 8, 8, 3) and torch.allclose(image, torch.ones(1, 8, 8, 3), atol=1e-5)
    assert torch.allclose(mask, torch.zeros(1, 8, 8), atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        PorterDuffImageComposite.execute(None, source=torch.ones(1, 4, 4, 4), source_alpha=opaque,
                                         destination=destination, destination_alpha=opaque, mode="SRC")


def test_split_and_join_alpha_round_trip():
    rgba = torch.rand(2, 3, 5, 4)
    rgb, mask = SplitImageWithAlpha.execute(None, image=rgba)
    assert torch.equal(rgb, rgba[..., :3]) and torch.allclose(mask, 1 - rgba[..., 3])
    (joined,) = JoinImageWithAlpha.execute(None, image=rgb, alpha=mask)
    assert torch.allclose(joined, rgba, atol=1e-6)
    _, opaque = SplitImageWithAlpha.execute(None, image=rgba[..., :3])
    assert opaque.eq(0).all()


def test_join_alpha_repeats_the_shorter_batch_and_resizes_the_mask():
    image = torch.rand(3, 4, 4, 3)
    mask = torch.zeros(1, 2, 2)
    mask[0, 0, 0] = 1.0
    (joined,) = JoinImageWithAlpha.execute(None, image=image, alpha=mask)
    resized = torch.nn.functional.interpolate(mask.unsqueeze(1), size=(4, 4), mode="bilinear").squeeze(1)
    assert joined.shape == (3, 4, 4, 4) and torch.equal(joined[..., :3], image)
    assert torch.allclose(joined[..., 3], (1 - resized).expand(3, 4, 4))
    assert joined[0, 0, 0, 3] == 0 and joined[2, 3, 3, 3] == 1
