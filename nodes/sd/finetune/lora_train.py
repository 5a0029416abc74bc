"""Training a LoRA on a MODEL handle from latents and per-item conditioning (what TrainLoraNode computes).

The UNet the handle resolves to keeps its weights: the LoRA layers are plain tensors, and each step runs the
UNet with the adapted weights W + (alpha / rank) up @ down (Hu et al. 2021) swapped in for that step's forward
and backward pass only (`loss.replaced_weights`, which gradient checkpointing needs). The loop
is `loop.train`, so a run is reproducible for a seed on the CPU and resumes from its state file bit-exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nodes.sd.finetune.data import TrainingSet, batch_indices
from nodes.sd.finetune.lora_layers import create_lora_layers, overrides, to_kohya
from nodes.sd.finetune.loop import derived_seed, train
from nodes.sd.finetune.loss import noise_loss, plain_unet, replaced_weights
from nodes.sd.types import ModelHandle

ALGORITHMS: tuple[str, ...] = ("LoRA", "LoHa", "LoKr", "OFT")
"""ComfyUI 0.3.64's adapter choices; only LoRA is trained here (the others are refused with a clear error,
since our LoRA loader reads low-rank pairs only)."""
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class LoraWeights:
    """LORA_MODEL: trained LoRA tensors in kohya-ss's layout (what SaveLoRANode writes), and the steps behind
    them (earlier sessions and a continued file included)."""

    tensors: Mapping[str, torch.Tensor]
    steps: int = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@dataclass(frozen=True)
class LossHistory:
    """LOSS_MAP: the loss of every training step, in order (ComfyUI's {"loss": [...]})."""

    values: tuple[float, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class LoraSettings:
    """TrainLoraNode's hyper-parameters (alpha = rank: the update is up @ down at strength 1)."""

    batch_size: int = 1
    grad_accumulation_steps: int = 1
    steps: int = 16
    learning_rate: float = 0.0005
    rank: int = 8
    optimizer: str = "AdamW"
    loss_function: str = "MSE"
    seed: int = 0
    training_dtype: str = "bf16"
    lora_dtype: str = "bf16"
    algorithm: str = "LoRA"
    gradient_checkpointing: bool = True


def _digest(hasher: Any, tensor: torch.Tensor) -> None:
    data = tensor.detach().to("cpu", torch.float32).contiguous()
    hasher.update(str(tuple(data.shape)).encode())
    hasher.update(data.numpy().tobytes())


def unet_digest(unet: torch.nn.Module) -> str:
    """A cheap identity of a UNet's weights (per tensor: shape, sum and absolute sum, in float64)."""
    hasher = hashlib.sha256()
    with torch.no_grad():
        for name, param in unet.named_parameters():
            value = param.detach().double()
            stats = f"{float(value.sum()):.12e}{float(value.abs().sum()):.12e}"
            hasher.update(f"{name}{tuple(param.shape)}{stats}".encode())
    return hasher.hexdigest()[:16]


def run_key(unet: torch.nn.Module, data: TrainingSet, settings: LoraSettings, start: Mapping[str, torch.Tensor]) -> str:
    """What identifies a training run for resuming it: the UNet's weights, the data, every hyper-parameter and
    the layers it starts from (a continued LoRA file). `steps` is left out: more steps continue a run."""
    hasher = hashlib.sha256(unet_digest(unet).encode())
    _digest(hasher, data.latents)
    _digest(hasher, data.states)
    described = {k: v for k, v in settings.__dict__.items() if k != "steps"}
    hasher.update(json.dumps(described, sort_keys=True).encode())
    for name in sorted(start):
        hasher.update(name.encode())
        _digest(hasher, start[name])
    return hasher.hexdigest()[:24]


@contextlib.contextmanager
def gradient_checkpointing(unet: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Recompute each UNet block's activations in the backward pass instead of keeping them (less memory,
    about a third more compute), switched on for the training only and restored afterwards."""
    switch = enabled and getattr(unet, "_supports_gradient_checkpointing", False) \
        and not getattr(unet, "is_gradient_checkpointing", True)
    if switch:
        unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if switch:
            unet.disable_gradient_checkpointing()


def train_lora(
    model: ModelHandle,
    data: TrainingSet,
    settings: LoraSettings,
    *,
    start: Mapping[str, torch.Tensor] | None = None,
    state_dir: str | Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    check_interrupted: Callable[[], None] | None = None,
    save_every: int = 0,
) -> tuple[LoraWeights, LossHistory, dict[str, torch.Tensor]]:
    """Train LoRA layers on `model`'s UNet to denoise `data`; returns (file tensors, losses, layers).

    Args:
        start: layers to continue (lora_layers.from_lora_file); fresh ones from the seed otherwise.
        state_dir: where the resumable state lives, as `lora-<run key>.safetensors` (None: no resume).
    """
    if settings.algorithm != "LoRA":
        raise ValueError(f"TrainLoraNode: algorithm {settings.algorithm!r} is not trained here yet; use 'LoRA' "
                         f"(our LoRA loader reads low-rank pairs only)")
    for name, value in (("training_dtype", settings.training_dtype), ("lora_dtype", settings.lora_dtype)):
        if value not in DTYPES:
            raise ValueError(f"TrainLoraNode: {name} {value!r} is not one of {', '.join(DTYPES)}")
    unet = model.unet
    device = next(unet.parameters()).device
    init = torch.Generator().manual_seed(derived_seed(settings.seed, "lora-init"))
    layers = dict(start) if start else create_lora_layers(unet, settings.rank, init)
    layers = {k: v.detach().float().to(device).requires_grad_() for k, v in layers.items()}
    rank = next(v for k, v in layers.items() if k.endswith(".lora_down")).shape[0]
    alpha = float(rank)
    latents, states = data.latents.to(device), data.states.to(device)
    dataset = TrainingSet(latents, states)
    autocast = settings.training_dtype == "bf16"

    call = plain_unet(unet)  # inside `adapted()`: the LoRA-adapted weights, through forward and backward

    def adapted() -> contextlib.AbstractContextManager[None]:
        return replaced_weights(unet, overrides(unet, layers, alpha))

    def step(index: int, generator: torch.Generator) -> torch.Tensor:
        rows = batch_indices(len(dataset), settings.batch_size, settings.seed, index)
        batch_latents, batch_states = dataset.batch(rows)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return noise_loss(call, batch_latents, batch_states, model.alphas_cumprod, generator,
                              prediction=model.prediction, loss=settings.loss_function)

    state_path = None
    if state_dir is not None:
        state_path = Path(state_dir) / f"lora-{run_key(unet, data, settings, start or {})}.safetensors"
    checkpointing = gradient_checkpointing(unet, settings.gradient_checkpointing)
    with torch.inference_mode(False), torch.enable_grad(), checkpointing:
        result = train(step, layers, steps=settings.steps, seed=settings.seed, lr=settings.learning_rate,
                       optimizer=settings.optimizer, grad_accumulation=settings.grad_accumulation_steps,
                       progress=progress, check_interrupted=check_interrupted, state_path=state_path,
                       save_every=save_every, settings={"kind": "lora", "alpha": alpha}, step_context=adapted)
    trained = {k: v.cpu() for k, v in result.params.items()}
    tensors = to_kohya(trained, alpha, DTYPES[settings.lora_dtype])
    return LoraWeights(tensors, result.step), LossHistory(tuple(result.losses)), trained
