"""A tiny GLIGEN for the embedded model: a named shape is drawn inside a box (Li et al. 2023, arXiv:2301.07093).

The shipped UNet and text encoder stay frozen; a position net and gated self-attention fusers learn from the
shapes generator's own ground truth: each picture's box is the square around its shape (centre +- radius), its
phrase "a <fg> <shape>", and the caption leaves out the position words, so only the box can say where the shape
goes. Fusers sit in five of the seven transformer blocks (the 8 x 8 and 4 x 4 down blocks, the middle and the
8 x 8 up blocks), which keeps the file at 3.5 MB; the loader maps fusers by block name, so a file with fewer
fusers loads in the same way. Two changes to the paper's recipe make it learn in minutes (GligenSettings): the
fusers' output layers start at zero behind open gates, and a box-attention loss teaches each fuser's visual
tokens inside the box to attend to the box's grounding token. The model card has the measurements.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from nodes.sd.gligen import MAX_OBJECTS, GligenModel, fuser_placement, fusers_hooked, transformer_blocks
from nodes.sd.loading.keymap import unet_rules
from nodes.sd.shapes import ShapeSpec
from training import data
from training.adapters import base_modules, caption_tokens, encode_items
from training.unet import alphas_cumprod

GLIGEN_STREAM = 8
HELD_ROWS = 64
"""Pictures after the training set, for the right-vs-shuffled-boxes loss (`box_loss_gap`)."""


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
    min_timestep: int = 800
    """Train at t in [min_timestep, 999] only: where the layout of a picture is decided. Below t ~ 700 the
    noisy latent already shows where the shape is, and fusers trained there (400-999) learned to use the box
    to confirm a shape they could see, not to put one where there was none: from pure noise their images
    did not move."""
    initial_gate: float = 0.5
    """alpha_attn / alpha_dense at the start. The paper starts them at 0; here the gates start open and the
    fusers' output layers start at zero instead (`zero_out`), so the UNet is still unchanged at step 0."""
    zero_out: bool = True
    """Start each fuser's attention output and feed-forward output projection at zero (ControlNet's zero
    convolutions). With random outputs behind open gates the fusers only add noise at first, and the quickest
    way down the loss is to close the gates, after which almost no gradient reaches the attention: what the
    first shipped file did (gates 0.3 -> |tanh| 0.01-0.1, box hit rate at chance)."""
    high_t_fraction: float = 1.0
    """Share of each batch drawn from [min_timestep, 999]; the rest from all of [0, 999]. The second phase of
    the shipped recipe (a resumed run) mixes in low t: fusers trained at t >= 800 only also act at the last,
    low-noise steps of a sampling run (ComfyUI applies GLIGEN over the whole schedule) and there, untrained,
    they tore the shape into coloured blobs."""
    attention_weight: float = 0.5
    """Weight of the box-attention loss (`box_attention_loss`) beside the diffusion loss; 0 turns it off."""
    attention_target: float = 0.5
    """How much of a visual token's attention inside the box should go to the box's grounding token."""
    blocks: str = "down_blocks,mid_block,up_blocks.1"
    """Which transformer blocks get a fuser: diffusers name prefixes. Here the 8 x 8 and 4 x 4 blocks of the
    down path and the middle, and the 8 x 8 up blocks, the last attention before the output."""


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
    short = {"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}
    prefixes = tuple(short.get(p, p) + ("" if p in short else ".") for p in blocks.split(","))
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
        for fuser in model.fusers if settings.zero_out else ():
            for layer in (fuser.attn.to_out[0], fuser.ff.net[2]):
                layer.weight.zero_()
                layer.bias.zero_()
    gates = [p for n, p in model.named_parameters() if n.endswith(("alpha_attn", "alpha_dense"))]
    rest = [p for n, p in model.named_parameters() if not n.endswith(("alpha_attn", "alpha_dense"))]
    optimizer = torch.optim.AdamW([{"params": rest}, {"params": gates, "weight_decay": 0.0}], lr=settings.lr,
                                  betas=(0.9, 0.99), weight_decay=0.01)  # decay would pull the gates shut
    alphas = alphas_cumprod()
    state_path, step, earlier_seconds, history = work_dir / "gligen_state.pt", 0, 0.0, []
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, earlier_seconds = int(state["step"]), float(state["seconds"])
        history = list(json.loads(state.get("history", "[]")))
    rng = random.Random(settings.seed * 7919 + step)
    started, losses, attention_losses = time.perf_counter(), [], []
    first_step = step
    while step - first_step < settings.max_steps and time.perf_counter() - started < settings.seconds:
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + step)
        rows = [rng.randrange(len(specs)) for _ in range(settings.batch_size)]
        captions = ["" if rng.random() < settings.caption_dropout else plain_caption(specs[r]) for r in rows]
        with torch.no_grad():
            states = text_encoder(caption_tokens(captions, "cpu")).last_hidden_state
            phrases = text_encoder(caption_tokens([phrase(specs[r]) for r in rows], "cpu")).pooler_output
        objs = _tokens(model, [spec_box(specs[r]) for r in rows], phrases)
        boxes = [spec_box(specs[r]) for r in rows]
        with grounding_attention(unet, model, objs) as maps, fusers_hooked(unet, model, objs):
            loss = layout_loss(unet, states, latents[rows], generator, alphas, settings.min_timestep,
                               settings.high_t_fraction)
        attention = box_attention_loss(maps, boxes, settings.attention_target)
        optimizer.zero_grad(set_to_none=True)
        (loss + settings.attention_weight * attention).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        attention_losses.append(float(attention.detach()))
        step += 1
        if step % 50 == 0:
            log(f"step {step} loss {sum(losses[-50:]) / 50:.4f} attention {sum(attention_losses[-50:]) / 50:.4f} "
                f"({time.perf_counter() - started:.0f} s)")
    seconds = earlier_seconds + time.perf_counter() - started
    history.append({"settings": asdict(settings), "steps": step - first_step,
                    "seconds": round(seconds - earlier_seconds, 1)})
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "seconds": seconds,
                "history": json.dumps(history)}, state_path)
    model.eval().requires_grad_(False)
    held = data.stream_specs(settings.seed, GLIGEN_STREAM, settings.dataset_size, HELD_ROWS)
    held_cache = work_dir / f"gligen_latents_held_{settings.dataset_size}_{HELD_ROWS}.safetensors"
    encode_items([(spec, False) for spec in held], vae, held_cache, settings.resolution, progress=False)
    gates = {name: round(float(p.tanh()), 3) for name, p in model.named_parameters() if "alpha" in name}
    record = {"settings": asdict(settings), "steps": step, "train_seconds": round(seconds, 1),
              "final_loss": round(sum(losses[-100:]) / max(1, len(losses[-100:])), 4),
              "final_attention_loss": round(sum(attention_losses[-100:]) / max(1, len(attention_losses[-100:])), 4),
              **box_loss_gap(model, unet, text_encoder, held, load_file(str(held_cache))["latents"]),
              "gates_tanh": gates, "phases": history}
    return model, record


