"""The sampling step loop never makes the host wait for the device.

On a GPU every read of a device value on the host (`float(t)`, `.item()`, `.cpu()`, `if t > 0`) and every
blocking host-to-device copy waits for all queued kernels; at batch 1 one such sync per step costs more than
the UNet. These tests run KSampler's `sample()` with the model on PyTorch's meta device (tensors with shapes
and no data) under a dispatch mode that records each such transfer of a meta tensor, and require none
between the first UNet call's start and the last one's end, for every sampler. Work before the loop
(noise, moving conditioning once) and after it (the result to the CPU) is allowed. The detector itself is
checked: a UNet wrapper that reintroduces each kind of sync is caught.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch.utils._python_dispatch import TorchDispatchMode

from nodes.sd import ksampler
from nodes.sd.samplers import SAMPLERS
from nodes.sd.schedules import scaled_linear_alphas_cumprod
from nodes.sd.types import CondItem, Latent, ModelHandle, ModelPatch

DEVICE = "meta"
"""Stands in for an accelerator: any data read of it is a transfer the mode records."""

SYNC_EXCEPTIONS: dict[str, str] = {
    "dpm_adaptive": "its PID controller sizes the next step from the last step's error: one read per step",
}
"""Samplers allowed to sync inside the loop, with the reason; the rest decide on host sigmas."""
OWN_STEP_PLACEMENT = frozenset({"dpm_fast", "dpm_adaptive"})
"""Samplers that place their own steps in the schedule's range, so their callbacks do not count its steps."""

SD1_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64), "layers_per_block": 1, "cross_attention_dim": 32, "sample_size": 8,
    "norm_num_groups": 32, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
}
SDXL_UNET: dict[str, Any] = {
    **SD1_UNET, "cross_attention_dim": 96, "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 64 + 6 * 8,
}
DATA_DEPENDENT_OPS = frozenset({"nonzero", "masked_select", "unique", "_unique2", "unique_consecutive", "equal",
                                "is_nonzero", "allclose"})
"""Ops whose result (or its shape) depends on tensor values, so a device must finish before the host goes on."""


@dataclass
class Transfer:
    what: str
    unet_calls_started: int
    unet_calls_finished: int


@dataclass
class SyncRecorder(TorchDispatchMode):
    """Records host reads of device tensors and blocking copies between host and device.

    A read of a meta tensor would raise; the mode records it and answers with zeros instead, so a run goes on
    and the test reports every sync, not only the first.
    """

    transfers: list[Transfer] = field(default_factory=list)
    started: int = 0
    finished: int = 0

    def __post_init__(self) -> None:
        super().__init__()

    def _record(self, what: str) -> None:
        self.transfers.append(Transfer(what, self.started, self.finished))

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name == "_local_scalar_dense" and source is not None and source.device.type == DEVICE:
            self._record(f"{func}: a device value read on the host (.item(), float(), bool())")
            return False if source.dtype == torch.bool else 0 if not source.is_floating_point() else 0.0
        if name in DATA_DEPENDENT_OPS and any(isinstance(a, torch.Tensor) and a.device.type == DEVICE for a in args):
            self._record(f"{func}: a data-dependent op on a device tensor")
        if name == "_to_copy" and source is not None:
            target = torch.device(kwargs.get("device") or source.device)
            if source.device.type == DEVICE and target.type == "cpu":
                self._record(f"{func}: device to host copy")
                return torch.zeros(source.shape, dtype=kwargs.get("dtype") or source.dtype)
            if source.device.type == "cpu" and target.type == DEVICE and not kwargs.get("non_blocking", False):
                self._record(f"{func}: blocking host to device copy")
        if name == "copy_" and len(args) >= 2:
            destination, origin = args[0], args[1]
            non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
            if destination.device.type == "cpu" and origin.device.type == DEVICE:
                self._record(f"{func}: device to host copy")
                return destination.zero_()
            if destination.device.type == DEVICE and origin.device.type == "cpu" and not non_blocking:
                self._record(f"{func}: blocking host to device copy")
        return func(*args, **kwargs)

    def in_loop(self) -> list[Transfer]:
        """Transfers after the first UNet call started and before the last one finished."""
        return [t for t in self.transfers if t.unet_calls_started >= 1 and t.unet_calls_finished < self.finished]


@contextmanager
def recording(unet: torch.nn.Module) -> Iterator[SyncRecorder]:
    recorder = SyncRecorder()

    def before(*_: Any) -> None:
        recorder.started += 1

    def after(*_: Any) -> None:
        recorder.finished += 1

    hooks = [unet.register_forward_pre_hook(before), unet.register_forward_hook(after)]
    try:
        with recorder:
            yield recorder
    finally:
        for hook in hooks:
            hook.remove()


def meta_model(config: dict[str, Any], family: str) -> ModelHandle:
    with torch.device(DEVICE):
        unet = UNet2DConditionModel(**config).eval().requires_grad_(False)
    return ModelHandle(unet, family=family, prediction="epsilon",  # type: ignore[arg-type]
                       alphas_cumprod=scaled_linear_alphas_cumprod(), device=DEVICE)


