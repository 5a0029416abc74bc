"""Conditioning nodes on hand-made conditioning (text encoding itself is tested with real tiny CLIPs)."""

import torch

from nodes.conditioning import ConditioningAverage, ConditioningCombine, ConditioningSetArea, ConditioningZeroOut
from nodes.sd.types import CondItem


def cond(value, tokens=77, pooled=False):
    return (CondItem(torch.full((1, tokens, 8), float(value)), pooled=torch.full((1, 8), float(value)) if pooled else None),)


def test_combine_concatenates_entries():
    (out,) = ConditioningCombine.execute(None, conditioning_1=cond(1), conditioning_2=cond(2))
    assert [float(item.embeds[0, 0, 0]) for item in out] == [1.0, 2.0]


def test_average_blends_toward_the_first_source_entry_and_pads_tokens():
    (out,) = ConditioningAverage.execute(None, conditioning_to=cond(1, tokens=154, pooled=True),
                                         conditioning_from=cond(3, pooled=True), conditioning_to_strength=0.25)
    assert out[0].embeds.shape == (1, 154, 8)
    assert float(out[0].embeds[0, 0, 0]) == 0.25 * 1 + 0.75 * 3 and float(out[0].embeds[0, 100, 0]) == 0.25
    assert float(out[0].pooled[0, 0]) == 2.5


def test_set_area_in_latent_units_and_zero_out():
    (area,) = ConditioningSetArea.execute(None, conditioning=cond(1), width=64, height=128, x=8, y=16, strength=0.5)
    assert area[0].area == (16, 8, 2, 1) and area[0].strength == 0.5
    (zero,) = ConditioningZeroOut.execute(None, conditioning=cond(5, pooled=True))
    assert zero[0].embeds.eq(0).all() and zero[0].pooled.eq(0).all()
