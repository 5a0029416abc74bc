"""GLIGEN: boxes with phrases steer where things are drawn (Li et al. 2023, "GLIGEN: Open-Set Grounded
Text-to-Image Generation", arXiv:2301.07093).

A GLIGEN file adds two things to a frozen SD UNet:
- a position net (`position_net.*`): each box's phrase (its pooled, unprojected CLIP text embedding) and its
  Fourier-embedded corners (x1, y1, x2, y2 as fractions of the latent) go through three linears to one
  grounding token; up to 30 boxes, empty slots replaced by learned null features;
- a gated self-attention "fuser" per transformer block (`...transformer_blocks.N.fuser.*`): after the block's
  self-attention, the visual tokens attend over [visual tokens, grounding tokens] and the result is added
  through tanh-gates (then a gated GEGLU feed-forward), so a gate at zero leaves the UNet as it was.

Files come in the original LDM layout (`input_blocks.1.1.transformer_blocks.0.fuser.*`, what ComfyUI's
gligen folder holds) or in diffusers' layout (a UNet2DConditionModel with attention_type="gated":
`down_blocks.0.attentions.0.transformer_blocks.0.fuser.*`); the fuser and position-net tensors are named the
same in both, only the block prefix differs. The modules are diffusers' own (GatedSelfAttentionDense,
GLIGENTextBoundingboxProjection), so their keys load as they are.

Applying never touches the cached UNet's weights: the boxes travel with the conditioning
(`CondItem.extras["gligen"]`, a `GligenApplied`), and for the UNet calls of those entries only, hooks on the
transformer blocks add each fuser's output to the residual stream right after self-attention (where a gated
block runs its fuser) and are removed after the call. Entries without GLIGEN (the negative prompt) run the
plain UNet, as in ComfyUI; like ComfyUI the fusers act over the whole schedule unless `end_percent` says
otherwise (diffusers' pipeline stops them after 30 % of the steps: scheduled sampling, section 3.2).
Attention heads: those of the UNet block the fuser sits in (SD1: 8; SD2: 64-wide heads), as diffusers builds them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nodegraph.models import ModelManager, ModelRef, resolve
from nodes.sd.attention_patches import attention
from nodes.sd.loading.files import check_suffix, file_signature, read_weights
from nodes.sd.loading.keymap import unet_rules

MAX_OBJECTS = 30
"""Grounding tokens per entry (the paper's and both tools' limit); boxes past it are refused."""
_FUSER_KEY = re.compile(r"^(?:model\.diffusion_model\.)?(.+\.transformer_blocks\.\d+)\.fuser\.(.+)$")
_LDM_BLOCK = re.compile(r"^(input_blocks|middle_block|output_blocks)\.")


class GligenModel(torch.nn.Module):
    """A GLIGEN file's modules: the position net and the fusers, keyed by the file's block names."""

    def __init__(self, block_names: list[str], query_dims: list[int], text_dim: int, context_dim: int) -> None:
        from diffusers.models.attention import GatedSelfAttentionDense
        from diffusers.models.embeddings import GLIGENTextBoundingboxProjection

        super().__init__()
        self.block_names = list(block_names)
        self.layout = "ldm" if block_names and _LDM_BLOCK.match(block_names[0]) else "diffusers"
        self.position_net = GLIGENTextBoundingboxProjection(positive_len=text_dim, out_dim=context_dim)
        # heads here only size nothing (q/k/v are dim x dim); the UNet block's heads are used when applied
        self.fusers = torch.nn.ModuleList(GatedSelfAttentionDense(dim, context_dim, 1, dim) for dim in query_dims)

    @property
    def text_dim(self) -> int:
        return int(self.position_net.positive_len)

    def grounding_tokens(self, boxes: Tensor, masks: Tensor, phrases: Tensor) -> Tensor:
        """[B, 30, context_dim] tokens from boxes [B, 30, 4] (x1, y1, x2, y2 in 0..1), masks [B, 30], phrases [B, 30, d]."""
        return self.position_net(boxes=boxes, masks=masks, positive_embeddings=phrases)

    def state_dict_in_layout(self) -> dict[str, Tensor]:
        """The weights under the file's own key names (block prefix + `.fuser.`, and `position_net.`)."""
        out = {f"position_net.{k}": v for k, v in self.position_net.state_dict().items()}
        for name, fuser in zip(self.block_names, self.fusers):
            out.update({f"{name}.fuser.{k}": v for k, v in fuser.state_dict().items()})
        return out


