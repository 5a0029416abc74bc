"""The new-concept table: teach the embedded model a heart from five images, four ways, and measure.

    nice -n 10 python scripts/evaluate_personalization.py --threads 1 --out runs/personalize

For each method (textual inversion, DreamBooth, Custom Diffusion, LoRA) it trains from the same five
renders of a heart (`nodes.sd.shapes.concept_spec(0..4)`, a shape the embedded model never saw), then
generates:
- 32 concept images, one per seed, each prompt naming new colours ('a cyan <heart> on a pink background'),
  scored by the template check (`training.concept_check`): the share that shows a heart;
- 32 base images of the five old shapes (training combinations, one seed each), scored by the analytic
  classifier: the share right on shape, foreground and background together (and on shape alone).
Plus training time and file size. The base model's own figures are the first row. The last printed line
is one JSON object of all figures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodes.models.embedded import EMBEDDED_PATH  # noqa: E402
from nodes.sd import personalization as P  # noqa: E402
from nodes.sd.finetune import TrainingSet, stack_states, train  # noqa: E402
from nodes.sd.finetune.lora_layers import to_kohya  # noqa: E402
from nodes.sd.finetune.lora_train import LoraSettings, train_lora  # noqa: E402
from nodes.sd.finetune.loop import _STATE_KEY as STATE_KEY, read_state  # noqa: E402
from nodes.sd.lora import match_lora, read_lora, with_updated_weights  # noqa: E402
from nodes.sd.loading import load_checkpoint  # noqa: E402
from nodes.sd.shapes import COLOURS, caption, concept_caption, concept_spec, render_concept, spec_for, training_combinations  # noqa: E402
from nodes.sd.saving import checkpoint_tensors, write_safetensors  # noqa: E402
from nodes.sd.text import encode  # noqa: E402
from nodes.sd.vae import decode as vae_decode, encode as vae_encode  # noqa: E402
from training.classifier import classify  # noqa: E402
from training.concept_check import match_shape  # noqa: E402
from training.data import images_to_tensor, tensor_to_images  # noqa: E402
from training.generate import EulerGenerator  # noqa: E402

SEEDS = 32
CONCEPT_IMAGES = 5
CLASS_IMAGES = 32
_PROMPT_SEED = 19_000


def concept_images(count: int = CONCEPT_IMAGES) -> tuple[list, list[str]]:
    """The five training images of the new concept and their captions ('a black heart on a red background')."""
    specs = [concept_spec(i) for i in range(count)]
    return [render_concept(spec)[0] for spec in specs], [concept_caption(spec) for spec in specs]


def colour_pairs(count: int) -> list[tuple[str, str]]:
    rng = random.Random(_PROMPT_SEED)
    return [tuple(rng.sample(list(COLOURS), 2)) for _ in range(count)]  # type: ignore[misc]


def base_specs(count: int, offset: int = 0) -> list:
    rng = random.Random(_PROMPT_SEED + 1 + offset)
    combos = rng.sample(training_combinations(), count)
    return [spec_for(*combo, rng, mention_size=0.0, mention_position=0.0) for combo in combos]


def sampler(unet: torch.nn.Module, encode_fn, vae) -> EulerGenerator:
    def decode_images(latents: torch.Tensor) -> list:
        return tensor_to_images(vae_decode(vae, latents).permute(0, 3, 1, 2) * 2 - 1)

    return EulerGenerator(unet, encode_fn, decode_images, steps=20, cfg=6.0)


def score(generate: EulerGenerator, word: str) -> dict[str, float]:
    """Concept rate (heart shown, and colours right too) over 32 seeds; base prompts' accuracy over 32."""
    pairs = colour_pairs(SEEDS)
    prompts = [f"a {fg} {word} on a {bg} background".replace("a o", "an o") for fg, bg in pairs]
    images = generate(prompts, list(range(SEEDS)))
    hearts = [match_shape(image).shape == "heart" for image in images]
    colours = [(r.fg, r.bg) == pair for r, pair in zip(map(classify, images), pairs)]
    specs = base_specs(SEEDS)
    base = generate([caption(spec) for spec in specs], list(range(SEEDS)))
    results = [classify(image) for image in base]
    base_all = [(r.shape, r.fg, r.bg) == (s.shape, s.fg, s.bg) for r, s in zip(results, specs)]
    base_shape = [r.shape == s.shape for r, s in zip(results, specs)]
    base_colours = [(r.fg, r.bg) == (s.fg, s.bg) for r, s in zip(results, specs)]
    return {"base_colours": sum(base_colours) / SEEDS, "concept": sum(hearts) / SEEDS, "concept_and_colours": sum(h and c for h, c in zip(hearts, colours)) / SEEDS,
            "base_all": sum(base_all) / SEEDS, "base_shape": sum(base_shape) / SEEDS}  # fmt: skip


