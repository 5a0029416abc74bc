"""Our graph vs diffusers' StableDiffusionPipeline: same model, prompt, sampler, steps, seed; alternating runs.

Usage:
  python tests/benchmarks/sampling_vs_diffusers.py            # small SD1-layout model, 128 px, 20 Euler steps
  python tests/benchmarks/sampling_vs_diffusers.py --sd15     # SD1.5-size random-weight UNet, 256 px, 3 steps
Last line: one JSON object with ours_s, diffusers_s and ratio (ours / diffusers; target <= 1.0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402

from nodegraph.app import AppConfig, build_engine  # noqa: E402
from nodegraph.cache import OutputCache  # noqa: E402
from nodegraph.formats.api import from_api  # noqa: E402
from nodes.sd.ksampler import prepare_noise  # noqa: E402
from nodes.sd.tokenizer import clip_bpe_tokenizer  # noqa: E402
from tiny_models import TinyModules, randomize, tiny_text_encoder, tiny_vae, write_checkpoint  # noqa: E402

PROMPT_TEXT = "a red circle on a blue background"


def small_model() -> TinyModules:
    """Roughly the embedded model's size: UNet (64, 128, 128) with cross-attention, CLIP width 64."""
    unet = randomize(UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32), seed=0)
    encoder = tiny_text_encoder(1, hidden=64, heads=1, open_clip=False)
    return TinyModules("sd1", unet, tiny_vae(2), [encoder])


def sd15_model() -> TinyModules:
    """SD1.5's UNet architecture with random weights (860 M parameters)."""
    config = json.loads((Path(__file__).resolve().parents[2] / "nodes/sd/configs/sd15_unet.json").read_text())
    unet = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    encoder = tiny_text_encoder(1, hidden=768, heads=12, open_clip=False)
    return TinyModules("sd1", unet.eval(), tiny_vae(2), [encoder])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sd15", action="store_true", help="SD1.5-size UNet at 256 px for 3 steps")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size, steps = (256, 3) if args.sd15 else (128, 20)
    modules = sd15_model() if args.sd15 else small_model()
    root = Path(tempfile.mkdtemp(prefix="nodegraph-bench-"))
    (root / "models" / "checkpoints").mkdir(parents=True)
    write_checkpoint(modules, root / "models" / "checkpoints" / "bench.safetensors")
    engine = build_engine(AppConfig(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                                    models_dir=root / "models", device="cpu", precision="fp32"))
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "bench.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT_TEXT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 7, "steps": steps, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }
    workflow = from_api(prompt)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="linspace")
    pipe = StableDiffusionPipeline(vae=modules.vae, text_encoder=modules.encoders[0], tokenizer=clip_bpe_tokenizer(),
                                   unet=modules.unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    noise = prepare_noise(torch.zeros(1, 4, size // 8, size // 8), 7, [0])

    def run_ours() -> float:
        engine.cache = OutputCache()  # nothing cached between runs: text, sampling and decoding all run
        start = time.perf_counter()
        engine.run(workflow, outputs=["8"])
        return time.perf_counter() - start

    def run_diffusers() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            pipe(PROMPT_TEXT, negative_prompt="", num_inference_steps=steps, guidance_scale=6.0, height=size,
                 width=size, latents=noise.clone(), output_type="pt")
        return time.perf_counter() - start

    run_ours(), run_diffusers()  # warm-up: checkpoint load into the loader's cache, first-call allocations
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(run_ours())
        theirs.append(run_diffusers())
        print(f"ours {ours[-1]:.3f} s   diffusers {theirs[-1]:.3f} s")
    ours_s, diffusers_s = statistics.median(ours), statistics.median(theirs)
    print(json.dumps({"mode": "sd15_256px_3steps" if args.sd15 else "small_128px_20steps", "ours_s": round(ours_s, 3),
                      "diffusers_s": round(diffusers_s, 3), "ratio": round(ours_s / diffusers_s, 3),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
