"""The new conditioning and latent nodes in a ComfyUI API-format prompt, run by the engine on the embedded model:
validation accepts the sockets (LATENT_OPERATION, an optional MASK left unlinked), and the graph's results are
what the nodes compute one by one."""

from __future__ import annotations

import pytest
import torch

from nodegraph.formats.api import from_api
from nodes.models.embedded import EMBEDDED_NAME, EMBEDDED_PATH
from tiny_models import engine_at

pytestmark = pytest.mark.skipif(not EMBEDDED_PATH.is_file(), reason="the embedded model's weights are not built yet")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield engine_at(tmp_path_factory.mktemp("latent_workflow"))
    torch.set_num_threads(threads)


def prompt() -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle on a blue background", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "20": {"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": ["6", 0], "start": 0.0,
                                                                         "end": 1.0}},
        "21": {"class_type": "LatentOperationTonemapReinhard", "inputs": {"multiplier": 1.0}},
        "22": {"class_type": "LatentApplyOperationCFG", "inputs": {"model": ["4", 0], "operation": ["21", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["22", 0], "seed": 3, "steps": 6, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["20", 0], "negative": ["7", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "23": {"class_type": "LatentFlip", "inputs": {"samples": ["3", 0], "flip_method": "y-axis: horizontally"}},
        "24": {"class_type": "LatentCompositeMasked", "inputs": {
            "destination": ["3", 0], "source": ["23", 0], "x": 64, "y": 0, "resize_source": False}},
        "25": {"class_type": "VAEDecodeTiled", "inputs": {
            "samples": ["24", 0], "vae": ["4", 2], "tile_size": 64, "overlap": 16, "temporal_size": 64,
            "temporal_overlap": 8}},
        "26": {"class_type": "SaveLatent", "inputs": {"samples": ["24", 0], "filename_prefix": "latents/run"}},
    }


def test_prompt_runs_and_composes_as_the_nodes_do(engine):
    result = engine.run(from_api(prompt()), outputs=["3", "24", "25", "26"])
    sampled, composed = result.values["3"][0].samples, result.values["24"][0].samples
    want = sampled.clone()
    want[..., 8:] = sampled.flip(-1)[..., :8]  # the mirrored latent pasted from x = 64 px (8 latent pixels)
    assert torch.equal(composed, want)
    image = result.values["25"][0]
    assert image.shape == (1, 128, 128, 3) and float(image.std()) > 0.05
    saved = engine.env.output_dir / "latents" / "run_00001_.latent"
    assert saved.is_file()
