"""ControlNet nodes (ComfyUI's ControlNetLoader, ControlNetApplyAdvanced and the older ControlNetApply).

Applying a ControlNet (Zhang et al. 2023) changes no model: it returns new conditioning whose entries
carry a `ControlApplied` in `extras["control"]`, chained onto any control they already had, so several
ControlNets stack and their residuals sum. The sampler computes the residuals per UNet call.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from nodegraph import Combo, Float, Node, NodeContext, NodeSchema, Out, Socket

from .loaders import _file_fingerprint, _folder, unet_dtype
from .sd.types import Conditioning

if TYPE_CHECKING:
    from .sd.controlnet import ControlApplied, ControlNetHandle

CONTROL_KEY = "control"
"""The CondItem.extras key a ControlApplied travels under (ComfyUI's cond dict key)."""


def apply_control(
    conditionings: tuple[Conditioning, ...], control_net: ControlNetHandle, image: torch.Tensor, strength: float,
    start_percent: float = 0.0, end_percent: float = 1.0,
) -> tuple[Conditioning, ...]:
    """Each conditioning with `control_net` chained onto its entries' controls; strength 0 changes nothing.

    Entries that shared a previous control share the new one (one object per previous), so positive and
    negative stay batchable together, as in ComfyUI.
    """
    from .sd.controlnet import ControlApplied

    if strength == 0:
        return conditionings
    if image.dim() != 4:
        raise ValueError(f"ControlNet image must be an IMAGE [B, H, W, C], got shape {tuple(image.shape)}")
    hint = image[..., :3].movedim(-1, 1).to(torch.float32).cpu()
    made: dict[int, ControlApplied] = {}
    out = []
    for conditioning in conditionings:
        items = []
        for item in conditioning:
            previous = item.extras.get(CONTROL_KEY)
            control = made.get(id(previous))
            if control is None:
                control = ControlApplied(control_net, hint, float(strength), float(start_percent), float(end_percent),
                                         previous)
                made[id(previous)] = control
            items.append(replace(item, extras={**item.extras, CONTROL_KEY: control}))
        out.append(tuple(items))
    return tuple(out)


class ControlNetLoader(Node):
    schema = NodeSchema(
        type_id="ControlNetLoader", display_name="Load ControlNet Model", category="loaders",
        description="Loads a ControlNet: original (control_model.*) or diffusers layout, file or folder.",
        inputs=(Combo("control_net_name", _folder("controlnet")),),
        outputs=(Out("CONTROL_NET"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, control_net_name: str) -> tuple[ControlNetHandle]:
        from .sd.controlnet import load_controlnet

        path = ctx.env.models.resolve("controlnet", control_net_name)
        return (load_controlnet(path, manager=ctx.env.manager, dtype=unet_dtype(ctx.env)),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, control_net_name: str) -> Any:
        return _file_fingerprint(ctx, "controlnet", control_net_name)


class ControlNetApplyAdvanced(Node):
    schema = NodeSchema(
        type_id="ControlNetApplyAdvanced", display_name="Apply ControlNet", category="conditioning/controlnet",
        description="Guides sampling with a hint image between start_percent and end_percent of the schedule.",
        inputs=(Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
                Socket("control_net", "CONTROL_NET"), Socket("image", "IMAGE"),
                Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
                Float("start_percent", 0.0, min=0.0, max=1.0, step=0.001),
                Float("end_percent", 1.0, min=0.0, max=1.0, step=0.001),
                Socket("vae", "VAE", optional=True,
                       tooltip="Only for ControlNets that take latent hints; SD1/SD2/SDXL ControlNets ignore it.")),
        outputs=(Out("CONDITIONING", "positive"), Out("CONDITIONING", "negative")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, positive: Conditioning, negative: Conditioning, control_net: ControlNetHandle,
                image: torch.Tensor, strength: float, start_percent: float, end_percent: float,
                vae: Any = None) -> tuple[Conditioning, Conditioning]:
        if start_percent > end_percent:
            raise ValueError(f"start_percent {start_percent} is after end_percent {end_percent}")
        new_positive, new_negative = apply_control((positive, negative), control_net, image, strength,
                                                   start_percent, end_percent)
        return new_positive, new_negative


class ControlNetApply(Node):
    schema = NodeSchema(
        type_id="ControlNetApply", display_name="Apply ControlNet (OLD)", category="conditioning/controlnet",
        description="Older form: one conditioning, the whole schedule.",
        inputs=(Socket("conditioning", "CONDITIONING"), Socket("control_net", "CONTROL_NET"),
                Socket("image", "IMAGE"), Float("strength", 1.0, min=0.0, max=10.0, step=0.01)),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, conditioning: Conditioning, control_net: ControlNetHandle,
                image: torch.Tensor, strength: float) -> tuple[Conditioning]:
        return (apply_control((conditioning,), control_net, image, strength)[0],)


NODES = (ControlNetLoader, ControlNetApplyAdvanced, ControlNetApply)
