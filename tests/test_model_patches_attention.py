"""UNet/CLIP attention multiply and the self-attention processor (nodes/sd/attention_patches.py)."""

from __future__ import annotations

import copy
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from model_patches_helpers import HAS_EMBEDDED, engine_for, graph
from tiny_models import _unet

from nodegraph.formats.api import from_api
from nodes.sd.attention_patches import Attn1Patch, attn1_patched, unet_attention_multiply_patch

torch.set_num_threads(1)
INPUTS = (torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)),
          torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1)))


@pytest.fixture(scope="module")
def unet():
    return _unet(0, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8)


def run_unet(unet):
    with torch.no_grad():
        return unet(INPUTS[0], torch.tensor([500.0]), encoder_hidden_states=INPUTS[1], return_dict=False)[0]


@pytest.mark.parametrize("which", ["attn1", "attn2"])
def test_attention_multiply_equals_scaling_the_weights(unet, which):
    """ComfyUI multiplies to_q/to_k/to_v/to_out.0 weights and biases; the patch scales their outputs instead."""
    factors = {"to_q": 1.2, "to_k": 0.8, "to_v": 1.5, "to_out.0": 0.9}
    scaled = copy.deepcopy(unet)
    with torch.no_grad():
        for name, param in scaled.named_parameters():
            for layer, factor in factors.items():
                if f".{which}.{layer}." in name:
                    param.mul_(factor)
    fake = SimpleNamespace(wrappers=[], unet=unet)
    undo = unet_attention_multiply_patch(which, 1.2, 0.8, 1.5, 0.9).apply(fake)
    out = fake.wrappers[0](lambda s, t, k: run_unet(unet), None, None, {})
    undo()
    assert fake.wrappers == []
    assert torch.allclose(out, run_unet(scaled), atol=1e-5)
    assert not torch.allclose(out, run_unet(unet), atol=1e-3)
    assert all(not m._forward_hooks for m in unet.modules())


def test_processor_without_changes_equals_diffusers_attention(unet):
    class Nothing(Attn1Patch):
        pass

    reference = run_unet(unet)
    before = dict(unet.attn_processors)
    with attn1_patched(unet, [Nothing()], tuple(INPUTS[0].shape)):
        assert any(type(p).__name__ == "SelfAttentionProcessor" for p in unet.attn_processors.values())
        out = run_unet(unet)
    assert torch.allclose(out, reference, atol=1e-5)
    assert all(unet.attn_processors[name] is proc for name, proc in before.items())


@pytest.mark.skipif(not HAS_EMBEDDED, reason="the embedded model's weights are not built yet")
def test_clip_attention_multiply_equals_scaling_the_text_encoders_weights(tmp_path):
    from nodes.sd.text import encode

    engine = engine_for(tmp_path)
    g = graph(("CLIPAttentionMultiply", {"q": 1.1, "k": 0.9, "v": 1.3, "out": 0.8}))
    values = engine.run(from_api(g), outputs=["4", "6", "20"]).values
    clip, patched_cond = values["4"][1], values["6"][0][0]
    scaled = copy.deepcopy(clip.encoders[0])
    with torch.no_grad():
        for name, param in scaled.named_parameters():
            for layer, factor in {"q_proj": 1.1, "k_proj": 0.9, "v_proj": 1.3, "out_proj": 0.8}.items():
                if f"self_attn.{layer}." in name:
                    param.mul_(factor)
    expected = encode(replace(clip, encoder_refs=(scaled,), patches=()), "a red circle on a blue background")
    assert torch.allclose(patched_cond.embeds, expected.embeds, atol=1e-5)
    plain = encode(clip, "a red circle on a blue background")
    assert not torch.allclose(patched_cond.embeds, plain.embeds, atol=1e-3)
    assert values["20"][0].patches and clip.patches == ()
    projections = [m for name, m in clip.encoders[0].named_modules() if name.endswith(("_proj", "out_proj"))]
    assert projections and all(not m._forward_hooks for m in projections)  # the scaling hooks are gone
