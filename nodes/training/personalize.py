"""Training nodes that teach a model a new concept from a few images: textual inversion, DreamBooth and
Custom Diffusion (ComfyUI has none of them; these are our contracts, in its "training" menu).

Each takes the concept's LATENT batch (VAEEncode of the images) and captions naming the concept by a word,
trains through the fine-tuning core (`nodes.sd.finetune.train`: seeded, progress per step, interruptible,
resumed from its state file when run again with the same settings) and gives back what a workflow uses next:

- TextualInversionTrain writes an embedding (`emb_params`) into the embeddings folder; the prompt word it
  returns (`embedding:<name>`) uses it in any CLIPTextEncode.
- DreamBoothTrain returns the fine-tuned MODEL (CheckpointSave writes it as a checkpoint).
- DreamBoothLoraTrain trains LoRA layers with DreamBooth's prior term, writes them into the loras folder (kohya
  layout, LoraLoader reads it) and returns the MODEL with them applied.
- CustomDiffusionTrain writes the K/V patch into the loras folder (LoraLoaderModelOnly applies it) and the
  modifier token as an embedding, and returns the patched MODEL and the prompt word.

The maths (and the papers) are in nodes/sd/personalization.py.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nodegraph import Combo, Float, Int, Node, NodeContext, NodeResult, NodeSchema, Out, Socket, String
from nodegraph.paths import atomic_write_bytes

from ..sd.types import ClipHandle, Latent, ModelHandle

CATEGORY = "training"
PREVIEWS = 20
"""Loss-curve previews per run (as TrainLoraNode shows them)."""
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


def _personalization():
    """nodes.sd.personalization, imported when a node first trains (it pulls in the loaders)."""
    from ..sd import personalization

    return personalization


def _caption_list(captions: str, count: int, token: str, where: str) -> tuple[str, ...]:
    """One caption per latent from the non-empty lines (repeated in turn when there are fewer lines)."""
    lines = [line.strip() for line in captions.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{where}: no captions; give one line per image (or one for all)")
    if token and not any(token in line.split() for line in lines):
        raise ValueError(f"{where}: no caption contains the token {token!r} as a word")
    return tuple(lines[i % len(lines)] for i in range(count))


def _name_problem(name: str, what: str) -> str | None:
    return None if _NAME.match(name) else f"{what} {name!r}: use letters, digits, '_' and '-' only"


def _folder(ctx: NodeContext, folder: str) -> Path:
    dirs = ctx.env.models.folder_dirs(folder) if ctx.env is not None else []
    if not dirs:
        raise ValueError(f"no {folder} folder is configured to save into")
    return Path(dirs[0])


def _state_path(ctx: NodeContext, method: str, name: str) -> Path:
    """Where a run keeps its resumable state (beside TrainLoraNode's, in the temp folder's `training/`)."""
    return Path(ctx.env.temp_dir) / "training" / f"{method}-{name}.safetensors"


def _data(latents: Latent, captions: tuple[str, ...], class_latents: Latent | None, class_captions: str, where: str):
    """The training data as ordinary tensors (copies made outside inference mode, so autograd may use them)."""
    P = _personalization()
    with torch.inference_mode(False):
        samples = latents.samples.float().clone()
        if class_latents is None:
            return P.ConceptData(samples, captions)
        count = class_latents.samples.shape[0]
        return P.ConceptData(samples, captions, class_latents.samples.float().clone(),
                             _caption_list(class_captions, count, "", f"{where} class_captions"))  # fmt: skip


def _train(ctx: NodeContext, objective: Any, *, steps: int, lr: float, seed: int, name: str,
           extra: dict[str, Any]) -> Any:  # fmt: skip
    """Run the fine-tuning core with the node's progress bar, interruption and resumable state.

    The state is keyed by the run's settings and a digest of its data, so a changed input starts afresh."""
    from ..sd.finetune import train
    from ..sd.finetune.plot import loss_graph

    digest = hashlib.sha256()
    for tensor in (objective.data.latents, objective.data.class_latents):
        if tensor is not None:
            digest.update(tensor.float().numpy().tobytes())
    settings = {"method": objective.method, "steps": steps, "lr": lr, "seed": seed, "token": objective.token,
                "captions": list(objective.data.captions), "class_captions": list(objective.data.class_captions),
                "prior_weight": objective.prior_weight, "data": digest.hexdigest(), **extra}  # fmt: skip
    history: list[float] = []
    every = max(1, steps // PREVIEWS)

    def report(done: int, total: int, loss: float) -> None:
        history.append(loss)
        ctx.progress(done, total, loss_graph(history) if done % every == 0 or done == total else None)

    with torch.inference_mode(False), torch.enable_grad():  # the engine runs nodes without autograd
        return train(objective.step_fn, objective.params, steps=steps, seed=seed, lr=lr, progress=report,
                     check_interrupted=ctx.check_interrupted, state_path=_state_path(ctx, objective.method, name),
                     save_every=every, settings=settings)  # fmt: skip


def _with_embeddings(clip: ClipHandle, folder: Path) -> ClipHandle:
    dirs = clip.embedding_dirs if str(folder) in clip.embedding_dirs else (*clip.embedding_dirs, str(folder))
    return replace(clip, embedding_dirs=dirs)


_COMMON = (
    Socket("model", "MODEL"), Socket("clip", "CLIP"),
    Socket("latents", "LATENT", tooltip="The concept's images, VAE-encoded (a batch of a few)."),
    String("captions", "a red heart on a blue background", multiline=True,
           tooltip="One caption per image (or one for all); the token word marks the concept."),
)  # fmt: skip
_PRIOR = (
    Float("prior_loss_weight", 1.0, min=0.0, max=10.0, step=0.1),
    Socket("class_latents", "LATENT", optional=True,
           tooltip="Prior preservation: latents the base model drew for prompts about other things."),
    String("class_captions", "", multiline=True, optional=True, tooltip="One caption per class latent (or one for all)."),
    Combo("prior", ("images", "distill"), "images", optional=True,
          tooltip="images: the class latents' noise-prediction loss (DreamBooth); distill: the noisy class latents "
                  "regress on the base model's own prediction (keeps other prompts' colours far better)."),
)  # fmt: skip


class TextualInversionTrain(Node):
    schema = NodeSchema(
        type_id="TextualInversionTrain", display_name="Train Textual Inversion", category=CATEGORY,
        description="Learns new token vectors for a concept (Gal et al. 2022) and saves them as an embedding; "
                    "the returned word (embedding:name) uses it in a prompt. Resumes from its saved state.",
        inputs=(*_COMMON, String("token", "heart"), String("init_word", "circle"),
                Int("num_vectors", 2, min=1, max=16), Int("steps", 300, min=1, max=100000),
                Float("learning_rate", 0.005, min=0.0, max=1.0, step=0.0001),
                Int("seed", 0, min=0, max=0xFFFFFFFFFFFFFFFF),
                String("embedding_name", "heart", check=lambda v, env: _name_problem(v, "embedding_name"))),
        outputs=(Out("CLIP"), Out("STRING", "prompt_word"), Out("INT", "steps")),
        output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, clip: ClipHandle, latents: Latent, captions: str,
                token: str, init_word: str, num_vectors: int, steps: int, learning_rate: float, seed: int,
                embedding_name: str) -> NodeResult:  # fmt: skip
        P = _personalization()
        texts = _caption_list(captions, latents.samples.shape[0], token, "TextualInversionTrain captions")
        objective = P.textual_inversion(model, clip, _data(latents, texts, None, "", ""), token, init_word, num_vectors)
        result = _train(ctx, objective, steps=steps, lr=learning_rate, seed=seed, name=embedding_name,
                        extra={"init_word": init_word, "num_vectors": num_vectors})  # fmt: skip
        folder = _folder(ctx, "embeddings")
        path = P.save_embedding(folder / f"{embedding_name}.safetensors", result.params["vectors"], token=token)
        ui = {"models": [{"filename": path.name, "subfolder": "", "type": "embeddings"}], "loss": result.losses[-1:]}
        return NodeResult(outputs=(_with_embeddings(clip, folder), f"embedding:{embedding_name}", result.step), ui=ui)


class DreamBoothTrain(Node):
    schema = NodeSchema(
        type_id="DreamBoothTrain", display_name="Train DreamBooth", category=CATEGORY,
        description="Fine-tunes the whole UNet on a concept's images with prior preservation on class images "
                    "(Ruiz et al. 2023); save the MODEL with CheckpointSave. Resumes from its saved state.",
        inputs=(*_COMMON, Int("steps", 250, min=1, max=100000),
                Float("learning_rate", 0.0001, min=0.0, max=1.0, step=0.00001),
                Int("seed", 0, min=0, max=0xFFFFFFFFFFFFFFFF),
                String("run_name", "dreambooth", check=lambda v, env: _name_problem(v, "run_name")), *_PRIOR),
        outputs=(Out("MODEL"), Out("INT", "steps")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, clip: ClipHandle, latents: Latent, captions: str,
                steps: int, learning_rate: float, seed: int, run_name: str, prior_loss_weight: float,
                class_latents: Latent | None = None, class_captions: str = "",
                prior: str = "images") -> tuple[ModelHandle, int]:  # fmt: skip
        P = _personalization()
        texts = _caption_list(captions, latents.samples.shape[0], "", "DreamBoothTrain captions")
        data = _data(latents, texts, class_latents, class_captions, "DreamBoothTrain")
        objective = P.dreambooth(model, clip, data, prior_loss_weight, prior)
        result = _train(ctx, objective, steps=steps, lr=learning_rate, seed=seed, name=run_name, extra={"prior": prior})
        trained = {name.removeprefix("unet."): value for name, value in result.params.items()}
        return P.tuned_model(model, trained), result.step


class DreamBoothLoraTrain(Node):
    schema = NodeSchema(
        type_id="DreamBoothLoraTrain", display_name="Train DreamBooth LoRA", category=CATEGORY,
        description="Trains LoRA layers on the UNet's transformer layers (Hu et al. 2021) with DreamBooth's prior "
                    "preservation; saves them into loras (kohya layout, LoraLoader reads it) and returns the MODEL "
                    "with them applied. Resumes from its saved state.",
        inputs=(*_COMMON, Int("rank", 4, min=1, max=128), Int("steps", 600, min=1, max=100000),
                Float("learning_rate", 0.001, min=0.0, max=1.0, step=0.0001),
                Int("seed", 0, min=0, max=0xFFFFFFFFFFFFFFFF),
                String("lora_name", "heart_lora", check=lambda v, env: _name_problem(v, "lora_name")), *_PRIOR),
        outputs=(Out("MODEL"), Out("INT", "steps")),
        output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, clip: ClipHandle, latents: Latent, captions: str,
                rank: int, steps: int, learning_rate: float, seed: int, lora_name: str, prior_loss_weight: float,
                class_latents: Latent | None = None, class_captions: str = "", prior: str = "images") -> NodeResult:  # fmt: skip
        from safetensors.torch import save

        from ..sd.finetune.lora_layers import to_kohya

        P = _personalization()
        texts = _caption_list(captions, latents.samples.shape[0], "", "DreamBoothLoraTrain captions")
        data = _data(latents, texts, class_latents, class_captions, "DreamBoothLoraTrain")
        objective = P.lora(model, clip, data, rank, prior_loss_weight, seed=seed, prior=prior)
        result = _train(ctx, objective, steps=steps, lr=learning_rate, seed=seed, name=lora_name,
                        extra={"rank": rank, "prior": prior})  # fmt: skip
        objective.params = result.params
        path = _folder(ctx, "loras") / f"{lora_name}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = to_kohya(objective.lora_layers(), objective.lora_alpha)
        atomic_write_bytes(path, save(tensors, metadata={"nodegraph_method": "dreambooth_lora"}))  # never half a file
        trained = {name: value.detach() for name, value in objective.unet_overrides().items()}
        ui = {"models": [{"filename": path.name, "subfolder": "", "type": "loras"}], "loss": result.losses[-1:]}
        return NodeResult(outputs=(P.tuned_model(model, trained), result.step), ui=ui)


class CustomDiffusionTrain(Node):
    schema = NodeSchema(
        type_id="CustomDiffusionTrain", display_name="Train Custom Diffusion", category=CATEGORY,
        description="Trains the cross-attention K/V weights and a modifier token (Kumari et al. 2023); saves the "
                    "K/V patch into loras (LoraLoaderModelOnly reads it) and the token as an embedding.",
        inputs=(*_COMMON, String("token", "heart"), String("init_word", "circle"),
                Int("steps", 300, min=1, max=100000), Float("learning_rate", 0.001, min=0.0, max=1.0, step=0.0001),
                Int("seed", 0, min=0, max=0xFFFFFFFFFFFFFFFF),
                String("name", "heart_cd", check=lambda v, env: _name_problem(v, "name")), *_PRIOR),
        outputs=(Out("MODEL"), Out("CLIP"), Out("STRING", "prompt_word"), Out("INT", "steps")),
        output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, clip: ClipHandle, latents: Latent, captions: str,
                token: str, init_word: str, steps: int, learning_rate: float, seed: int, name: str,
                prior_loss_weight: float, class_latents: Latent | None = None,
                class_captions: str = "", prior: str = "images") -> NodeResult:  # fmt: skip
        P = _personalization()
        texts = _caption_list(captions, latents.samples.shape[0], token, "CustomDiffusionTrain captions")
        data = _data(latents, texts, class_latents, class_captions, "CustomDiffusionTrain")
        objective = P.custom_diffusion(model, clip, data, token, init_word, prior_loss_weight, prior)
        result = _train(ctx, objective, steps=steps, lr=learning_rate, seed=seed, name=name,
                        extra={"init_word": init_word, "prior": prior})  # fmt: skip
        trained = {k.removeprefix("unet."): v for k, v in result.params.items() if k.startswith("unet.")}
        patch = P.save_weight_patch(_folder(ctx, "loras") / f"{name}.safetensors", model.unet, trained, "custom_diffusion")
        folder = _folder(ctx, "embeddings")
        embedding = P.save_embedding(folder / f"{name}.safetensors", result.params["vectors"], token=token)
        ui = {"models": [{"filename": patch.name, "subfolder": "", "type": "loras"},
                         {"filename": embedding.name, "subfolder": "", "type": "embeddings"}]}  # fmt: skip
        outputs = (P.tuned_model(model, trained), _with_embeddings(clip, folder), f"embedding:{name}", result.step)
        return NodeResult(outputs=outputs, ui=ui)


NODES = (TextualInversionTrain, DreamBoothTrain, DreamBoothLoraTrain, CustomDiffusionTrain)