def gligen_from_state_dict(weights: dict[str, Tensor], source: str = "GLIGEN") -> GligenModel:
    """Build a GligenModel from a file's tensors (LDM or diffusers layout; other UNet keys are ignored).

    Raises:
        ValueError: no position net or no fusers, or tensors that do not fit the shapes the file describes.
    """
    blocks: dict[str, dict[str, Tensor]] = {}
    for key, tensor in weights.items():
        found = _FUSER_KEY.match(key)
        if found:
            blocks.setdefault(found.group(1), {})[found.group(2)] = tensor
    position = {k.split("position_net.", 1)[1]: v for k, v in weights.items() if "position_net." in k}
    if "null_positive_feature" not in position or "linears.4.weight" not in position:
        raise ValueError(f"{source}: not a GLIGEN text-box model (no position_net.null_positive_feature / linears.4)")
    if not blocks:
        raise ValueError(f"{source}: a GLIGEN file needs gated self-attention layers (`...transformer_blocks.N.fuser.*`)")
    for name, tensors in blocks.items():
        if "linear.weight" not in tensors:
            raise ValueError(f"{source}: fuser of {name} has no linear.weight")
    names = sorted(blocks, key=_block_order)
    text_dim = int(position["null_positive_feature"].shape[0])
    context_dim = int(position["linears.4.weight"].shape[0])
    query_dims = [int(blocks[name]["linear.weight"].shape[0]) for name in names]
    model = GligenModel(names, query_dims, text_dim, context_dim)
    try:
        model.position_net.load_state_dict({k: v.float() for k, v in position.items()})
        for name, fuser in zip(names, model.fusers):
            fuser.load_state_dict({k: v.float() for k, v in blocks[name].items()})
    except RuntimeError as error:
        raise ValueError(f"{source}: GLIGEN weights do not fit their own shapes: {error}") from None
    return model.eval().requires_grad_(False)


def _block_order(name: str) -> tuple[Any, ...]:
    """UNet order: down/input blocks, then middle, then up/output blocks, by their numbers."""
    rank = {"input_blocks": 0, "down_blocks": 0, "middle_block": 1, "mid_block": 1, "output_blocks": 2, "up_blocks": 2}
    parts = name.split(".")
    return (rank.get(parts[0], 3), *(int(p) if p.isdigit() else 0 for p in parts[1:]))


@dataclass(frozen=True)
class GligenHandle:
    """GLIGEN: the model manager's ref to a GligenModel (or the module itself); shared, never mutated."""

    model_ref: ModelRef | torch.nn.Module
    source: str = ""

    @property
    def model(self) -> GligenModel:
        return resolve(self.model_ref)

    @property
    def nbytes(self) -> int:  # the manager counts a managed model; a bare module is counted here
        if isinstance(self.model_ref, ModelRef):
            return 0
        return sum(p.numel() * p.element_size() for p in self.model_ref.parameters())


def load_gligen(path: str | Path, *, manager: ModelManager | None = None) -> GligenHandle:
    """Load a GLIGEN file through the model manager (a private one when None), kept by file identity."""
    path = Path(path)
    check_suffix(path)
    manager = manager if manager is not None else ModelManager("cpu", ram_budget=sys.maxsize)

    def build(device: Any) -> GligenModel:
        return gligen_from_state_dict(read_weights(path)[0], path.name).to(device)

    ref = manager.ref((file_signature(path), "gligen"), build, name=f"GLIGEN {path.name}")
    ref.get()  # build now, so a broken file fails in its loader node
    return GligenHandle(ref, str(path))


# -- applying boxes while sampling --------------------------------------------------------------------------


@dataclass(frozen=True)
class GligenBox:
    """One phrase in one box, in latent pixels (ComfyUI's position params: image pixels // 8)."""

    phrase: Tensor
    """[d] the phrase's pooled, unprojected text embedding."""
    height: int
    width: int
    y: int
    x: int


