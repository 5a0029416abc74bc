"""Memory on the CPU: peak RSS of a 256 px SD1.5-architecture run, RSS after POST /free's work, three
checkpoints under a two-checkpoint RAM budget, and LoRA A -> B -> A switching against a first load.

Each scenario runs in a fresh process (peak RSS is per process), on a random-weight SD1.5-architecture fp16
checkpoint written by our own exporter (tests/benchmarks/random_checkpoints.py; nothing is downloaded).

Usage:
  python tests/benchmarks/memory.py              # all scenarios (~5 min on 2 cores)
  python tests/benchmarks/memory.py --quick      # peak and /free only, 64 px
Last line: one JSON object of named figures (bytes as GB = 1e9 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from random_checkpoints import (  # noqa: E402
    CACHE, peak_rss_bytes, random_checkpoint, random_kohya_lora, rss_bytes, txt2img_prompt,
)

GB = 1e9


def _engine(root: Path, names: list[str], ram_budget_gb: float | None = None, loras: dict[str, Path] | None = None):
    from nodegraph.app import AppConfig, build_engine

    for folder, files in (("checkpoints", {name: random_checkpoint("sd15") for name in names}), ("loras", loras or {})):
        directory = root / "models" / folder
        directory.mkdir(parents=True, exist_ok=True)
        for name, source in files.items():
            if not (directory / name).exists():
                os.link(source, directory / name)  # hard links: the listing refuses symlinks out of the folder
    config = AppConfig(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                       models_dir=root / "models", device="cpu", ram_budget_gb=ram_budget_gb)
    return build_engine(config)


def _run(engine, prompt: dict) -> float:
    from nodegraph.formats.api import from_api

    started = time.perf_counter()
    engine.run(from_api(prompt), outputs=["8"])
    return time.perf_counter() - started


def scenario_peak(root: Path, size: int, steps: int, ram_budget_gb: float | None) -> dict:
    """One txt2img run; then what POST /free does (outputs and models released, heap trimmed)."""
    before_imports = rss_bytes()
    engine = _engine(root, ["sd15.safetensors"], ram_budget_gb)
    import nodes.sd.loading  # noqa: F401  (the node pack's model code: imported by any first prompt)

    before_load = rss_bytes()
    seconds = _run(engine, txt2img_prompt("sd15.safetensors", size=size, steps=steps))
    peak, after_run = peak_rss_bytes(), rss_bytes()
    stats = engine.env.manager.stats()
    from nodegraph.server.worker import _free

    _free(engine, unload_models=True, free_memory=True)
    after_free = rss_bytes()
    return {"size": size, "steps": steps, "ram_budget_gb": ram_budget_gb, "run_s": round(seconds, 2),
            "peak_rss_gb": round(peak / GB, 3), "rss_after_run_gb": round(after_run / GB, 3),
            "rss_before_imports_gb": round(before_imports / GB, 3), "rss_before_load_gb": round(before_load / GB, 3),
            "rss_after_free_gb": round(after_free / GB, 3),
            "after_free_over_before_load_mb": round((after_free - before_load) / 1e6, 1),
            "after_free_over_before_imports_mb": round((after_free - before_imports) / 1e6, 1),
            "models_loaded_during_run": [m["name"] for m in stats["models"]], "evictions": stats["evictions"]}


def scenario_three(root: Path) -> dict:
    """Three checkpoints used in turn (then the first again) under a RAM budget that holds two."""
    one = 4.26  # an SD1.5-architecture checkpoint in fp32: UNet 3.44 + CLIP-L 0.49 + VAE 0.33 GB
    budget = 2.2 * one * GB / 1024**3
    names = ["a.safetensors", "b.safetensors", "c.safetensors"]
    engine = _engine(root, names, budget)
    seconds = []
    for name in [*names, names[0]]:
        engine.cache.clear()  # only the model manager may keep anything between these runs
        seconds.append(_run(engine, txt2img_prompt(name, size=64, steps=1)))
    stats = engine.env.manager.stats()
    return {"ram_budget_gb": round(budget * 1024**3 / GB, 2), "runs_s": [round(s, 2) for s in seconds],
            "all_ran": True, "evictions": stats["evictions"], "loads": stats["loads"],
            "loaded_gb_at_end": round(stats["ram_bytes"] / GB, 2), "peak_rss_gb": round(peak_rss_bytes() / GB, 2)}


def scenario_lora(root: Path) -> dict:
    """LoRA A, then B, then A again on one checkpoint: switching reloads nothing and re-merges only B."""
    checkpoint = random_checkpoint("sd15")
    loras = {name: random_kohya_lora(checkpoint, name, seed=seed) for seed, name in enumerate(("A.safetensors", "B.safetensors"))}
    engine = _engine(root, ["sd15.safetensors"], None, loras)
    times = {}
    for label, lora in (("first_load_A_s", "A.safetensors"), ("switch_to_B_s", "B.safetensors"),
                        ("switch_back_to_A_s", "A.safetensors")):
        engine.cache.clear()  # as if the prompt changed upstream: only the model manager keeps anything
        times[label] = round(_run(engine, txt2img_prompt("sd15.safetensors", size=64, steps=1, lora=(lora, 0.8))), 2)
    engine.cache.clear()
    times["same_lora_again_s"] = round(_run(engine, txt2img_prompt("sd15.safetensors", size=64, steps=1, seed=1,
                                                                    lora=("A.safetensors", 0.8))), 2)
    stats = engine.env.manager.stats()
    merged = [m for m in stats["models"] if m["derived"]]
    return {**times, "loads_and_merges": stats["loads"], "merged_copies_kept": len(merged),
            "merged_unet_copy_mb": [round(m["nbytes"] / 1e6, 1) for m in merged if "UNet" in m["name"]]}


def child(args: argparse.Namespace) -> None:
    root = Path(args.root)
    if args.scenario == "peak":
        result = scenario_peak(root, args.size, args.steps, args.ram_budget)
    elif args.scenario == "three":
        result = scenario_three(root)
    else:
        result = scenario_lora(root)
    print(json.dumps(result))


def run_child(name: str, root: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1))}
    done = subprocess.run([sys.executable, __file__, "--scenario", name, "--root", str(root / name), *extra],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scenario", choices=["peak", "three", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--ram-budget", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:
        child(args)
        return
    import tempfile

    random_checkpoint("sd15")  # built once, outside the measured processes
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        size = "64" if args.quick else "256"
        figures = {"device": "cpu", "checkpoint": "SD1.5 architecture, random fp16 weights", "cache": str(CACHE),
                   "peak_default_budget": run_child("peak", root, "--size", size)}
        if not args.quick:
            figures["peak_small_machine_budget_3_3gb"] = run_child("peak", root / "b", "--ram-budget", "3.3")
            figures["three_checkpoints_two_fit"] = run_child("three", root)
            figures["lora_switch"] = run_child("lora", root)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
