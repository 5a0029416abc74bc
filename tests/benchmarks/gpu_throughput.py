"""Sampling throughput of a real workflow through the engine, on SD1.5 and SDXL architectures with random weights.

Each model is built at its real architecture (random weights, nothing downloaded), written with our own exporter
as an fp16 single-file checkpoint into a temporary models folder, and run as users run it:
CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage -> KSampler (euler, CFG 7, batch 1) -> VAEDecode.
A first run loads the checkpoint and warms up (cuDNN, compilation); a second run with another seed re-runs only
KSampler and VAEDecode, and is the one measured, from node-start/node-end hooks that synchronise CUDA first.
The "compiled" variant puts a TorchCompileModel node (ComfyUI's) between loader and KSampler when the registry
has that type. The embedded model's images/s at batch 16 closes the run.

On CUDA: SD1.5 at 512 px and SDXL at 1024 px, 20 steps, full-depth text encoders. Without CUDA the same code runs
at small sizes (see CPU_CASES) so it finishes in minutes on two cores; SDXL is skipped when RAM is short.

Usage:
  python tests/benchmarks/gpu_throughput.py            # CUDA if present, else the small CPU sizes
  python tests/benchmarks/gpu_throughput.py --quick    # tiny models only: a smoke test of the whole path
  python tests/benchmarks/gpu_throughput.py --out figures.json
  OMP_NUM_THREADS=1 python tests/benchmarks/gpu_throughput.py   # steadier CPU figures on a shared machine, where
                                                                 # threads waiting for each other slow steps many-fold
Last line: one JSON object of named figures (null where a figure could not be measured, with a note saying why).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# this checkout's packages first (an installed nodegraph may be another checkout), then tests/ for tiny_models
sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from diffusers.utils import logging as diffusers_logging  # noqa: E402

from nodegraph import Hooks, RunInfo  # noqa: E402
from nodegraph.app import AppConfig, build_engine  # noqa: E402
from nodegraph.formats.api import from_api  # noqa: E402
from random_checkpoints import architecture, write_fp16_checkpoint  # noqa: E402
from tiny_models import TinyModules, sd1_modules, sdxl_modules  # noqa: E402

POSITIVE = "a red circle on a blue background, highly detailed"
NEGATIVE = "blurry"
COMPILE_NODE = "TorchCompileModel"
EMBEDDED = "nodegraph-tiny-shapes.safetensors"
SDXL_CPU_RAM_GB = 16.0
"""MemAvailable needed to build, write and load SDXL in fp32 on the CPU (about 11 GB at its peak, plus margin)."""


@dataclass(frozen=True)
class Case:
    """One model at one size: `build` gives the modules that get exported (None: a shipped checkpoint)."""

    name: str
    family: str
    build: Callable[[], TinyModules] | None
    size: int
    steps: int
    batch: int = 1


# -- random-weight models at their real architectures ---------------------------------------------------


# -- running the workflow --------------------------------------------------------------------------------


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class NodeTimer(Hooks):
    """Wall time of each executed node by type, with CUDA synchronised at both ends (the step loop itself
    never syncs, so without this the host would be timing kernel launches)."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def node_start(self, run: RunInfo, node_id: str, node_type: str) -> None:
        sync()
        self.started[node_id] = time.perf_counter()

    def node_end(self, run: RunInfo, node_id: str, node_type: str, *, cached: bool, ui: dict[str, Any],
                 seconds: float, **future_kwargs: Any) -> None:
        if not cached:
            sync()
            self.seconds[node_type] = time.perf_counter() - self.started[node_id]


def prompt(ckpt: str, case: Case, seed: int, backend: str | None) -> dict[str, Any]:
    """The API-format txt2img prompt; with `backend`, TorchCompileModel sits between loader and KSampler."""
    model_link = ["10", 0] if backend else ["4", 0]
    nodes: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": case.size, "height": case.size,
                                                            "batch_size": case.batch}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": case.steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": model_link, "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }
    if backend:
        nodes["10"] = {"class_type": COMPILE_NODE, "inputs": {"model": ["4", 0], "backend": backend}}
    return nodes