@dataclass(frozen=True)
class GligenApplied:
    """The boxes on a conditioning entry and the GLIGEN model that grounds them (CondItem.extras["gligen"]).

    Implements cond_batch.RowKwargs: for the rows of its entries it adds the grounding tokens to the UNet
    call, and the UNet wrapper (`gligen_wrapper`) runs the fusers with them.
    """

    gligen: GligenHandle
    boxes: tuple[GligenBox, ...]
    end_percent: float = 1.0
    """The fusers act while the schedule is before this fraction (1: all of it, as ComfyUI; diffusers: 0.3)."""

    def tokens(self, rows: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Grounding tokens [rows, 30, context_dim] for a latent (or area) of height x width latent pixels."""
        if len(self.boxes) > MAX_OBJECTS:
            raise ValueError(f"GLIGEN grounds at most {MAX_OBJECTS} boxes per conditioning; this one has {len(self.boxes)}")
        model = self.gligen.model
        param = next(model.parameters())
        boxes = torch.zeros(1, MAX_OBJECTS, 4)
        masks = torch.zeros(1, MAX_OBJECTS)
        phrases = torch.zeros(1, MAX_OBJECTS, model.text_dim)
        for index, box in enumerate(self.boxes):
            if box.phrase.shape[-1] != model.text_dim:
                raise ValueError(f"GLIGEN expects {model.text_dim}-wide phrase embeddings; this CLIP gives "
                                 f"{box.phrase.shape[-1]} (use the CLIP of the model the GLIGEN file was made for)")
            boxes[0, index] = torch.tensor([box.x / width, box.y / height, (box.x + box.width) / width,
                                            (box.y + box.height) / height])
            masks[0, index] = 1.0
            phrases[0, index] = box.phrase.reshape(-1).float()
        with torch.no_grad():
            objs = model.grounding_tokens(boxes.to(param), masks.to(param), phrases.to(param))
        return objs.expand(rows, -1, -1).to(device, dtype)

    def unet_kwargs(self, model: Any, x: Tensor, sigma: Tensor, kwargs: dict[str, Any], entries: int) -> dict[str, Any]:
        """cond_batch.RowKwargs: the grounding tokens for these rows (none once the schedule passes end_percent)."""
        if self.end_percent < 1.0:
            from nodes.sd.controlnet import percent_to_sigma

            if float(sigma.reshape(-1)[0]) < percent_to_sigma(self.end_percent, model.sigmas):
                return {}
        ensure_gligen_wrapper(model)
        objs = self.tokens(x.shape[0], x.shape[-2], x.shape[-1], model.device, model.dtype)
        return {GLIGEN_KWARG: GroundingCall(self.gligen, objs)}


GLIGEN_KWARG = "gligen_grounding"
"""The UNet-call kwarg carrying a GroundingCall; the wrapper takes it out before the UNet sees the kwargs."""


@dataclass(frozen=True)
class GroundingCall:
    gligen: GligenHandle
    objs: Tensor


def ensure_gligen_wrapper(unet_denoiser: Any) -> None:
    """Add, once per run, the UNet wrapper that runs the fusers for calls that carry grounding tokens."""
    if getattr(unet_denoiser, "_gligen_wrapper", None) is not None:
        return

    def wrapper(call: Callable[..., Tensor], sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor:
        grounding = kwargs.get(GLIGEN_KWARG)
        if grounding is None:
            return call(sample, timestep, kwargs)
        rest = {key: value for key, value in kwargs.items() if key != GLIGEN_KWARG}
        with fusers_hooked(unet_denoiser.unet, grounding.gligen.model, grounding.objs):
            return call(sample, timestep, rest)

    unet_denoiser.wrappers.insert(0, wrapper)  # outermost: no other wrapper sees the extra kwarg
    unet_denoiser._gligen_wrapper = wrapper


def transformer_blocks(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The UNet's BasicTransformerBlocks by module name (`down_blocks.1.attentions.0.transformer_blocks.0`)."""
    return {name: module for name, module in unet.named_modules()
            if re.search(r"\.transformer_blocks\.\d+$", name) and hasattr(module, "attn1")}  # fmt: skip


def fuser_placement(unet: torch.nn.Module, gligen: GligenModel) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(transformer block, fuser) pairs: the file's block names translated to this UNet's modules.

    Raises:
        ValueError: a fuser names a block this UNet lacks, or its width differs from the block's.
    """
    unet = getattr(unet, "_orig_mod", unet)  # torch.compile's wrapper: the modules are the original's
    blocks = transformer_blocks(unet)
    if gligen.layout == "ldm":
        rules = unet_rules([f"{name}.norm1.weight" for name in blocks], unet.config)
        blocks = {rule.source.removesuffix(".norm1.weight"): blocks[rule.target.removesuffix(".norm1.weight")]
                  for rule in rules}
    pairs = []
    for name, fuser in zip(gligen.block_names, gligen.fusers):
        block = blocks.get(name)
        if block is None:
            raise ValueError(f"GLIGEN fuser {name!r} has no transformer block in this UNet: the file was made for "
                             f"another model (its blocks: {', '.join(list(blocks)[:4])}, ...)")
        if block.attn1.to_q.in_features != fuser.linear.out_features:
            raise ValueError(f"GLIGEN fuser {name!r} is {fuser.linear.out_features} wide; the UNet block is "
                             f"{block.attn1.to_q.in_features}")
        pairs.append((block, fuser))
    return pairs


def fuser_delta(fuser: torch.nn.Module, hidden: Tensor, objs: Tensor, heads: int) -> Tensor:
    """What a gated self-attention layer adds to the visual tokens `hidden` [B, N, dim] given grounding tokens.

    x1 = x + tanh(alpha_attn) * SelfAttn(LN([x, Linear(objs)]))[:N];  x2 = x1 + tanh(alpha_dense) * FF(LN(x1)).
    Returns x2 - x, computed as the sum of the two gated terms (no cancellation in half precision).
    """
    n_visual = hidden.shape[1]
    objs = fuser.linear(objs.to(hidden.dtype))
    joint = fuser.norm1(torch.cat([hidden, objs], dim=1))
    attn = fuser.attn
    mixed = attention(attn.to_q(joint), attn.to_k(joint), attn.to_v(joint), heads)
    first = fuser.alpha_attn.tanh() * attn.to_out[0](mixed)[:, :n_visual]
    second = fuser.alpha_dense.tanh() * fuser.ff(fuser.norm2(hidden + first))
    return first + second


@contextmanager
def fusers_hooked(unet: torch.nn.Module, gligen: GligenModel, objs: Tensor) -> Iterator[None]:
    """Run each fuser right after its block's self-attention for the calls made inside, then remove the hooks.

    A pre-hook keeps the block's input (the residual stream) and a hook on attn1 returns attn1's output
    plus the fuser's delta, so the block continues with fuser(x + attn1(x)) as a gated block does.
    """
    handles = []
    try:
        for block, fuser in fuser_placement(unet, gligen):
            seen: dict[str, Tensor] = {}

            def keep_input(_module: Any, args: tuple, kwargs: dict, seen: dict = seen) -> None:
                seen["x"] = args[0] if args else kwargs["hidden_states"]

            def add_fuser(_module: Any, _args: Any, output: Tensor, seen: dict = seen, fuser: Any = fuser,
                          heads: int = int(block.attn1.heads)) -> Tensor:
                hidden = seen["x"] + output
                return output + fuser_delta(fuser, hidden, objs.to(output.device), heads).to(output.dtype)

            handles.append(block.register_forward_pre_hook(keep_input, with_kwargs=True))
            handles.append(block.attn1.register_forward_hook(add_fuser))
        yield
    finally:
        for handle in handles:
            handle.remove()


# -- text ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def phrase_embedding(clip: Any, text: str) -> Tensor:
    """The phrase's pooled, unprojected CLIP embedding [d] (ComfyUI's return_pooled="unprojected"): the final
    layer-normed hidden state at the end token, of the last text encoder (SD1/SD2: the only one)."""
    from nodes.sd.text import _text_model, tokenize

    index = len(clip.encoders) - 1
    window = tokenize(clip, text)[index][0]
    model = _text_model(clip.encoders[index])
    device = next(model.parameters()).device
    ids = torch.tensor([[token.id for token in window]], device=device)
    return model(input_ids=ids).pooler_output[0].float().cpu()


def apply_textbox(conditioning: tuple, gligen: GligenHandle, phrase: Tensor, width: int, height: int, x: int,
                  y: int) -> tuple:
    """ComfyUI's GLIGENTextBoxApply: each entry gets one more box (image pixels, kept in latent pixels // 8)."""
    from dataclasses import replace

    box = GligenBox(phrase, height // 8, width // 8, y // 8, x // 8)
    out = []
    for item in conditioning:
        previous = item.extras.get("gligen")
        boxes = (*previous.boxes, box) if isinstance(previous, GligenApplied) else (box,)
        out.append(replace(item, extras={**item.extras, "gligen": GligenApplied(gligen, boxes)}))
    return tuple(out)


__all__ = ["MAX_OBJECTS", "GligenApplied", "GligenBox", "GligenHandle", "GligenModel", "apply_textbox",
           "fuser_delta", "fusers_hooked", "gligen_from_state_dict", "load_gligen", "phrase_embedding"]