def class_data(loaded, out: Path, count: int = CLASS_IMAGES) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Prior-preservation data: the base model's own latents for prompts about the five old shapes (cached)."""
    specs = base_specs(count, offset=1)
    captions = tuple(caption(spec) for spec in specs)
    path = out / ("class_latents.safetensors" if count == CLASS_IMAGES else f"class_latents_{count}.safetensors")
    if not path.exists():
        generate = EulerGenerator(loaded.model.unet, lambda text: encode(loaded.clip, text).embeds, lambda z: [z])
        latents = torch.cat([generate([c], [1000 + i])[0] for i, c in enumerate(captions)])
        save_file({"latents": latents.contiguous()}, str(path))
    return load_file(str(path))["latents"], captions


@dataclass(frozen=True)
class Recipe:
    """One method's settings (the table's row; every field can be overridden on the command line)."""

    steps: int
    lr: float
    prior: str = "images"
    class_images: int = CLASS_IMAGES
    prior_weight: float = 1.0
    class_per_step: int = 0
    vectors: int = 2


METHODS = {
    "textual_inversion": Recipe(300, 5e-3),
    "dreambooth": Recipe(800, 2e-4, prior="distill", class_images=128, prior_weight=2.0, class_per_step=10),
    "custom_diffusion": Recipe(600, 1e-3),
    "lora": Recipe(300, 1e-3),  # TrainLoraNode's maths: no prior term
    "lora_prior": Recipe(600, 1e-3, prior="distill", class_images=128),  # DreamBoothLoraTrain's
}
LORA_RANK = 4


def objective(method: str, loaded, latents: torch.Tensor, captions: list[str], out: Path,
              recipe: Recipe) -> P.Objective | P.ConceptData:
    class_images, prior_weight, vectors, prior = recipe.class_images, recipe.prior_weight, recipe.vectors, recipe.prior
    if method == "textual_inversion":
        return P.textual_inversion(loaded.model, loaded.clip, P.ConceptData(latents, tuple(captions)), "heart", "circle", vectors)
    if method == "lora":  # TrainLoraNode's maths (nodes/sd/finetune/lora_train.py) on the same data
        return P.ConceptData(latents, tuple(captions))
    data = P.ConceptData(latents, tuple(captions), *class_data(loaded, out, class_images))
    if method == "lora_prior":  # DreamBooth-LoRA: the same layers as TrainLoraNode's, plus the prior term
        goal = P.lora(loaded.model, loaded.clip, data, LORA_RANK, prior_weight=prior_weight, prior=prior)
    elif method == "dreambooth":
        goal = P.dreambooth(loaded.model, loaded.clip, data, prior_weight=prior_weight, prior=prior)
    else:
        goal = P.custom_diffusion(loaded.model, loaded.clip, data, "heart", "circle", prior_weight=prior_weight, prior=prior)
    goal.class_per_step = recipe.class_per_step
    return goal


