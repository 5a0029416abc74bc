"""The shipped InstructPix2Pix and depth-to-image models: listed, small, loaded with the right UNet input, and
doing what they were trained for on a few seeds (the full measurement: scripts/evaluate_ip2p_depth.py,
docs/instruct_pix2pix_depth.md)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from safetensors import safe_open

from nodes.models.embedded import ADAPTERS, EMBEDDED_NAME, default_adapter_path
from tiny_models import engine_at
from training import ip2p_depth_eval as ev

PIX2PIX, DEPTH = ADAPTERS["instruct_pix2pix"][1], ADAPTERS["depth2img"][1]
SHARE_BYTES = 22 * 10**6
"""This pair's share of the shipped weights (all of nodes/models/embedded/ stays <= 60 MB)."""


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip2p_depth")
    (root / "input").mkdir()
    return engine_at(root, input_dir=root / "input")


def test_both_are_listed_small_and_load_with_their_extra_input_channels(engine):
    assert engine.env.models.list("checkpoints")[0] == EMBEDDED_NAME
    assert {PIX2PIX, DEPTH} <= set(engine.env.models.list("checkpoints"))
    sizes = [default_adapter_path(kind).stat().st_size for kind in ("instruct_pix2pix", "depth2img")]
    assert sum(sizes) <= SHARE_BYTES, sizes
    for kind, channels, dtype in (("instruct_pix2pix", 8, "F16"), ("depth2img", 5, "F8_E4M3")):
        with safe_open(str(default_adapter_path(kind)), "pt") as handle:
            keys = list(handle.keys())
            assert all(key.startswith("model.diffusion_model.") for key in keys)
            conv_in = handle.get_slice("model.diffusion_model.input_blocks.0.0.weight")
            assert conv_in.get_shape()[1] == channels and conv_in.get_dtype() == dtype
    from nodes.loaders import CheckpointLoaderSimple

    ctx = type("Ctx", (), {"env": engine.env})()
    for name, channels in ((PIX2PIX, 8), (DEPTH, 5)):
        model, clip, vae = CheckpointLoaderSimple.execute(ctx, ckpt_name=name)
        assert model.unet_ref.get().config.in_channels == channels
        assert clip.encoder_refs[0].get() is not None and vae.scaling_factor > 0


def test_instruct_pix2pix_follows_instructions_and_keeps_the_rest(engine):
    outcomes = [ev.judge_edit(edit, ev.pix2pix_edit(engine, edit, engine.env.input_dir, seed, steps=12))
                for seed, edit in enumerate(ev.eval_edits(2, seed=5))]
    rates = ev.pix2pix_rates(outcomes)
    print(rates)
    assert rates["all_success"] >= MIN_SUCCESS and rates["all_preserved"] >= MIN_PRESERVED, rates


def test_depth_model_puts_the_shape_where_the_depth_map_says(engine):
    rng = random.Random(3)
    ious = {"depth": [], "base": []}
    for seed, spec in enumerate(ev.eval_specs(2, seed=3)):
        prompt, fg, bg = ev.depth_prompt(spec, rng)
        for kind in ious:
            batch = ev.depth_images(engine, spec, prompt, engine.env.input_dir, seed, base=kind == "base", steps=12)
            ious[kind] += [score for score, _ in ev.depth_scores(spec, batch, fg, bg)]
    depth, base = float(np.mean(ious["depth"])), float(np.mean(ious["base"]))
    print(f"IoU with the depth map's region: depth model {depth:.3f}, base model {base:.3f}")
    assert depth >= MIN_DEPTH_IOU and depth >= base + MIN_DEPTH_GAIN, (depth, base)
