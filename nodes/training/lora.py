"""ComfyUI's LoRA training nodes: TrainLoraNode (training), LoraModelLoader and SaveLoRANode (loaders).

TrainLoraNode trains LoRA layers (Hu et al. 2021) on the MODEL's UNet to denoise the given latents under their
conditioning (nodes/sd/finetune/lora_train.py). It reports each step through the run's progress (the editor's
bar, /ws "progress" events) with the loss curve as the live preview, stops at an interrupt after saving its
state, and, run again with the same inputs, resumes from that state (kept in the temp folder under a key of
the model's weights, the data and the settings). LORA_MODEL is the trained tensors in kohya-ss's layout, so the
file SaveLoRANode writes loads through LoraLoader like any LoRA.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

from nodegraph import Boolean, Combo, Float, Int, Node, NodeContext, NodeResult, NodeSchema, Out, Socket, String
from nodegraph.paths import output_prefix_problem, save_new_file

from ..loaders import _file_fingerprint
from ..sd.finetune.data import TrainingSet, stack_states
from ..sd.finetune.lora_train import ALGORITHMS, DTYPES, LoraSettings, LoraWeights, LossHistory, train_lora
from ..sd.finetune.loop import OPTIMIZERS
from ..sd.finetune.loss import LOSSES
from ..sd.finetune.plot import loss_graph
from ..sd.types import Conditioning, Latent, ModelHandle

logger = logging.getLogger(__name__)
NO_LORA = "[None]"
PREVIEWS = 20
"""How many times a run refreshes its loss-curve preview (plus the last step)."""


def _loras_and_none(env: Any) -> list[str]:
    return [*(env.models.list("loras") if env is not None else []), NO_LORA]


def _steps_in_name(name: str) -> int:
    """The step count in a SaveLoRANode file name (`..._<steps>_steps_00001_.safetensors`), else 0."""
    found = re.search(r"_(\d+)_steps_", Path(name).name)
    return int(found.group(1)) if found else 0


class TrainLoraNode(Node):
    schema = NodeSchema(
        type_id="TrainLoraNode", display_name="Train LoRA", category="training",
        description="Trains LoRA layers on the model to denoise the latents under their conditioning; resumable, "
                    "reproducible for a seed on the CPU.",
        inputs=(
            Socket("model", "MODEL", tooltip="The diffusion model the LoRA layers are added to (it is not changed)."),
            Socket("latents", "LATENT", tooltip="The training images, VAE-encoded."),
            Socket("positive", "CONDITIONING", tooltip="One caption's conditioning per latent, or one for all."),
            Int("batch_size", 1, min=1, max=10000, step=1, tooltip="Latents per step."),
            Int("grad_accumulation_steps", 1, min=1, max=1024, step=1,
                tooltip="Batches whose gradients are averaged per optimizer step."),
            Int("steps", 16, min=1, max=100000, tooltip="Optimizer steps; more steps continue a saved run."),
            Float("learning_rate", 0.0005, min=0.0000001, max=1.0, step=0.000001,
                  tooltip="Step size of the optimizer (constant)."),
            Int("rank", 8, min=1, max=128, tooltip="Inner width of each low-rank update."),
            Combo("optimizer", OPTIMIZERS, "AdamW", tooltip="Which torch optimizer updates the layers."),
            Combo("loss_function", LOSSES, "MSE", tooltip="Regression loss between predicted and true noise."),
            Int("seed", 0, min=0, max=0xFFFFFFFFFFFFFFFF,
                tooltip="Seeds the layers' start values, the batches, timesteps and noise."),
            Combo("training_dtype", tuple(DTYPES), "bf16", tooltip="Compute precision of the UNet during training."),
            Combo("lora_dtype", tuple(DTYPES), "bf16", tooltip="Precision of the LoRA tensors output and saved."),
            Combo("algorithm", ALGORITHMS, "LoRA", tooltip="Adapter kind (only LoRA is trained here)."),
            Boolean("gradient_checkpointing", True,
                    tooltip="Recompute activations in the backward pass: less memory, more time."),
            Combo("existing_lora", _loras_and_none, NO_LORA,
                  tooltip="A LoRA file to continue training; [None] starts fresh."),
        ),
        outputs=(Out("MODEL", "model_with_lora"), Out("LORA_MODEL", "lora"), Out("LOSS_MAP", "loss"),
                 Out("INT", "steps")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, latents: Latent, positive: Conditioning,
                batch_size: int, grad_accumulation_steps: int, steps: int, learning_rate: float, rank: int,
                optimizer: str, loss_function: str, seed: int, training_dtype: str, lora_dtype: str,
                algorithm: str, gradient_checkpointing: bool,
                existing_lora: str) -> tuple[ModelHandle, LoraWeights, LossHistory, int]:
        from ..sd.finetune.lora_layers import from_lora_file
        from ..sd.loading.files import read_weights

        samples = latents.samples
        if len(positive) == 1 and samples.shape[0] > 1:
            positive = tuple(positive) * samples.shape[0]
        if len(positive) != samples.shape[0]:
            raise ValueError(f"TrainLoraNode: {len(positive)} positive conditioning entries for "
                             f"{samples.shape[0]} latents; give one per latent, or one for all")
        data = TrainingSet(samples.float(), stack_states([item.embeds for item in positive]))
        settings = LoraSettings(batch_size, grad_accumulation_steps, steps, learning_rate, rank, optimizer,
                                loss_function, seed, training_dtype, lora_dtype, algorithm, gradient_checkpointing)
        start, earlier_steps = None, 0
        if existing_lora != NO_LORA:
            tensors, _ = read_weights(ctx.env.models.resolve("loras", existing_lora))
            start = from_lora_file(model.unet, tensors, existing_lora)
            earlier_steps = _steps_in_name(existing_lora)
        every = max(1, steps // PREVIEWS)
        history: list[float] = []

        def report(done: int, total: int, loss: float) -> None:
            history.append(loss)
            preview = loss_graph(history) if done % every == 0 or done == total else None
            if done % every == 0 or done == total:
                logger.info("TrainLoraNode %s: step %d/%d, loss %.4f", ctx.node_id, done, total, loss)
            ctx.progress(done, total, preview)

        lora, losses, _ = train_lora(model, data, settings, start=start, state_dir=Path(ctx.env.temp_dir) / "training",
                                     progress=report, check_interrupted=ctx.check_interrupted, save_every=every)
        lora = LoraWeights(lora.tensors, lora.steps + earlier_steps)
        return apply_lora_weights(model, lora, 1.0, "trained LoRA"), lora, losses, lora.steps

    @classmethod
    def fingerprint(cls, ctx: NodeContext, existing_lora: str = NO_LORA, **_: Any) -> Any:
        return None if existing_lora == NO_LORA else _file_fingerprint(ctx, "loras", existing_lora)


def apply_lora_weights(model: ModelHandle, lora: LoraWeights, strength: float, name: str) -> ModelHandle:
    """A new MODEL handle with `lora` merged at `strength` (by the model manager; the base is untouched)."""
    from ..sd.lora import add_model_lora, match_lora, parse_lora, warn_not_loaded

    if strength == 0:
        return model
    matched = match_lora(parse_lora(lora.tensors, {}, name), model.unet, ())
    warn_not_loaded(name, matched.not_loaded)
    digest = hashlib.sha256()
    for key in sorted(lora.tensors):
        digest.update(key.encode())
        digest.update(lora.tensors[key].detach().float().contiguous().numpy().tobytes())
    key = ("trained-lora", digest.hexdigest()[:24])  # equal weights: one merged model, built once
    return add_model_lora(model, name, matched.unet, strength, key)


class LoraModelLoader(Node):
    schema = NodeSchema(
        type_id="LoraModelLoader", display_name="Load LoRA Model", category="loaders",
        description="Adds a LoRA trained by TrainLoraNode to a diffusion model.",
        inputs=(Socket("model", "MODEL", tooltip="The diffusion model to add the LoRA to."),
                Socket("lora", "LORA_MODEL", tooltip="Trained LoRA weights (TrainLoraNode's lora output)."),
                Float("strength_model", 1.0, min=-100.0, max=100.0, step=0.01,
                      tooltip="Scale of the LoRA update; negative reverses it.")),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, lora: LoraWeights,
                strength_model: float) -> tuple[ModelHandle]:
        return (apply_lora_weights(model, lora, strength_model, "trained LoRA"),)


class SaveLoRANode(Node):
    schema = NodeSchema(
        type_id="SaveLoRANode", display_name="Save LoRA Weights", category="loaders",
        description="Writes a trained LoRA (kohya-ss layout) to the output folder as prefix[_<steps>_steps]_NNNNN_"
                    ".safetensors; LoraLoader reads it.",
        inputs=(Socket("lora", "LORA_MODEL", tooltip="Trained LoRA weights to write."),
                String("prefix", "loras/ComfyUI_trained_lora", check=output_prefix_problem,
                       tooltip="File name prefix inside the output folder."),
                Socket("steps", "INT", optional=True,
                       tooltip="Training steps, written into the file name.")),
        output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, lora: LoraWeights, prefix: str, steps: int | None = None) -> NodeResult:
        from safetensors.torch import save_file

        root = Path(ctx.env.output_dir)
        stem = prefix if steps is None else f"{prefix}_{steps}_steps"
        metadata = {"ss_network_module": "networks.lora", "ss_steps": str(lora.steps),
                    "nodegraph_trainer": "TrainLoraNode"}
        tensors = {k: v.contiguous() for k, v in lora.tensors.items()}
        path = save_new_file(root, stem, "safetensors", lambda p: save_file(tensors, str(p), metadata=metadata))
        subfolder = path.parent.relative_to(root.resolve()).as_posix()
        return NodeResult(ui={"models": [{"filename": path.name, "subfolder": "" if subfolder == "." else subfolder,
                                          "type": "output"}]})


NODES = (TrainLoraNode, LoraModelLoader, SaveLoRANode)