def train_and_save(method: str, loaded, objective: P.Objective | P.ConceptData, out: Path, steps: int, lr: float) -> tuple[float, int, EulerGenerator, str]:
    """Train through the fine-tuning core (resumable: state in `out`), save the method's file(s), and return
    (training seconds, bytes saved, a generator over the result, the word that names the concept)."""
    started = time.perf_counter()
    last = [started]

    def progress(step: int, total: int, loss: float) -> None:
        if step % 25 == 0 or step == total:
            print(f"{method} {step}/{total} loss {loss:.4f} {time.perf_counter() - last[0]:.1f}s", flush=True)
            last[0] = time.perf_counter()

    base_encode = lambda text: encode(loaded.clip, text).embeds  # noqa: E731
    if method == "lora":
        data = TrainingSet(objective.latents, stack_states([base_encode(c) for c in objective.captions]))
        settings = LoraSettings(batch_size=len(data), steps=steps, learning_rate=lr, rank=LORA_RANK, seed=0,
                                training_dtype="fp32", lora_dtype="fp32", gradient_checkpointing=False)  # fmt: skip
        weights, _, _ = train_lora(loaded.model, data, settings, state_dir=out, progress=progress, save_every=50)
        seconds = time.perf_counter() - started
        path = out / "heart_lora.safetensors"
        save_file(dict(weights.tensors), str(path))
        unet = with_updated_weights(loaded.model.unet, match_lora(read_lora(path), loaded.model.unet, ()).unet)
        return seconds, path.stat().st_size, sampler(unet, base_encode, loaded.vae), "heart"
    result = train(objective.step_fn, objective.params, steps=steps, seed=0, lr=lr, progress=progress,
                   state_path=out / f"{method}.state.safetensors", save_every=50,
                   settings={"method": method, "steps": steps, "lr": lr})  # fmt: skip
    seconds = time.perf_counter() - started
    trained = result.params
    if method == "textual_inversion":
        path = P.save_embedding(out / "embeddings" / "heart_ti.safetensors", trained["vectors"], token="heart")
        clip = replace(loaded.clip, embedding_dirs=(str(path.parent),))
        return seconds, path.stat().st_size, sampler(loaded.model.unet, lambda t: encode(clip, t).embeds, loaded.vae), "embedding:heart_ti"
    if method == "lora_prior":
        path = out / "heart_lora_prior.safetensors"
        save_file(to_kohya(objective.lora_layers(), objective.lora_alpha), str(path))
        unet = with_updated_weights(loaded.model.unet, match_lora(read_lora(path), loaded.model.unet, ()).unet)
        return seconds, path.stat().st_size, sampler(unet, base_encode, loaded.vae), "heart"
    if method == "dreambooth":
        path = out / "heart_dreambooth.safetensors"
        tensors, config = checkpoint_tensors(P.tuned_model(loaded.model, objective.unet_overrides()), loaded.clip, loaded.vae)
        write_safetensors(path, tensors, {}, config)
        tuned = load_checkpoint(path)
        return seconds, path.stat().st_size, sampler(tuned.model.unet, base_encode, tuned.vae), "heart"
    patch = P.save_weight_patch(out / "heart_cd.safetensors", loaded.model.unet,
                                {k.removeprefix("unet."): v for k, v in trained.items() if k.startswith("unet.")},
                                "custom_diffusion")  # fmt: skip
    embedding = P.save_embedding(out / "embeddings" / "heart_cd.safetensors", trained["vectors"], token="heart")
    unet = with_updated_weights(loaded.model.unet, match_lora(read_lora(patch), loaded.model.unet, ()).unet)
    clip = replace(loaded.clip, embedding_dirs=(str(embedding.parent),))
    size = patch.stat().st_size + embedding.stat().st_size
    return seconds, size, sampler(unet, lambda t: encode(clip, t).embeds, loaded.vae), "embedding:heart_cd"


def extend_state(source: Path, target: Path, steps: int) -> None:
    """Copy a finished run's state with its planned steps raised to `steps` (the rest of its settings kept)."""
    if not source.exists() or target.exists():
        return
    info, tensors = read_state(source)
    info["settings"]["steps"] = steps
    save_file(tensors, str(target), metadata={STATE_KEY: json.dumps(info)})


