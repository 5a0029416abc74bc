"""Model sampling nodes (ComfyUI's "advanced/model"): how the MODEL reads sigma, and its compute dtype.

A ModelSampling* node returns a handle whose sigma table (`alphas_cumprod`) is the new range and whose patches
end with a "model_sampling" patch for the parametrisation, replacing any earlier one (ComfyUI's object patch).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch

from nodegraph import Boolean, Combo, Float, Node, NodeContext, NodeSchema, Out, Socket
from nodegraph.models import ModelRef, as_ref, resolve

from nodes.sd.model_sampling import (CONTINUOUS_V_SAMPLING, DISCRETE_SAMPLING, EDM_SAMPLING, Sampling,
                                     alphas_from_sigmas, continuous_v_sampling, discrete_sampling, edm_sampling,
                                     sampling_patch)
from nodes.sd.types import ModelHandle

COMPUTE_DTYPES: dict[str, torch.dtype | None] = {"default": None, "fp32": torch.float32, "fp16": torch.float16,
                                                 "bf16": torch.bfloat16}


def with_sampling(model: ModelHandle, sampling: Sampling, name: str) -> ModelHandle:
    """A new handle reading sigma as `sampling` (earlier model_sampling patches dropped)."""
    patches = tuple(p for p in model.patches if p.kind != "model_sampling")
    prediction = "v_prediction" if sampling.prediction == "v_prediction" else "epsilon"
    return replace(model, alphas_cumprod=alphas_from_sigmas(sampling.sigmas), prediction=prediction,
                   patches=(*patches, sampling_patch(sampling, name)))


def _sigma_range(default_max: float, default_min: float) -> tuple:
    return (Float("sigma_max", default_max, min=0.0, max=1000.0, step=0.001, round=False),
            Float("sigma_min", default_min, min=0.0, max=1000.0, step=0.001, round=False))


class ModelSamplingDiscrete(Node):
    schema = NodeSchema(
        type_id="ModelSamplingDiscrete", display_name="ModelSamplingDiscrete", category="advanced/model",
        description="Reads the model as eps / v / x0 / LCM prediction on SD's discrete schedule; zsnr rescales it "
                    "to zero terminal SNR (Lin et al. 2023).",
        inputs=(Socket("model", "MODEL"), Combo("sampling", DISCRETE_SAMPLING), Boolean("zsnr", False)),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, sampling: str, zsnr: bool) -> tuple[ModelHandle]:
        return (with_sampling(model, discrete_sampling(sampling, zsnr), f"discrete_{sampling}"),)


class ModelSamplingContinuousEDM(Node):
    schema = NodeSchema(
        type_id="ModelSamplingContinuousEDM", display_name="ModelSamplingContinuousEDM", category="advanced/model",
        description="Continuous EDM sampling (Karras et al. 2022): log-uniform sigmas in [sigma_min, sigma_max], "
                    "timestep 0.25 ln sigma.",
        inputs=(Socket("model", "MODEL"), Combo("sampling", EDM_SAMPLING), *_sigma_range(120.0, 0.002)),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, sampling: str, sigma_max: float,
                sigma_min: float) -> tuple[ModelHandle]:
        return (with_sampling(model, edm_sampling(sampling, sigma_max, sigma_min), f"edm_{sampling}"),)


class ModelSamplingContinuousV(Node):
    schema = NodeSchema(
        type_id="ModelSamplingContinuousV", display_name="ModelSamplingContinuousV", category="advanced/model",
        description="Continuous v-prediction sampling: log-uniform sigmas, timestep atan(sigma) * 2 / pi.",
        inputs=(Socket("model", "MODEL"), Combo("sampling", CONTINUOUS_V_SAMPLING), *_sigma_range(500.0, 0.03)),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, sampling: str, sigma_max: float,
                sigma_min: float) -> tuple[ModelHandle]:
        return (with_sampling(model, continuous_v_sampling(sampling, sigma_max, sigma_min), "continuous_v"),)


def _cast_copy(dtype: torch.dtype, unet: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(unet).to(dtype)


def _is_cast(ref: Any) -> bool:
    return (isinstance(ref, ModelRef) and ref.base is not None and isinstance(ref.key, tuple) and len(ref.key) == 2
            and isinstance(ref.key[1], tuple) and ref.key[1][:1] == ("compute_dtype",))


def compute_dtype_handle(model: ModelHandle, dtype_name: str) -> ModelHandle:
    """ModelComputeDtype: a handle whose UNet runs in `dtype_name` (a cast copy the model manager keeps, derived
    from the handle's UNet); "default" goes back to the UNet this node cast from, in its own dtype."""
    if dtype_name not in COMPUTE_DTYPES:
        raise ValueError(f"ModelComputeDtype: unknown dtype {dtype_name!r}; expected one of {', '.join(COMPUTE_DTYPES)}")
    uncast: Any = model.unet_ref
    while _is_cast(uncast):
        uncast = uncast.base  # cast copies never stack: each starts from the uncast UNet
    dtype = COMPUTE_DTYPES[dtype_name]
    if dtype is None:
        return replace(model, unet_ref=uncast, dtype=next(resolve(uncast).parameters()).dtype)
    ref = as_ref(uncast, "UNet")
    derived = ref.derive(("compute_dtype", dtype_name), lambda unet: _cast_copy(dtype, unet),
                         name=f"{ref.name} ({dtype_name})",
                         size=lambda unet: sum(p.numel() * p.element_size() for p in unet.parameters()))
    return replace(model, unet_ref=derived, dtype=dtype)


class ModelComputeDtype(Node):
    schema = NodeSchema(
        type_id="ModelComputeDtype", display_name="ModelComputeDtype", category="advanced/debug/model",
        description="Runs the UNet in another floating-point type.",
        inputs=(Socket("model", "MODEL"), Combo("dtype", tuple(COMPUTE_DTYPES))),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, dtype: str) -> tuple[ModelHandle]:
        return (compute_dtype_handle(model, dtype),)


NODES = (ModelSamplingDiscrete, ModelSamplingContinuousEDM, ModelSamplingContinuousV, ModelComputeDtype)
