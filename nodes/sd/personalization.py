"""Teaching a model a new concept from a few images: textual inversion, DreamBooth and Custom Diffusion.

All three minimise the same epsilon-prediction loss on the concept's few latents; they differ in what
they let change and in what they save:

- Textual inversion (Gal et al. 2022, "An Image is Worth One Word", arXiv:2208.01618): only a few new
  token vectors, written where the concept's word stands in the captions; model and text encoder frozen.
  Saved as an A1111/ComfyUI embedding (`emb_params`), so `embedding:name` in any prompt uses it.
- DreamBooth (Ruiz et al. 2023, arXiv:2208.12242): the whole UNet, with a prior-preservation loss on
  class images the base model drew itself, so prompts about other things keep working. Saved as a
  checkpoint.
- LoRA with prior preservation (DreamBooth-LoRA, as diffusers' train_dreambooth_lora.py): low-rank updates of
  the UNet's transformer layers (Hu et al. 2021) trained with DreamBooth's class-image term. Saved in kohya's
  layout, which LoraLoader reads.
- Custom Diffusion (Kumari et al. 2023, "Multi-Concept Customization of Text-to-Image Diffusion",
  arXiv:2212.04488): only the cross-attention key and value projections (the part of the UNet that reads
  the text) plus a modifier token's vector, with the same prior preservation. Saved as a weight-difference
  patch (`.diff` keys, which LoraLoader reads) and an embedding for the modifier token.

Each method is an `Objective`: its trainable parameters and a `loss(generator)` computing one step's
loss from a seeded generator, so a loop can resume it exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from nodes.sd.finetune import noise_loss, unet_with
from nodes.sd.finetune.lora_layers import create_lora_layers, overrides as lora_overrides
from nodes.sd.loading.keymap import unet_rules
from nodes.sd.tokenizer import SDTokenizer
from nodes.sd.types import ClipHandle, ModelHandle

PLACEHOLDER_ID = 0
"""Token id under a learned vector (any id but end-of-text; the vector replaces its embedding)."""
PRIORS = ("images", "distill")
"""Prior-preservation modes (Objective.prior)."""
CROSS_ATTENTION_KV = (".attn2.to_k.weight", ".attn2.to_v.weight")
"""The weights Custom Diffusion trains: the cross-attention projections of the text states."""


def word_vectors(clip: ClipHandle, word: str, count: int) -> torch.Tensor:
    """`count` vectors to start from: the token rows of `word`, repeated or cut to `count`."""
    encoder = clip.encoders[0]
    table = getattr(encoder, "text_model", encoder).embeddings.token_embedding.weight
    ids = clip.tokenizers[0].word_ids(word) if word.strip() else []
    if not ids:
        raise ValueError(f"init word {word!r} has no tokens; give a word such as 'circle'")
    rows = table[torch.tensor(ids)].detach().float()
    return rows[torch.arange(count) % rows.shape[0]]


def caption_windows(tokenizer: SDTokenizer, captions: Sequence[str], token: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, 77] ids, [B, 77] vector index or -1) of one-window captions in which each whitespace-separated
    `token` stands for `count` learned vectors (the rest tokenized as `nodes.sd.text` does)."""
    ids, slots = [], []
    for text in captions:
        row, row_slots = [tokenizer.bos_token_id], [-1]
        for word in text.split():
            if token and word == token:
                row += [PLACEHOLDER_ID] * count
                row_slots += list(range(count))
            else:
                word_ids = tokenizer.word_ids(word)
                row += word_ids
                row_slots += [-1] * len(word_ids)
        row.append(tokenizer.eos_token_id)
        if len(row) > tokenizer.max_length:
            raise ValueError(f"caption {text!r} is longer than one {tokenizer.max_length}-token window")
        ids.append(tokenizer.window(row))
        row_slots += [-1] * (tokenizer.max_length - len(row_slots))
        slots.append(row_slots)
    return torch.tensor(ids), torch.tensor(slots)