def markdown_table(rows: dict[str, dict]) -> str:
    """The docs table from the rows (`<out>/<method>.json`)."""
    lines = ["| method | concept (heart) | heart + both colours | base prompts: all right | base: shape right "
             "| training time | steps | file size |", "|---|---|---|---|---|---|---|---|"]
    for method, row in rows.items():
        size = "-" if not row["bytes"] else (f"{row['bytes'] / 2**20:.1f} MB" if row["bytes"] > 2**20
                                             else f"{row['bytes'] / 1024:.1f} KB")
        time_text = "-" if not row["seconds"] else f"{row['seconds'] / 60:.1f} min"
        lines.append(f"| {method} | {row['concept']:.1%} | {row['concept_and_colours']:.1%} | {row['base_all']:.1%} "
                     f"| {row['base_shape']:.1%} | {time_text} | {row['steps']} | {size} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/personalize"))
    parser.add_argument("--methods", default="base," + ",".join(METHODS))
    parser.add_argument("--steps", type=json.loads, default={}, help='e.g. {"lora": 100}')
    parser.add_argument("--lr", type=json.loads, default={}, help='e.g. {"dreambooth": 3e-4}')
    parser.add_argument("--class-images", type=int, help="prior-preservation images")
    parser.add_argument("--prior-weight", type=float)
    parser.add_argument("--class-per-step", type=int, help="class images per step (0: as many as concept images)")
    parser.add_argument("--prior", choices=P.PRIORS,
                        help="class images as DreamBooth uses them, or as inputs whose target is the base model's output")
    parser.add_argument("--vectors", type=int, help="textual inversion's vectors per token")
    parser.add_argument("--extend", type=Path, default=None,
                        help="continue each method's finished state in this run folder up to the new --steps "
                             "(the loop's LR is constant and every step's draws are seeded by its index, so this is "
                             "the longer run's trajectory exactly)")
    parser.add_argument("--table", action="store_true", help="only print the table of the rows in --out")
    args = parser.parse_args()
    if args.table:
        rows = {m: json.loads((args.out / f"{m}.json").read_text()) for m in ["base", *METHODS]
                if (args.out / f"{m}.json").exists()}  # fmt: skip
        print(markdown_table(rows))
        print(json.dumps(rows))
        return
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.extend is not None:
        for method in args.methods.split(","):
            extend_state(args.extend / f"{method}.state.safetensors", out / f"{method}.state.safetensors",
                         args.steps.get(method, METHODS[method].steps if method in METHODS else 0))  # fmt: skip
    loaded = load_checkpoint(EMBEDDED_PATH)
    images, captions = concept_images()
    latents = vae_encode(loaded.vae, images_to_tensor(images).permute(0, 2, 3, 1) * 0.5 + 0.5)
    rows: dict[str, dict] = {}
    for method in args.methods.split(","):
        started = time.perf_counter()
        if method == "base":
            generate = sampler(loaded.model.unet, lambda text: encode(loaded.clip, text).embeds, loaded.vae)
            rows[method] = {**score(generate, "heart"), "seconds": 0.0, "bytes": 0, "steps": 0}
        else:
            recipe = replace(METHODS[method], steps=args.steps.get(method, METHODS[method].steps),
                             lr=args.lr.get(method, METHODS[method].lr),
                             **{k: v for k in ("prior", "class_images", "prior_weight", "class_per_step", "vectors")
                                if (v := getattr(args, k)) is not None})  # fmt: skip
            goal = objective(method, loaded, latents, captions, out, recipe)
            seconds, size, generate, word = train_and_save(method, loaded, goal, out, recipe.steps, recipe.lr)
            rows[method] = {**score(generate, word), "seconds": seconds, "bytes": size, **asdict(recipe),
                            "word": word}  # fmt: skip
        rows[method]["wall_seconds"] = time.perf_counter() - started
        (out / f"{method}.json").write_text(json.dumps(rows[method]))
        print(method, json.dumps(rows[method]), flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
