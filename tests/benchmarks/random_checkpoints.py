"""Real-architecture SD checkpoints with random weights, for benchmarks (no download ever).

The modules are built on the meta device, given fp16 storage and filled with small normal noise (no
full-precision init of billions of weights), then written by the project's own exporter in the original
single-file layout, so our loader reads them exactly as it reads a real SD1.5 or SDXL file. Files are kept
in a cache folder keyed by architecture, so a second benchmark run does not rebuild them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "nodes" / "sd" / "configs"
CACHE = Path(os.environ.get("NODEGRAPH_BENCH_CACHE", Path(tempfile.gettempdir()) / "nodegraph-bench-models"))

ARCHITECTURES = {
    "sd15": ("sd1", "sd15_unet.json", "sd15_vae.json", ("clip_l_text.json",)),
    "sdxl": ("sdxl", "sdxl_unet.json", "sdxl_vae.json", ("clip_l_text.json", "open_clip_bigg_text.json")),
}


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads((CONFIGS / name).read_text()).items() if not k.startswith("_")}


def _random(factory, seed: int) -> torch.nn.Module:
    with torch.device("meta"):
        module = factory()
    module = module.to(dtype=torch.float16).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if tensor.dim() == 1 and name.endswith("weight"):  # norm scales
                tensor.fill_(1.0)
            elif name.endswith("bias"):
                tensor.zero_()
            else:
                fan_in = tensor[0].numel() if tensor.dim() > 1 else tensor.numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / max(fan_in, 1) ** 0.5)
    return module.eval()


def random_checkpoint(architecture: str, *, name: str | None = None) -> Path:
    """The path of a random-weight fp16 single-file checkpoint of `architecture` ("sd15" or "sdxl")."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from nodes.sd.loading.export import save_checkpoint

    family, unet_json, vae_json, text_jsons = ARCHITECTURES[architecture]
    path = CACHE / (name or f"random-{architecture}-fp16.safetensors")
    if path.is_file():
        return path
    unet = _random(lambda: UNet2DConditionModel(**_config(unet_json)), 0)
    vae = _random(lambda: AutoencoderKL(**_config(vae_json)), 1)
    encoders = []
    for index, text_json in enumerate(text_jsons):
        cls = CLIPTextModelWithProjection if family == "sdxl" and index == 1 else CLIPTextModel
        encoders.append(_random(lambda: cls(CLIPTextConfig(**_config(text_json))), 2 + index))
    tmp = path.with_suffix(".tmp.safetensors")
    save_checkpoint(tmp, family=family, unet=unet, vae=vae, encoders=encoders)
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
