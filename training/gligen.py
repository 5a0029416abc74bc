"""A tiny GLIGEN for the embedded model: a named shape is drawn inside a box (Li et al. 2023, arXiv:2301.07093).

The shipped UNet and text encoder stay frozen; a position net and gated self-attention fusers learn from the
shapes generator's own ground truth: each picture's box is the square around its shape (centre +- radius), its phrase "a <fg> <shape>", and
the caption leaves out the position words, so only the box can say where the shape goes. To stay under the
3 MB budget the fusers sit in the down and middle blocks only (the coarse layout is decided there); the
loader maps fusers by block name, so a file with fewer fusers loads in the same way. The model card says what
it reached (so far: chance) and why the recipe departs from the paper's (GligenSettings).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from nodes.sd.gligen import MAX_OBJECTS, GligenModel, fusers_hooked, transformer_blocks
from nodes.sd.loading.keymap import unet_rules
from nodes.sd.shapes import ShapeSpec
from training import data
from training.adapters import base_modules, caption_tokens, encode_items
from training.unet import alphas_cumprod

GLIGEN_STREAM = 8


@dataclass(frozen=True)
class GligenSettings:
    seed: int = 0
    dataset_size: int = 1024
    batch_size: int = 16
    lr: float = 2e-3
    caption_dropout: float = 0.1
    seconds: float = 600.0
    max_steps: int = 4000
    resolution: int = 128
    min_timestep: int = 400
    """Train at t in [min_timestep, 999] only: where the layout of a picture is decided (a box says nothing
    about the last details), so every step carries the signal."""
    initial_gate: float = 0.3
    """alpha_attn / alpha_dense at the start. The paper starts them at 0 (the model unchanged); with so few
    steps a gate at 0 passes no gradient to its attention, so the gates start open a little."""
    blocks: str = "down,mid"
    """Which transformer blocks get a fuser: UNet parts by diffusers prefix (down_blocks / mid_block / up_blocks)."""


def spec_box(spec: ShapeSpec) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) as fractions of the image: the square around the shape's outer circle, clipped."""
    clip = lambda v: min(1.0, max(0.0, v))  # noqa: E731
    return (clip(spec.cx - spec.radius), clip(spec.cy - spec.radius), clip(spec.cx + spec.radius),
            clip(spec.cy + spec.radius))


def phrase(spec: ShapeSpec) -> str:
    return f"a {spec.fg} {spec.shape}"


def plain_caption(spec: ShapeSpec) -> str:
    """The caption without size or position words: where the shape goes is left to the box."""
    return f"a {spec.fg} {spec.shape} on a {spec.bg} background"