@contextmanager
def grounding_attention(unet: torch.nn.Module, model: GligenModel, objs: torch.Tensor) -> Iterator[list[torch.Tensor]]:
    """Collect, for the UNet calls made inside, each fuser's attention from the visual tokens to grounding slot 0:
    [B, N] per fuser, averaged over heads. Enter it before `fusers_hooked`, so its hook sees attn1's own output."""
    maps: list[torch.Tensor] = []
    handles = []
    try:
        for block, fuser in fuser_placement(unet, model):
            seen: dict[str, torch.Tensor] = {}

            def keep_input(_module: Any, args: tuple, kwargs: dict, seen: dict = seen) -> None:
                seen["x"] = args[0] if args else kwargs["hidden_states"]

            def record(_module: Any, _args: Any, output: torch.Tensor, seen: dict = seen, fuser: Any = fuser,
                       heads: int = int(block.attn1.heads)) -> None:
                hidden = seen["x"] + output
                n_visual, batch = hidden.shape[1], hidden.shape[0]
                joint = fuser.norm1(torch.cat([hidden, fuser.linear(objs)], dim=1))
                q = fuser.attn.to_q(joint[:, :n_visual]).view(batch, n_visual, heads, -1).transpose(1, 2)
                k = fuser.attn.to_k(joint).view(batch, joint.shape[1], heads, -1).transpose(1, 2)
                weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
                maps.append(weights[..., n_visual].mean(dim=1))

            handles.append(block.register_forward_pre_hook(keep_input, with_kwargs=True))
            handles.append(block.attn1.register_forward_hook(record))
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def box_coverage(boxes: list[tuple[float, ...]], side: int) -> torch.Tensor:
    """[B, side * side]: how much of each token's cell (row-major, y down) each (x1, y1, x2, y2) box covers."""
    edges = torch.arange(side + 1, dtype=torch.float32) / side
    lo, hi = edges[:-1], edges[1:]
    out = []
    for x1, y1, x2, y2 in boxes:
        cover_x = ((torch.minimum(hi, torch.tensor(x2)) - torch.maximum(lo, torch.tensor(x1))) * side).clamp(0, 1)
        cover_y = ((torch.minimum(hi, torch.tensor(y2)) - torch.maximum(lo, torch.tensor(y1))) * side).clamp(0, 1)
        out.append((cover_y[:, None] * cover_x[None, :]).reshape(-1))
    return torch.stack(out)