def compile_backend(engine: Any) -> tuple[str | None, str | None]:
    """The TorchCompileModel backend to use ("inductor" when offered), or None and why not."""
    node = engine.registry.get(COMPILE_NODE)
    if node is None:
        return None, f"the registry has no {COMPILE_NODE} node type, so no compiled variant was run"
    for spec in node.schema.inputs:
        if spec.name == "backend":
            options = getattr(spec, "options", None)
            options = options(engine.env) if callable(options) else options
            if options and "inductor" not in options:
                return str(options[0]), None
    return "inductor", None


def attention_report(unet: torch.nn.Module) -> dict[str, Any]:
    """The UNet's attention processor classes and, on CUDA, whether SDPA's flash and memory-efficient kernels
    accept its head sizes in its dtype (diffusers' AttnProcessor2_0 calls F.scaled_dot_product_attention,
    which picks flash, then memory-efficient, then the math kernel, by what the inputs allow)."""
    layers = [m for m in unet.modules() if hasattr(m, "processor") and hasattr(m, "heads")]
    report: dict[str, Any] = {"attention_processors": sorted({type(m.processor).__name__ for m in layers})}
    report["sdpa_processors"] = all(name == "AttnProcessor2_0" for name in report["attention_processors"])
    if not torch.cuda.is_available() or not layers:
        return report
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = next(unet.parameters()).dtype
    head_dims = sorted({m.to_q.out_features // m.heads for m in layers})
    report["attention_head_dims"] = head_dims
    backends = (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_mem_efficient", SDPBackend.EFFICIENT_ATTENTION))
    for key, backend in backends:
        usable = True
        for dim in head_dims:
            q = torch.randn(2, 8, 256, dim, device="cuda", dtype=dtype)
            try:
                with sdpa_kernel([backend]):
                    torch.nn.functional.scaled_dot_product_attention(q, q, q)
            except RuntimeError:
                usable = False
        report[key] = usable
    report["sdpa_flash_enabled"] = torch.backends.cuda.flash_sdp_enabled()
    report["sdpa_mem_efficient_enabled"] = torch.backends.cuda.mem_efficient_sdp_enabled()
    return report


def run_case(engine: Any, ckpt: str, case: Case, backend: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Warm-up run (load, compile), then a measured run with another seed (only KSampler and VAEDecode run)."""
    warm = NodeTimer()
    result = engine.run(from_api(prompt(ckpt, case, 1, backend)), outputs=["8", "4"], hooks=[warm])
    handle = result.values["4"][0]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    timer = NodeTimer()
    engine.run(from_api(prompt(ckpt, case, 2, backend)), outputs=["8"], hooks=[timer])
    ksampler_s, decode_s = timer.seconds["KSampler"], timer.seconds["VAEDecode"]
    figures = {
        "it_s": round(case.steps / ksampler_s, 3),
        "ksampler_s": round(ksampler_s, 3),
        "vae_decode_s": round(decode_s, 3),
        "images_s": round(case.batch / (ksampler_s + decode_s), 3),
        "peak_vram_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None,
        "warmup_s": round(sum(warm.seconds.values()), 3),
    }
    return figures, attention_report(handle.unet)


def free_models(engine: Any) -> None:
    """Drop loaded models between cases so two big ones never coexist (what POST /free does)."""
    from nodegraph.server.worker import _free

    _free(engine, unload_models=True, free_memory=True)


def available_ram_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


# -- the cases -------------------------------------------------------------------------------------------

CUDA_CASES = (
    Case("sd15", "sd1", lambda: architecture("sd1"), 512, 20),
    Case("sdxl", "sdxl", lambda: architecture("sdxl"), 1024, 20),
)
CPU_CASES = (
    Case("sd15", "sd1", lambda: architecture("sd1"), 64, 4),
    Case("sdxl", "sdxl", lambda: architecture("sdxl", text_layers=2), 64, 2),
)
QUICK_CASES = (
    Case("sd15", "sd1", lambda: sd1_modules(0), 64, 2),
    Case("sdxl", "sdxl", lambda: sdxl_modules(0), 64, 2),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models only (a smoke test)")
    parser.add_argument("--out", type=Path, help="also write the JSON figures here")
    args = parser.parse_args()
    diffusers_logging.set_verbosity_error()  # casting our random modules to fp16 is intended
    cuda = torch.cuda.is_available()
    if args.quick and not cuda:
        torch.set_num_threads(1)  # tiny models gain nothing from threads, and a busy machine makes them spin
    cases = QUICK_CASES if args.quick else CUDA_CASES if cuda else CPU_CASES
    figures: dict[str, Any] = {
        "device": "cuda" if cuda else "cpu", "gpu": torch.cuda.get_device_name() if cuda else None,
        "torch": torch.__version__, "mode": "quick" if args.quick else "full", "threads": torch.get_num_threads(),
        "code_root": str(Path(sys.modules["nodes"].__file__).resolve().parents[1]),
    }
    notes = []
    if args.quick:
        notes.append("quick: tiny SD1/SDXL-layout models (tests/tiny_models.py), not the real architectures")
    elif not cuda:
        notes.append("no CUDA: SD1.5 architecture at 64 px for 4 steps and SDXL at 64 px for 2 steps (SDXL with "
                     "2-layer text encoders), fp32 on the CPU; figures say the code path works, not how fast a GPU is")
    root = Path(tempfile.mkdtemp(prefix="nodegraph-gpu-bench-"))
    (root / "models" / "checkpoints").mkdir(parents=True)
    engine = build_engine(AppConfig(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                                    models_dir=root / "models", device="cuda" if cuda else "cpu"))
    backend, compiled_note = compile_backend(engine)
    if compiled_note:
        figures["compiled_note"] = compiled_note
    for case in cases:
        prefix = case.name
        figures[f"{prefix}_size_px"], figures[f"{prefix}_steps"] = case.size, case.steps
        if case.family == "sdxl" and not cuda and not args.quick and available_ram_gb() < SDXL_CPU_RAM_GB:
            notes.append(f"sdxl skipped: {available_ram_gb():.1f} GB RAM available, {SDXL_CPU_RAM_GB:.0f} GB needed")
            continue
        ckpt = f"{prefix}.safetensors"
        start = time.perf_counter()
        assert case.build is not None
        modules = case.build()
        size_gb = write_fp16_checkpoint(modules, root / "models" / "checkpoints" / ckpt)
        figures[f"{prefix}_checkpoint_gb"] = round(size_gb, 3)
        del modules
        gc.collect()
        figures[f"{prefix}_build_s"] = round(time.perf_counter() - start, 1)
        for variant, variant_backend in (("eager", None), ("compiled", backend)):
            if variant == "compiled" and variant_backend is None:
                for key in ("it_s", "peak_vram_gb", "vae_decode_s"):
                    figures[f"{prefix}_compiled_{key}"] = None
                continue
            measured, attention = run_case(engine, ckpt, case, variant_backend)
            for key, value in measured.items():
                figures[f"{prefix}_{variant}_{key}"] = value
            if variant == "eager":
                figures.update({f"{prefix}_{key}": value for key, value in attention.items()})
            print(f"{prefix} {variant}: {measured}", flush=True)
        free_models(engine)
        (root / "models" / "checkpoints" / ckpt).unlink()
    embedded = Case("embedded", "sd1", None, 64 if args.quick else 128, 2 if args.quick else 20,
                    batch=2 if args.quick else 16)
    measured, _ = run_case(engine, EMBEDDED, embedded, None)
    print(f"embedded: {measured}", flush=True)
    figures.update({"embedded_batch": embedded.batch, "embedded_size_px": embedded.size,
                    "embedded_steps": embedded.steps,
                    "embedded_images_s": measured["images_s"], "embedded_it_s": measured["it_s"],
                    "embedded_peak_vram_gb": measured["peak_vram_gb"]})
    figures["note"] = "; ".join(notes) or None
    line = json.dumps(figures)
    if args.out:
        args.out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
