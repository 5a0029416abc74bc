"""CUDA paths (marked `gpu`; skipped without a CUDA device): per-part precision on a GPU gives the same
pictures as the fp32 reference, and an SDXL-architecture VAE never decodes to NaN in auto precision.

Run them where a GPU is lent: `python -m pytest -m gpu tests/test_gpu.py`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nodegraph.formats.api import from_api
from nodegraph.formats import load_workflow_file

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
ROOT = Path(__file__).resolve().parents[1]


def txt2img(tmp_path: Path, precision: str, **options) -> torch.Tensor:
    from nodegraph.app import AppConfig, build_engine

    engine = build_engine(AppConfig(output_dir=tmp_path / precision, input_dir=tmp_path / "in", temp_dir=tmp_path / "t",
                                    models_dir=tmp_path / "models", device="cuda", precision=precision, **options))
    workflow = load_workflow_file(ROOT / "workflows" / "txt2img.json", engine.registry)
    decode = next(nid for nid, node in workflow.nodes.items() if node.type == "VAEDecode")
    return engine.run(workflow, outputs=[decode]).values[decode][0]


def test_fp16_unet_images_agree_with_the_fp32_reference(tmp_path):
    reference = txt2img(tmp_path, "fp32")
    auto = txt2img(tmp_path, "auto")  # UNet and text encoder fp16 on CUDA, the VAE fp32 (force_upcast)
    assert auto.shape == reference.shape and torch.isfinite(auto).all()
    difference = (auto - reference).abs().mean().item()
    assert difference < 0.02, f"mean pixel difference {difference:.4f} between fp16 and fp32 runs"


def test_sdxl_architecture_vae_decodes_without_nan_in_auto_precision(tmp_path):
    from diffusers import AutoencoderKL

    from nodegraph.app import AppConfig, build_engine
    from nodes.sd.loading.configs import template

    config = {k: v for k, v in template("sdxl_vae.json").items() if not k.startswith("_")}
    vae = AutoencoderKL(**config).eval()
    with torch.no_grad():  # activations past fp16's range, as SDXL's real decoder makes them
        vae.decoder.conv_in.weight.mul_(5e4)
    assert config["force_upcast"] is True
    (tmp_path / "models" / "vae").mkdir(parents=True)
    save_file(vae.state_dict(), str(tmp_path / "models" / "vae" / "sdxl_vae.safetensors"))
    engine = build_engine(AppConfig(output_dir=tmp_path / "o", input_dir=tmp_path / "i", temp_dir=tmp_path / "t",
                                    models_dir=tmp_path / "models", device="cuda"))
    graph = {
        "1": {"class_type": "VAELoader", "inputs": {"vae_name": "sdxl_vae.safetensors"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0]}},
    }
    image = engine.run(from_api(graph), outputs=["3"]).values["3"][0]
    assert torch.isfinite(image).all()
    half = copy.deepcopy(vae).half().cuda()
    with torch.no_grad():  # the same decode forced into fp16 really overflows: the test would catch a regression
        assert not torch.isfinite(half.decode(torch.zeros(1, 4, 32, 32, device="cuda", dtype=torch.float16)).sample).all()


@pytest.mark.parametrize("mode", ["lowvram", "highvram"])
def test_memory_modes_draw_the_same_picture(tmp_path, mode):
    """lowvram streams each block to the GPU while it runs; the picture is the normalvram one."""
    reference = txt2img(tmp_path / "normal", "fp32")
    other = txt2img(tmp_path / mode, "fp32", vram_mode=mode)
    assert (other - reference).abs().max().item() < 1e-3


def test_a_tiny_vram_budget_offloads_and_still_draws_the_same_picture(tmp_path):
    reference = txt2img(tmp_path / "normal", "fp32")
    squeezed = txt2img(tmp_path / "squeezed", "fp32", reserve_vram_gb=10_000)  # budget 0: every model offloads
    assert (squeezed - reference).abs().max().item() < 1e-3