def new_gligen(unet: torch.nn.Module, text_dim: int, blocks: str) -> GligenModel:
    prefixes = tuple({"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}[p] for p in blocks.split(","))
    chosen = {name: block for name, block in transformer_blocks(unet).items() if name.startswith(prefixes)}
    context = int(unet.config.cross_attention_dim)
    return GligenModel(list(chosen), [int(b.attn1.to_q.in_features) for b in chosen.values()], text_dim, context)


def train_gligen(settings: GligenSettings, checkpoint: str | Path, work_dir: str | Path, *, log=print,
                 resume: bool = False) -> tuple[GligenModel, dict]:
    """Train for `settings.seconds` (or max_steps); returns the model (diffusers block names) and a record.

    The model, optimizer and step count are kept in `work_dir/gligen_state.pt`; `resume` goes on from there.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    unet, text_encoder, vae = base_modules(checkpoint, "cpu")
    for module in (unet, text_encoder, vae):
        module.requires_grad_(False)
    specs = data.stream_specs(settings.seed, GLIGEN_STREAM, 0, settings.dataset_size)
    cache = work_dir / f"gligen_latents_{settings.dataset_size}.safetensors"
    encode_items([(spec, False) for spec in specs], vae, cache, settings.resolution, progress=False)
    latents = load_file(str(cache))["latents"]
    torch.manual_seed(settings.seed)
    model = new_gligen(unet, int(text_encoder.config.hidden_size), settings.blocks).train()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                param.fill_(settings.initial_gate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.99), weight_decay=0.01)
    alphas = alphas_cumprod()
    state_path, step, earlier_seconds = work_dir / "gligen_state.pt", 0, 0.0
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, earlier_seconds = int(state["step"]), float(state["seconds"])
    rng = random.Random(settings.seed * 7919 + step)
    started, losses = time.perf_counter(), []
    first_step = step
    while step - first_step < settings.max_steps and time.perf_counter() - started < settings.seconds:
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + step)
        rows = [rng.randrange(len(specs)) for _ in range(settings.batch_size)]
        captions = ["" if rng.random() < settings.caption_dropout else plain_caption(specs[r]) for r in rows]
        with torch.no_grad():
            states = text_encoder(caption_tokens(captions, "cpu")).last_hidden_state
            phrases = text_encoder(caption_tokens([phrase(specs[r]) for r in rows], "cpu")).pooler_output
        boxes = torch.zeros(len(rows), MAX_OBJECTS, 4)
        masks = torch.zeros(len(rows), MAX_OBJECTS)
        embeds = torch.zeros(len(rows), MAX_OBJECTS, phrases.shape[-1])
        boxes[:, 0] = torch.tensor([spec_box(specs[r]) for r in rows])
        masks[:, 0] = 1.0
        embeds[:, 0] = phrases
        objs = model.grounding_tokens(boxes, masks, embeds)
        with fusers_hooked(unet, model, objs):
            loss = layout_loss(unet, states, latents[rows], generator, alphas, settings.min_timestep)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 50 == 0:
            log(f"step {step} loss {sum(losses[-50:]) / 50:.4f} ({time.perf_counter() - started:.0f} s)")
    seconds = earlier_seconds + time.perf_counter() - started
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "seconds": seconds},
               state_path)
    record = {"settings": asdict(settings), "steps": step, "train_seconds": round(seconds, 1),
              "final_loss": round(sum(losses[-100:]) / max(1, len(losses[-100:])), 4)}
    return model.eval().requires_grad_(False), record


def layout_loss(unet: torch.nn.Module, states: torch.Tensor, latents: torch.Tensor, generator: torch.Generator,
                alphas: torch.Tensor, min_timestep: int) -> torch.Tensor:
    """The error of the x0 the epsilon prediction implies, at timesteps drawn from [min_timestep, 999].

    Epsilon MSE hardly depends on where a shape is at high noise (x_t is almost all noise, so predicting the
    noise is easy either way); the implied x0 error, epsilon MSE times (1 - abar) / abar (capped at 50),
    is what a misplaced shape costs."""
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(min_timestep, alphas.shape[0], (latents.shape[0],), generator=generator)
    alpha_bar = alphas[timesteps].float().view(-1, 1, 1, 1)
    noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
    prediction = unet(noisy, timesteps, encoder_hidden_states=states).sample.float()
    weight = ((1 - alpha_bar) / alpha_bar).clamp(max=50.0).view(-1)
    return (weight * ((prediction - noise) ** 2).mean(dim=(1, 2, 3))).mean()


def ldm_state_dict(model: GligenModel, unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under ComfyUI's original-layout names (`input_blocks.N.1.transformer_blocks.0.fuser.*`)."""
    state = model.state_dict_in_layout()
    fusers = [key for key in state if ".fuser." in key]
    rules = {rule.target: rule.source for rule in unet_rules(fusers, unet.config)}
    return {rules.get(key, key): value.detach().half().contiguous() for key, value in state.items()}


# -- evaluation -------------------------------------------------------------------------------------------

BOX = 56
"""Evaluation boxes: 56 x 56 px (a shape of any size fits) in one of the four corners of the 128 px image."""
CORNERS = ((8, 8), (64, 8), (8, 64), (64, 64))


def box_hit(image, box: tuple[int, int, int, int]) -> bool:
    """Whether the drawn shape's centroid (the shapes classifier's foreground mask) lies in the (x, y, w, h) box."""
    import numpy as np

    from training.adapter_eval import shape_mask

    mask = shape_mask(image)
    if not mask.any():
        return False
    rows, cols = np.nonzero(mask)
    x, y, w, h = box
    return bool(x <= cols.mean() < x + w and y <= rows.mean() < y + h)


def box_hit_rates(engine, trials: int, *, steps: int = 20, seed: int = 0) -> dict[str, float]:
    """Hit rates of the gligen_boxes workflow (4 images per trial) with and without its text box.

    Each trial draws a seen (shape, colours) combination and a corner; the prompt names no position, the box
    names the shape ("a red circle"); "without" runs the same prompt and seeds through the txt2img workflow.
    """
    from nodes.sd.shapes import training_combinations
    from training.adapter_eval import images, workflow

    rng = random.Random(seed)
    combos = training_combinations()
    hits = {"with": 0, "without": 0}
    total = 0
    for trial in range(trials):
        shape, fg, bg = rng.choice(combos)
        x, y = CORNERS[trial % len(CORNERS)]
        prompt = f"a {fg} {shape} on a {bg} background"
        grounded = workflow(engine, "gligen_boxes").with_widget("6", "text", prompt)
        for name, value in (("text", f"a {fg} {shape}"), ("x", x), ("y", y), ("width", BOX), ("height", BOX)):
            grounded = grounded.with_widget("11", name, value)
        plain = workflow(engine, "txt2img").with_widget("6", "text", prompt)
        for key, graph in (("with", grounded), ("without", plain)):
            graph = graph.with_widget("3", "seed", seed * 1000 + trial).with_widget("3", "steps", steps)
            found = images(engine, graph)
            hits[key] += sum(box_hit(image, (x, y, BOX, BOX)) for image in found)
        total += len(found)
    return {"images": total, "hit_rate_with_gligen": round(hits["with"] / total, 3),
            "hit_rate_without": round(hits["without"] / total, 3)}
