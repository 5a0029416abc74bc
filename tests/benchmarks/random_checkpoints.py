"""Real-architecture SD checkpoints with random weights, for benchmarks (no download ever).

The modules are built on the meta device, given fp16 storage and filled with random values scaled by fan-in
(no full-precision init of billions of weights), then written by the project's own exporter in the original
single-file layout, so our loader reads them exactly as it reads a real SD1.5 or SDXL file. Files are kept
in a cache folder keyed by architecture, so a second benchmark run does not rebuild them.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models' randomize
CACHE = Path(os.environ.get("NODEGRAPH_BENCH_CACHE", Path(tempfile.gettempdir()) / "nodegraph-bench-models"))

FAMILIES = {"sd15": "sd1", "sdxl": "sdxl"}


def _text_encoder(name: str, layers: int | None) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from nodes.sd.loading.configs import template

    config = {k: v for k, v in template(name).items() if not k.startswith("_")}
    if layers is not None:
        config["num_hidden_layers"] = layers
    projected = template(name)["_class_name"] == "CLIPTextModelWithProjection"
    cls = CLIPTextModelWithProjection if projected else CLIPTextModel
    return cls(CLIPTextConfig(**config))


def architecture(family: str, *, text_layers: int | None = None) -> Any:
    """SD1.5 ("sd1") or SDXL ("sdxl") UNet, VAE and text encoder(s) as shipped in nodes/sd/configs, random fp16
    weights. `text_layers` shortens the text encoders (widths stay, so conditioning shapes are real).

    Built on the meta device and then given storage, so no time goes into default initialisation that
    `randomize` overwrites anyway. Non-persistent buffers stay uninitialised: these modules are only exported.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from nodes.sd.loading.configs import template
    from tiny_models import TinyModules, randomize

    names = template("families.json")[family]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**{k: v for k, v in template(names["unet"]).items() if not k.startswith("_")})
        vae = AutoencoderKL(**{k: v for k, v in template(names["vae"]).items() if not k.startswith("_")})
        encoders = [_text_encoder(name, text_layers) for name in names["text_encoders"]]
    for seed, module in enumerate([unet, vae, *encoders]):
        randomize(module.to(torch.float16).to_empty(device="cpu"), seed)
    return TinyModules(family, unet, vae, encoders)  # type: ignore[arg-type]


def write_fp16_checkpoint(modules: Any, path: Path) -> float:
    """Export as an fp16 single file (our exporter, original layout + nodegraph_config); returns its size in GB."""
    from nodes.sd.loading.export import save_checkpoint

    for module in (modules.unet, modules.vae, *modules.encoders):
        module.to(torch.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, family=modules.family, unet=modules.unet, vae=modules.vae,
                    encoders=modules.encoders, prediction=modules.prediction)
    return path.stat().st_size / 1e9


def random_checkpoint(architecture_name: str, *, name: str | None = None) -> Path:
    """The path of a random-weight fp16 single-file checkpoint of "sd15" or "sdxl", built once and cached."""
    path = CACHE / (name or f"random-{architecture_name}-fp16.safetensors")
    if path.is_file():
        return path
    tmp = path.with_suffix(".tmp.safetensors")
    write_fp16_checkpoint(architecture(FAMILIES[architecture_name]), tmp)
    os.replace(tmp, path)
    return path


def random_kohya_lora(checkpoint: Path, name: str, *, rank: int = 8, seed: int = 0) -> Path:
    """A kohya-format LoRA over every attention projection of `checkpoint`'s UNet (SD1.x naming)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = CACHE / name
    if path.is_file():
        return path
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(checkpoint), framework="pt") as handle:
        for key in handle.keys():
            if not key.startswith("model.diffusion_model.") or not any(
                    f".{p}.weight" in key for p in ("to_q", "to_k", "to_v", "to_out.0")):
                continue
            out_features, in_features = handle.get_slice(key).get_shape()[:2]
            layer = "lora_unet_" + key.removeprefix("model.diffusion_model.").removesuffix(".weight").replace(".", "_")
            tensors[f"{layer}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator).half() * 0.01
            tensors[f"{layer}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator).half() * 0.01
            tensors[f"{layer}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def txt2img_prompt(ckpt_name: str, *, size: int, steps: int, batch: int = 1, seed: int = 0,
                   lora: tuple[str, float] | None = None, sampler: str = "euler", cfg: float = 7.0) -> dict:
    """A ComfyUI API-format text-to-image prompt (the shape users' workflows have)."""
    model, clip = ["4", 0], ["4", 1]
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle on a blue background", "clip": clip}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": "normal", "denoise": 1.0,
            "model": model, "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }
    if lora is not None:
        prompt["10"] = {"class_type": "LoraLoader", "inputs": {"lora_name": lora[0], "strength_model": lora[1],
                                                                "strength_clip": lora[1], "model": model, "clip": clip}}
        prompt["3"]["inputs"]["model"] = ["10", 0]
        prompt["6"]["inputs"]["clip"] = prompt["7"]["inputs"]["clip"] = ["10", 1]
    return prompt


def rss_bytes() -> int:
    """This process' resident set size now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    """This process' peak resident set size so far (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0
