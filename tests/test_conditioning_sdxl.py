"""SDXL prompt encoders: text_l and text_g reach their own encoders (diffusers' prompt / prompt_2 as oracle), and
the sizes and aesthetic score become the UNet's time ids (6 for the base UNet, 5 for the refiner)."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTokenizer

import tiny_models as tm
from nodes.conditioning import CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner
from nodes.sd.denoisers import EpsDenoiser, calc_cond_batch
from nodes.sd.loading import load_checkpoint
from nodes.sd.schedules import scaled_linear_alphas_cumprod
from nodes.sd.tokenizer import _vocab_and_merges, clip_bpe_tokenizer
from nodes.sd.types import CondItem, SizeConditioning
from recording_unet import RecordingUNet


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl")
    return {"sdxl": load_checkpoint(tm.make_sdxl_checkpoint(root)),
            "sd1": load_checkpoint(tm.make_sd1_checkpoint(root))}


def test_text_l_and_text_g_match_diffusers_prompt_and_prompt_2(checkpoints):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    loaded = checkpoints["sdxl"]
    vocab, merges = _vocab_and_merges()
    pipe = StableDiffusionXLPipeline(
        vae=loaded.vae.vae, text_encoder=loaded.clip.encoders[0], text_encoder_2=loaded.clip.encoders[1],
        tokenizer=clip_bpe_tokenizer(), tokenizer_2=CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=77),
        unet=loaded.model.unet, scheduler=EulerDiscreteScheduler(),
    )  # fmt: skip
    embeds, _, pooled, _ = pipe.encode_prompt("a photo of a cat", prompt_2="an oil painting", device="cpu",
                                              do_classifier_free_guidance=False)
    (cond,) = CLIPTextEncodeSDXL.execute(None, clip=loaded.clip, width=1024, height=768, crop_w=16, crop_h=32,
                                         target_width=512, target_height=256, text_g="an oil painting",
                                         text_l="a photo of a cat")
    assert torch.equal(cond[0].embeds, embeds) and torch.equal(cond[0].pooled, pooled)
    assert cond[0].size == SizeConditioning(width=1024, height=768, crop_w=16, crop_h=32, target_width=512,
                                            target_height=256)


def test_a_longer_prompt_pads_the_other_with_empty_windows(checkpoints):
    clip = checkpoints["sdxl"].clip
    long = " ".join(["cat"] * 100)
    (cond,) = CLIPTextEncodeSDXL.execute(None, clip=clip, width=1024, height=1024, crop_w=0, crop_h=0,
                                         target_width=1024, target_height=1024, text_g="a dog", text_l=long)
    assert cond[0].embeds.shape == (1, 154, 96)
    (empty,) = CLIPTextEncodeSDXL.execute(None, clip=clip, width=1024, height=1024, crop_w=0, crop_h=0,
                                          target_width=1024, target_height=1024, text_g="", text_l="")
    torch.testing.assert_close(cond[0].embeds[:, 77:, 32:], empty[0].embeds[:, :, 32:])  # bigG's second window


def test_sdxl_encode_refuses_an_sd1_clip(checkpoints):
    with pytest.raises(ValueError, match="SDXL CLIP"):
        CLIPTextEncodeSDXL.execute(None, clip=checkpoints["sd1"].clip, width=1024, height=1024, crop_w=0, crop_h=0,
                                   target_width=1024, target_height=1024, text_g="a", text_l="b")


def refiner_output(checkpoints):
    (cond,) = CLIPTextEncodeSDXLRefiner.execute(None, ascore=7.5, width=640, height=384, text="a cat",
                                                clip=checkpoints["sdxl"].clip)
    return cond


def time_ids_seen(ids_count: int, positive, negative=()):
    pooled_dim = 16
    unet = RecordingUNet(4, addition_embed_type="text_time", addition_time_embed_dim=8,
                         projection_class_embeddings_input_dim=pooled_dim + ids_count * 8)
    denoiser = EpsDenoiser(unet, scaled_linear_alphas_cumprod())
    calc_cond_batch(denoiser, [positive, negative], torch.zeros(1, 4, 4, 6), torch.tensor([1.0]))
    return torch.cat([call["added"]["time_ids"] for call in unet.calls])


def entry(size=None):
    return CondItem(torch.ones(1, 3, 8), pooled=torch.ones(1, 16), size=size)


def test_size_conditioning_becomes_the_base_unets_time_ids():
    size = SizeConditioning(width=1024, height=768, crop_w=16, crop_h=32, target_width=512, target_height=256)
    ids = time_ids_seen(6, (entry(size),))
    # SDXL's order (diffusers' _get_add_time_ids): original (h, w), crop (top, left), target (h, w)
    assert ids.tolist() == [[768, 1024, 32, 16, 256, 512]]
    assert time_ids_seen(6, (entry(),)).tolist() == [[32, 48, 0, 0, 32, 48]]  # default: the latent's size


def test_refiner_time_ids_carry_the_aesthetic_score(checkpoints):
    cond = refiner_output(checkpoints)
    assert cond[0].size == SizeConditioning(width=640, height=384, aesthetic_score=7.5)
    ids = time_ids_seen(5, (entry(cond[0].size),), (entry(),))
    # ComfyUI's defaults without a score: 6 for the positive, 2.5 for the negative
    assert ids.tolist() == [[384, 640, 0, 0, 7.5], [32, 48, 0, 0, 2.5]]


def test_fingerprints_follow_the_embedding_files_either_prompt_names(tmp_path):
    """Like CLIPTextEncode: editing an embedding file a prompt names re-encodes (a new cache key)."""
    from nodegraph import NodeContext
    from nodegraph.environment import Environment, ModelPaths

    for name in ("input", "output", "temp"):
        (tmp_path / name).mkdir()
    env = Environment(input_dir=tmp_path / "input", output_dir=tmp_path / "output", temp_dir=tmp_path / "temp",
                      models=ModelPaths(roots=[tmp_path / "models"]))
    folder = env.models.folder_dirs("embeddings")[0]
    folder.mkdir(parents=True)
    (folder / "style.safetensors").write_bytes(b"one")
    ctx = NodeContext("1", "CLIPTextEncodeSDXL", env)
    widgets = dict(width=1024, height=1024, crop_w=0, crop_h=0, target_width=1024, target_height=1024)
    before = CLIPTextEncodeSDXL.fingerprint(ctx, **widgets, text_g="a cat", text_l="embedding:style")
    refiner_before = CLIPTextEncodeSDXLRefiner.fingerprint(ctx, ascore=6.0, width=1, height=1, text="embedding:style")
    (folder / "style.safetensors").write_bytes(b"two")
    assert CLIPTextEncodeSDXL.fingerprint(ctx, **widgets, text_g="a cat", text_l="embedding:style") != before
    assert CLIPTextEncodeSDXLRefiner.fingerprint(ctx, ascore=6.0, width=1, height=1, text="embedding:style") \
        != refiner_before
