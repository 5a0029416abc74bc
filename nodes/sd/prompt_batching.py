"""The sampler's UNet calls stacked across prompts (`nodegraph.batching`), with each prompt's result unchanged.

When a worker runs a group of prompts side by side (`serve --batch-prompts N`), every UNet call of a sampling run
goes to the group's rendezvous; calls on the same UNet with the same shapes and no UNet-level patch are stacked
into one call and split back. A UNet call with a wrapper (attention, hypernetwork or GLIGEN patches change the
UNet's computation per run) runs alone, as does everything when no group is active.

Batch invariance: stacking must not change a prompt's numbers. On the CPU, 3x3 convolutions, norms and attention
compute each row the same whatever the batch size, but GEMMs do not: oneDNN/MKL pick a GEMM kernel (and so the
order of its sums) by the row count, so a linear layer or a 1x1 convolution (a GEMM over pixels) rounds
differently when its rows come from 6 samples instead of 2 (measured on the embedded UNet: the timestep MLPs,
the feed-forward layers at the 2x2 level, the 1x1 projections). Those run per prompt, in exactly the shapes the
prompt would have alone, through a `TorchFunctionMode` on the calling thread (the shared module is never
modified); the convolutions and attention, most of the work, run stacked (the batch invariance of Thinking
Machines Lab's 2025 note "Defeating Nondeterminism in LLM Inference", here at the op level). tests/test_prompt_batching.py checks the latents are bit-identical on the CPU
in float32; on a GPU cuBLAS picks kernels by shape too, so stacked results may differ in the last bits there
(see docs/scale_out.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from nodegraph.batching import active


class PerPromptSmallOps(TorchFunctionMode):
    """Compute batch-sensitive ops (linear layers, 1x1 convolutions) in each prompt's own chunk of rows."""

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__()
        self.sizes, self.total = list(sizes), sum(sizes)

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None):
        kwargs = kwargs or {}
        if args and isinstance(args[0], Tensor) and args[0].shape[0] == self.total and _batch_sensitive(func, args):
            parts = args[0].split(self.sizes)
            return torch.cat([func(part, *args[1:], **kwargs) for part in parts])
        return func(*args, **kwargs)


def _batch_sensitive(func: Any, args: tuple[Any, ...]) -> bool:
    if func is F.linear:
        return True
    if func is F.conv2d:  # a 1x1 convolution is a GEMM over pixels
        weight = args[1]
        return weight.shape[-1] == 1 and weight.shape[-2] == 1
    return False


def call_key(unet: torch.nn.Module, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """What must match for two UNet calls to be stacked, or None when this call cannot be (a non-tensor kwarg)."""
    parts: list[Any] = [id(unet), sample.dtype, str(sample.device), tuple(sample.shape[1:]), timestep.ndim]
    for name in sorted(kwargs):
        value = kwargs[name]
        if isinstance(value, Tensor):
            if value.ndim == 0 or value.shape[0] != sample.shape[0]:
                return None
            parts.append((name, value.dtype, tuple(value.shape[1:])))
        elif isinstance(value, dict) and all(isinstance(v, Tensor) for v in value.values()):
            if any(v.shape[0] != sample.shape[0] for v in value.values()):
                return None
            parts.append((name, tuple((k, v.dtype, tuple(v.shape[1:])) for k, v in sorted(value.items()))))
        else:
            return None
    return tuple(parts)


def _stack(values: Sequence[Any]) -> Any:
    if isinstance(values[0], Tensor):
        return torch.cat(list(values))
    return {key: torch.cat([value[key] for value in values]) for key in values[0]}


def batched_unet_call(unet: torch.nn.Module, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor | None:
    """Run the call through the active prompt group's rendezvous; None when there is none or it cannot stack."""
    rendezvous = active()
    if rendezvous is None or torch.is_grad_enabled():  # a call differentiated through stays on its own thread
        return None
    key = call_key(unet, sample, timestep, kwargs)
    timestep = timestep.reshape(-1).expand(sample.shape[0]) if timestep.ndim <= 1 else timestep
    if key is None:
        return None

    def run_one(payload: tuple[Tensor, Tensor, dict[str, Any]]) -> Tensor:
        x, t, kw = payload
        return unet(x, t, **kw, return_dict=False)[0]

    def run_batch(payloads: Sequence[tuple[Tensor, Tensor, dict[str, Any]]]) -> list[Tensor]:
        sizes = [p[0].shape[0] for p in payloads]
        x = torch.cat([p[0] for p in payloads])
        t = torch.cat([p[1] for p in payloads])
        kw = {name: _stack([p[2][name] for p in payloads]) for name in payloads[0][2]}
        with PerPromptSmallOps(sizes):
            out = unet(x, t, **kw, return_dict=False)[0]
        return list(out.split(sizes))

    return rendezvous.call(key, (sample, timestep, kwargs), run_batch=run_batch, run_one=run_one)