def box_attention_loss(maps: list[torch.Tensor], boxes: list[tuple[float, ...]], target: float) -> torch.Tensor:
    """Binary cross-entropy between each fuser's attention to the grounding token and `target` x the box's
    coverage of the token: tokens in the box should look at the phrase in the box, the others should not.

    This supervises the attention maps with the boxes, as TokenCompose (Wang et al. 2024, arXiv:2312.03626)
    does for cross-attention with masks. Without it the fusers have to find where each visual token is from
    the diffusion loss alone, which a few thousand steps did not do: trained that way, the loss with each
    picture's own box equalled the loss with shuffled boxes (`box_loss_gap`), though a linear probe reads the
    token's position from the frozen UNet's features (R^2 0.75-0.96 at t 650-950).
    """
    losses = []
    for attention in maps:
        side = int(round(attention.shape[1] ** 0.5))
        wanted = box_coverage(boxes, side).to(attention) * target
        losses.append(torch.nn.functional.binary_cross_entropy(attention.clamp(1e-6, 1 - 1e-6), wanted))
    return torch.stack(losses).mean()


@torch.no_grad()
def box_loss_gap(model: GligenModel, unet: torch.nn.Module, text_encoder: torch.nn.Module, specs: list[ShapeSpec],
                 latents: torch.Tensor, *, low: int = 600, seed: int = 1) -> dict[str, float]:
    """The x0-weighted loss (`layout_loss`) at t in [low, 999] with each picture's own box, with the boxes
    shuffled among the pictures, and without GLIGEN: the box is used only if "right" is clearly below
    "shuffled" (same noise, timesteps, captions and phrases in all three)."""
    rows = len(specs)
    states = text_encoder(caption_tokens([plain_caption(s) for s in specs], "cpu")).last_hidden_state
    phrases = text_encoder(caption_tokens([phrase(s) for s in specs], "cpu")).pooler_output
    right = [spec_box(s) for s in specs]
    order = list(range(rows))
    random.Random(seed).shuffle(order)
    alphas, out = alphas_cumprod(), {}
    for name, chosen in (("right", right), ("shuffled", [right[i] for i in order]), ("none", None)):
        generator = torch.Generator().manual_seed(seed)
        if chosen is None:
            out[name] = float(layout_loss(unet, states, latents, generator, alphas, low))
            continue
        with fusers_hooked(unet, model, _tokens(model, chosen, phrases)):
            out[name] = float(layout_loss(unet, states, latents, generator, alphas, low))
    return {f"loss_{k}_boxes": round(v, 5) for k, v in out.items()}


def _tokens(model: GligenModel, boxes: list[tuple[float, ...]], phrases: torch.Tensor) -> torch.Tensor:
    """Grounding tokens for one box per row (slot 0; the other 29 slots empty)."""
    rows = len(boxes)
    box_tensor, masks = torch.zeros(rows, MAX_OBJECTS, 4), torch.zeros(rows, MAX_OBJECTS)
    embeds = torch.zeros(rows, MAX_OBJECTS, phrases.shape[-1])
    box_tensor[:, 0], masks[:, 0], embeds[:, 0] = torch.tensor(boxes), 1.0, phrases
    return model.grounding_tokens(box_tensor, masks, embeds)


def layout_loss(unet: torch.nn.Module, states: torch.Tensor, latents: torch.Tensor, generator: torch.Generator,
                alphas: torch.Tensor, min_timestep: int, high_t_fraction: float = 1.0) -> torch.Tensor:
    """The error of the x0 the epsilon prediction implies, at timesteps drawn from [min_timestep, 999] (a
    `high_t_fraction` share of the rows; the others from [0, 999]).

    Epsilon MSE hardly depends on where a shape is at high noise (x_t is almost all noise, so predicting the
    noise is easy either way); the implied x0 error, epsilon MSE times (1 - abar) / abar (clamped to 1..50),
    is what a misplaced shape costs. The floor of 1 keeps the plain epsilon loss at low noise."""
    noise = torch.randn(latents.shape, generator=generator)
    rows = latents.shape[0]
    timesteps = torch.randint(min_timestep, alphas.shape[0], (rows,), generator=generator)
    if high_t_fraction < 1.0:
        anywhere = torch.randint(0, alphas.shape[0], (rows,), generator=generator)
        timesteps = torch.where(torch.rand(rows, generator=generator) < high_t_fraction, timesteps, anywhere)
    alpha_bar = alphas[timesteps].float().view(-1, 1, 1, 1)
    noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
    prediction = unet(noisy, timesteps, encoder_hidden_states=states).sample.float()
    weight = ((1 - alpha_bar) / alpha_bar).clamp(min=1.0, max=50.0).view(-1)
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