def encode_captions(
    clip: ClipHandle, encoder: torch.nn.Module, captions: Sequence[str], token: str = "", vectors: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, 77, d] text states of captions, as `nodes.sd.text.encode` gives them for an SD1 CLIP (same layer,
    final norm), with `vectors` in place of `token`; differentiable in the vectors and the encoder.

    Args:
        clip: the handle (tokenizer, layer choice); `encoder` is the module to run (a trainable copy, or the
            handle's own).
        token: the caption word the vectors replace ('' for none).
    """
    if clip.family != "sd1":
        raise ValueError(f"personalization trains SD1-family models; this CLIP is {clip.family}")
    count = 0 if vectors is None else vectors.shape[0]
    ids, slots = caption_windows(clip.tokenizers[0], captions, token if count else "", count)
    model = getattr(encoder, "text_model", encoder)
    device = next(encoder.parameters()).device
    ids, slots = ids.to(device), slots.to(device)

    def insert(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        if vectors is None or not (slots >= 0).any():
            return output
        chosen = vectors.to(output)[slots.clamp(min=0)]
        return torch.where((slots >= 0)[..., None], chosen, output)

    hook = model.embeddings.token_embedding.register_forward_hook(insert)
    try:
        out = encoder(input_ids=ids, output_hidden_states=True)
    finally:
        hook.remove()
    return model.final_layer_norm(out.hidden_states[clip.layer_idx]).float()


@dataclass(frozen=True)
class ConceptData:
    """The concept's latents with captions, and (for prior preservation) class latents with theirs."""

    latents: torch.Tensor
    captions: tuple[str, ...]
    class_latents: torch.Tensor | None = None
    class_captions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.captions) != self.latents.shape[0]:
            raise ValueError(f"{self.latents.shape[0]} latents but {len(self.captions)} captions")
        if self.class_latents is not None and len(self.class_captions) != self.class_latents.shape[0]:
            raise ValueError(f"{self.class_latents.shape[0]} class latents but {len(self.class_captions)} class captions")

    def class_batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        rows = torch.randint(0, self.class_latents.shape[0], (size,), generator=generator).tolist()
        return self.class_latents[rows], [self.class_captions[r] for r in rows]


@dataclass
class Objective:
    """One method's trainable tensors (`params`, leaves named `unet.<weight>`, `lora.<module>.lora_down|up` or
    `vectors`) and its loss.

    `step_fn(index, generator)` is the fine-tuning core's step function (`nodes.sd.finetune.train`): every
    image of the concept each step, plus as many class images (drawn by the generator) weighted by
    `prior_weight`. The cached UNet and text encoder are only read (`unet_with` and detached weights).
    """

    method: str
    model: ModelHandle
    clip: ClipHandle
    data: ConceptData
    params: dict[str, torch.Tensor]
    token: str = ""
    prior_weight: float = 0.0
    lora_alpha: float = 0.0
    class_per_step: int = 0
    """Class images in each step's batch (0: as many as the concept has)."""
    prior: str = "images"
    """How the class images keep the prior: "images" (DreamBooth: the noise-prediction loss on them) or "distill"
    (the same noisy class latents regress on the base model's prediction)."""

    def __post_init__(self) -> None:
        if self.prior not in PRIORS:
            raise ValueError(f"{self.method}: prior {self.prior!r} is not one of {', '.join(PRIORS)}")

    @property
    def vectors(self) -> torch.Tensor | None:
        return self.params.get("vectors")

    def unet_overrides(self) -> dict[str, torch.Tensor]:
        """The trained UNet weights (`unet.<name>`, and W + up @ down of LoRA layers), by UNet parameter name."""
        weights = {name.removeprefix("unet."): value for name, value in self.params.items() if name.startswith("unet.")}
        layers = self.lora_layers()
        if layers:
            weights.update(lora_overrides(self.model.unet, layers, self.lora_alpha))
        return weights

    def lora_layers(self) -> dict[str, torch.Tensor]:
        """The LoRA layers by module name (`<module>.lora_down|up`), as `lora_layers.to_kohya` saves them."""
        return {name.removeprefix("lora."): value for name, value in self.params.items() if name.startswith("lora.")}

    def encode(self, captions: Sequence[str], with_vectors: bool = True) -> torch.Tensor:
        """Captions' text states through the loaded encoder (frozen by the loader: gradients reach only the
        vectors)."""
        vectors = self.vectors if with_vectors else None
        token = self.token if vectors is not None else ""
        return encode_captions(self.clip, self.clip.encoders[0], captions, token, vectors)

    def step_fn(self, index: int, generator: torch.Generator) -> torch.Tensor:
        data = self.data
        latents, states = data.latents.float(), self.encode(data.captions)
        weights = torch.ones(latents.shape[0])
        concept_count = latents.shape[0]
        if data.class_latents is not None and self.prior_weight > 0:
            class_latents, class_captions = data.class_batch(self.class_per_step or latents.shape[0], generator)
            with torch.no_grad():
                class_states = self.encode(class_captions, with_vectors=False)
            latents = torch.cat([latents, class_latents.float()])
            states = torch.cat([states, class_states])
            weights = torch.cat([weights, torch.full((class_latents.shape[0],), self.prior_weight)])
        unet = unet_with(self.model.unet, self.unet_overrides())
        teacher = None
        if self.prior == "distill" and latents.shape[0] > concept_count:
            teacher = (unet_with(self.model.unet), torch.arange(latents.shape[0]) >= concept_count)
        return noise_loss(unet, latents, states, self.model.alphas_cumprod, generator,
                          prediction=self.model.prediction, weights=weights, teacher=teacher)  # fmt: skip