@pytest.fixture(scope="module")
def sd1() -> ModelHandle:
    return meta_model(SD1_UNET, "sd1")


def conditioning(width: int, pooled: bool) -> tuple[tuple[CondItem, ...], tuple[CondItem, ...]]:
    generator = torch.Generator().manual_seed(0)

    def item(**extra: Any) -> CondItem:
        return CondItem(torch.randn(1, 7, width, generator=generator),
                        pooled=torch.randn(1, 64, generator=generator) if pooled else None, **extra)

    # a second, area-limited positive entry makes calc_cond_batch batch two shapes
    return (item(), item(area=(4, 8, 0, 0), strength=0.5)), (item(),)


def sample(model: ModelHandle, sampler_name: str, *, width: int = 32, pooled: bool = False,
           latent: Latent | None = None, steps: int = 4, **options: Any) -> list[Transfer]:
    positive, negative = conditioning(width, pooled)
    latent = latent or Latent(torch.zeros(2, 4, 8, 8), batch_index=(0, 3))
    steps_seen: list[tuple[int, int]] = []
    with recording(model.unet) as recorder:
        ksampler.sample(model, seed=1, steps=steps, cfg=6.0, sampler_name=sampler_name, scheduler="karras",
                        positive=positive, negative=negative, latent=latent,
                        callback=lambda step, total, x0: steps_seen.append((step, total)), should_stop=lambda: False,
                        **options)
    total = steps_seen[-1][1]
    if sampler_name in OWN_STEP_PLACEMENT:
        assert total >= 3 and [step for step, _ in steps_seen] == list(range(1, len(steps_seen) + 1))
    else:
        assert total >= 3 and steps_seen == [(step, total) for step in range(1, total + 1)]
    assert recorder.finished >= total, "the UNet ran on the meta device once per step at least"
    return recorder.in_loop()


DISTINCT_SAMPLERS = [name for k, (name, fn) in enumerate(SAMPLERS.items()) if fn not in list(SAMPLERS.values())[:k]]
"""One name per sampler function: ComfyUI's `_gpu` entries are the same function as their CPU twins here."""


@pytest.mark.parametrize("sampler_name", sorted(set(DISTINCT_SAMPLERS) - set(SYNC_EXCEPTIONS)))
def test_step_loop_has_no_host_sync(sd1: ModelHandle, sampler_name: str) -> None:
    assert sample(sd1, sampler_name) == []


def test_dpm_adaptive_reads_only_its_step_error(sd1: ModelHandle) -> None:
    """The one allowed exception: a scalar read per attempted step (the error norm), nothing else."""
    transfers = sample(sd1, "dpm_adaptive")
    assert transfers and all("_local_scalar_dense" in transfer.what for transfer in transfers)
    assert len(transfers) <= sd1_steps_bound()


def sd1_steps_bound() -> int:
    """dpm_adaptive on the meta device sees zero error, so its controller grows the step ~2.6x per step: a
    handful of steps cross the ~6.2 units of log-sigma between sigma_max and sigma_min."""
    return 12


def test_no_sync_with_sdxl_conditioning_and_inpainting_mask() -> None:
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1.0
    latent = Latent(torch.zeros(1, 4, 8, 8), noise_mask=mask)
    model = meta_model(SDXL_UNET, "sdxl")
    assert sample(model, "euler_ancestral", width=96, pooled=True, latent=latent) == []


def test_img2img_and_advanced_ranges_have_no_sync(sd1: ModelHandle) -> None:
    assert sample(sd1, "dpmpp_2m_sde", denoise=0.6, steps=5) == []
    assert sample(sd1, "heun", start_step=1, last_step=4, steps=6, add_noise=False, force_full_denoise=True) == []


def wrapper_patch(body: Callable[[torch.Tensor, torch.Tensor], None]) -> ModelPatch:
    """A "residual" patch whose UNet wrapper runs `body(sample, timestep)` before each call."""

    def apply(unet_denoiser: Any) -> Callable[[], None]:
        def wrapper(call: Any, sample: torch.Tensor, timestep: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
            body(sample, timestep)
            return call(sample, timestep, kwargs)

        unet_denoiser.wrappers.append(wrapper)
        return lambda: unet_denoiser.wrappers.remove(wrapper)

    return ModelPatch(kind="residual", name="sync", apply=apply)


REINTRODUCED: dict[str, Callable[[torch.Tensor, torch.Tensor], None]] = {
    "item": lambda sample, timestep: sample.mean().item(),
    "float": lambda sample, timestep: float(timestep[0]),
    "compare": lambda sample, timestep: bool(timestep[0] > 0),
    "cpu": lambda sample, timestep: timestep.to(torch.float64).cpu(),  # the old UNetDenoiser.timestep
    "to_device": lambda sample, timestep: torch.ones(1).to(sample.device),
}


@pytest.mark.parametrize("kind", sorted(REINTRODUCED))
def test_detector_catches_a_reintroduced_sync(sd1: ModelHandle, kind: str) -> None:
    patched = sd1.with_patch(wrapper_patch(REINTRODUCED[kind]))
    found = sample(patched, "euler")
    assert found, f"a {kind} sync in the step loop went unnoticed"