def shape_centroid(image) -> tuple[float, float] | None:
    """(x, y) in pixels of the drawn shape's centroid (the shapes classifier's foreground mask); None if none."""
    import numpy as np

    from training.adapter_eval import shape_mask

    mask = shape_mask(image)
    if not mask.any():
        return None
    rows, cols = np.nonzero(mask)
    return float(cols.mean()), float(rows.mean())


def box_hit(image, box: tuple[int, int, int, int]) -> bool:
    """Whether the drawn shape's centroid lies in the (x, y, w, h) box (pixels; a picture without a shape misses)."""
    centre = shape_centroid(image)
    x, y, w, h = box
    return centre is not None and bool(x <= centre[0] < x + w and y <= centre[1] < y + h)


def grounded_graph(engine, prompt: str, text: str, box: tuple[int, int, int, int], seed: int, steps: int):
    """The gligen_boxes workflow asking for `text` in the (x, y, w, h) box, under `prompt`."""
    from training.adapter_eval import workflow

    graph = workflow(engine, "gligen_boxes").with_widget("6", "text", prompt)
    for name, value in zip(("text", "x", "y", "width", "height"), (text, *box)):
        graph = graph.with_widget("11", name, value)
    return graph.with_widget("3", "seed", seed).with_widget("3", "steps", steps)


def box_hit_rates(engine, trials: int, *, steps: int = 20, seed: int = 0) -> dict[str, float]:
    """Hit rates of the gligen_boxes workflow (4 images per trial) with and without its text box, and the mean
    distance (pixels) from the shape's centroid to the box's centre.

    Each trial draws a seen (shape, colours) combination and a corner; the prompt names no position, the box
    names the shape ("a red circle"); "without" runs the same prompt and seeds through the txt2img workflow.
    "named_shape": the shapes classifier reads the shape and colour the box names (a "named_shape_hit": that, in
    the box). Without position words the embedded model draws the shape near the centre, on the corner all four boxes
    share, so "without" hits about one time in four, and its distance is about 40 px.
    """
    from nodes.sd.shapes import training_combinations
    from nodes.sd.shapes_classifier import classify
    from training.adapter_eval import images, workflow

    rng = random.Random(seed)
    combos = training_combinations()
    hits, distances = {"with": 0, "without": 0}, {"with": [], "without": []}
    named, named_hits = {"with": 0, "without": 0}, {"with": 0, "without": 0}
    total = 0
    for trial in range(trials):
        shape, fg, bg = rng.choice(combos)
        box = (*CORNERS[trial % len(CORNERS)], BOX, BOX)
        prompt = f"a {fg} {shape} on a {bg} background"
        grounded = grounded_graph(engine, prompt, f"a {fg} {shape}", box, seed * 1000 + trial, steps)
        plain = workflow(engine, "txt2img").with_widget("6", "text", prompt)
        plain = plain.with_widget("3", "seed", seed * 1000 + trial).with_widget("3", "steps", steps)
        for key, graph in (("with", grounded), ("without", plain)):
            found = images(engine, graph)
            hits[key] += sum(box_hit(image, box) for image in found)
            read = [classify(image) for image in found]
            named[key] += sum(c.shape == shape and c.fg == fg for c in read)
            named_hits[key] += sum(c.shape == shape and c.fg == fg and box_hit(i, box) for c, i in zip(read, found))
            for centre in filter(None, map(shape_centroid, found)):
                distances[key].append(math.dist(centre, (box[0] + BOX / 2, box[1] + BOX / 2)))
        total += len(found)
    mean = lambda v: round(sum(v) / max(1, len(v)), 1)  # noqa: E731
    return {"images": total, "hit_rate_with_gligen": round(hits["with"] / total, 3),
            "hit_rate_without": round(hits["without"] / total, 3),
            "distance_px_with_gligen": mean(distances["with"]), "distance_px_without": mean(distances["without"]),
            "named_shape_rate_with_gligen": round(named["with"] / total, 3),
            "named_shape_rate_without": round(named["without"] / total, 3),
            "named_shape_hit_rate_with_gligen": round(named_hits["with"] / total, 3),
            "named_shape_hit_rate_without": round(named_hits["without"] / total, 3)}