def _unet_params(model: ModelHandle, suffixes: tuple[str, ...] | None) -> dict[str, torch.Tensor]:
    """Trainable float32 copies of the UNet weights ending in `suffixes` (None: every parameter)."""
    return {f"unet.{name}": value.detach().float().clone().requires_grad_(True)
            for name, value in model.unet.named_parameters() if suffixes is None or name.endswith(suffixes)}  # fmt: skip


def textual_inversion(model: ModelHandle, clip: ClipHandle, data: ConceptData, token: str, init_word: str,
                      num_vectors: int) -> Objective:  # fmt: skip
    """Only new vectors for `token` train (Gal et al. 2022); UNet and text encoder stay frozen."""
    vectors = word_vectors(clip, init_word, num_vectors).clone().requires_grad_(True)
    return Objective("textual_inversion", model, clip, replace(data, class_latents=None, class_captions=()),
                     {"vectors": vectors}, token=token)  # fmt: skip


def dreambooth(model: ModelHandle, clip: ClipHandle, data: ConceptData, prior_weight: float, prior: str = "images") -> Objective:
    """The whole UNet trains, with prior preservation on the class data (Ruiz et al. 2023)."""
    return Objective("dreambooth", model, clip, data, _unet_params(model, None), prior_weight=prior_weight, prior=prior)


def lora(model: ModelHandle, clip: ClipHandle, data: ConceptData, rank: int, prior_weight: float, seed: int = 0,
         prior: str = "images") -> Objective:
    """Rank-`rank` LoRA layers on the UNet's transformer layers (alpha = rank), with DreamBooth's prior term."""
    layers = create_lora_layers(model.unet, rank, torch.Generator().manual_seed(seed))
    params = {f"lora.{name}": value.float() for name, value in layers.items()}
    return Objective("lora", model, clip, data, params, prior_weight=prior_weight, lora_alpha=float(rank), prior=prior)


def custom_diffusion(model: ModelHandle, clip: ClipHandle, data: ConceptData, token: str, init_word: str,
                     prior_weight: float, prior: str = "images") -> Objective:  # fmt: skip
    """Cross-attention K/V and one modifier-token vector train (Kumari et al. 2023)."""
    params = _unet_params(model, CROSS_ATTENTION_KV)
    params["vectors"] = word_vectors(clip, init_word, 1).clone().requires_grad_(True)
    return Objective("custom_diffusion", model, clip, data, params, token=token, prior_weight=prior_weight, prior=prior)


# -- saving ------------------------------------------------------------------------------------------


def save_embedding(path: str | Path, vectors: torch.Tensor, *, token: str = "") -> Path:
    """An A1111/ComfyUI embedding file: {'emb_params': [n, width]} (what `embedding:name` loads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"nodegraph_method": "textual_inversion", "token": token}
    save_file({"emb_params": vectors.detach().float().cpu().contiguous()}, str(path), metadata=metadata)
    return path


def weight_difference(unet: torch.nn.Module, trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`diffusion_model.<LDM name>.diff` = trained - original for each trained UNet weight: the
    full-weight-difference layout ComfyUI's LoraSave writes and LoraLoader applies (strength x diff)."""
    names = [name for name, _ in unet.named_parameters()]
    ldm = {rule.target: rule.source for rule in unet_rules(names, unet.config)}
    current = dict(unet.named_parameters())
    out = {}
    for name, value in trained.items():
        key = "diffusion_model." + ldm.get(name, name).removesuffix(".weight") + ".diff"
        out[key] = (value.detach().float() - current[name].detach().float()).cpu().contiguous()
    return out


def save_weight_patch(path: str | Path, unet: torch.nn.Module, trained: dict[str, torch.Tensor], method: str) -> Path:
    """Trained UNet weights as a `.diff` LoRA file (LoraLoaderModelOnly applies it to the same base)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weight_difference(unet, trained), str(path), metadata={"nodegraph_method": method})
    return path


def tuned_model(model: ModelHandle, trained: dict[str, torch.Tensor]) -> ModelHandle:
    """A new MODEL handle whose UNet is a copy with the trained weights (in the model's dtype); the cached
    module and the original handle are untouched."""
    module = copy.deepcopy(model.unet)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name in trained:
                parameter.copy_(trained[name])
    module.requires_grad_(False).eval()
    return replace(model, unet_ref=module, source=f"{model.source} (fine-tuned)")
