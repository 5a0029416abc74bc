"""ComfyUI's other loaders of the model kinds we load: a checkpoint with its LDM config file, a diffusers folder
from the `diffusers` model folder, and a "diff" ControlNet stored as its difference from a UNet."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nodegraph import Combo, Node, NodeContext, NodeSchema, Out, Socket

from .loaders import CheckpointLoaderSimple, _file_fingerprint, _folder, part_dtypes, unet_dtype
from .sd.types import ClipHandle, ModelHandle, VaeHandle

PARAMETERIZATIONS = {"eps": "epsilon", "v": "v_prediction"}
"""An LDM config's `model.params.parameterization` -> our prediction type."""


def ldm_config_overrides(path: Path) -> dict[str, Any]:
    """What an original (LDM) YAML config says that a checkpoint's keys cannot: the prediction type and the VAE's
    latent scale. Raises ValueError naming the file for anything else than such a config."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"config {path.name}: cannot read it as YAML: {error}") from error
    params = config.get("model", {}).get("params") if isinstance(config, dict) else None
    if not isinstance(params, dict):
        raise ValueError(f"config {path.name}: not an LDM model config (no model.params)")
    overrides: dict[str, Any] = {}
    parameterization = params.get("parameterization", "eps")
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"config {path.name}: parameterization {parameterization!r} is not one of "
                         f"{sorted(PARAMETERIZATIONS)}")
    overrides["prediction"] = PARAMETERIZATIONS[parameterization]
    if "scale_factor" in params:
        overrides["scaling_factor"] = float(params["scale_factor"])
    return overrides


class CheckpointLoader(Node):
    schema = NodeSchema(
        type_id="CheckpointLoader", display_name="Load Checkpoint With Config (DEPRECATED)",
        category="advanced/loaders",
        description="Loads a checkpoint whose prediction type and latent scale come from an LDM YAML config "
                    "(e.g. v-prediction SD2 files that carry no marker).",
        inputs=(Combo("config_name", _folder("configs")), Combo("ckpt_name", _folder("checkpoints"))),
        outputs=(Out("MODEL"), Out("CLIP"), Out("VAE")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, config_name: str,
                ckpt_name: str) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
        overrides = ldm_config_overrides(ctx.env.models.resolve("configs", config_name))
        model, clip, vae = CheckpointLoaderSimple.execute(ctx, ckpt_name=ckpt_name)
        model = replace(model, prediction=overrides["prediction"])
        if "scaling_factor" in overrides:
            vae = replace(vae, scaling_factor=overrides["scaling_factor"])
        return (model, clip, vae)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, config_name: str, ckpt_name: str) -> Any:
        return [_file_fingerprint(ctx, "configs", config_name), _file_fingerprint(ctx, "checkpoints", ckpt_name)]


class DiffusersLoader(Node):
    schema = NodeSchema(
        type_id="DiffusersLoader", display_name="DiffusersLoader", category="advanced/loaders/deprecated",
        description="Loads a diffusers pipeline folder (one holding model_index.json) from the diffusers folder.",
        inputs=(Combo("model_path", _folder("diffusers")),),
        outputs=(Out("MODEL"), Out("CLIP"), Out("VAE")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model_path: str) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
        from .sd.loading import inspected, load_checkpoint

        path = ctx.env.models.resolve("diffusers", model_path)
        opened = inspected(path, ctx.env.manager)
        dtypes = part_dtypes(ctx.env, force_upcast=opened.vae_config.get("force_upcast", True))
        loaded = load_checkpoint(path, manager=ctx.env.manager, dtype=dtypes.unet, text_dtype=dtypes.text,
                                 vae_dtype=dtypes.vae, opened=opened)
        embedding_dirs = tuple(str(d) for d in ctx.env.models.folder_dirs("embeddings"))
        return (loaded.model, replace(loaded.clip, embedding_dirs=embedding_dirs), loaded.vae)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, model_path: str) -> Any:
        return _file_fingerprint(ctx, "diffusers", model_path)


def is_difference_file(path: Path) -> bool:
    """A diff ControlNet marks itself with a `difference` tensor (ComfyUI's convention)."""
    if path.is_dir():
        return False
    from .sd.loading.files import WeightFile

    with WeightFile(path) as weights:
        return "difference" in weights


def add_unet_weights(controlnet: torch.nn.Module, unet: torch.nn.Module) -> torch.nn.Module:
    """A copy of a diff ControlNet with the UNet's weights added to the parts it copies from the UNet (its
    encoder: conv_in, time and added embeddings, down and mid blocks share the UNet's names and shapes)."""
    restored = copy.deepcopy(controlnet)
    unet_weights = unet.state_dict()
    with torch.no_grad():
        for name, tensor in restored.state_dict().items():
            base = unet_weights.get(name)
            if base is not None and base.shape == tensor.shape:
                tensor.add_(base.to(tensor.device, tensor.dtype))
    return restored


class DiffControlNetLoader(Node):
    schema = NodeSchema(
        type_id="DiffControlNetLoader", display_name="Load ControlNet Model (diff)", category="loaders",
        description="Loads a ControlNet stored as its difference from a UNet, adding the given model's weights "
                    "(a plain ControlNet file loads as it is).",
        inputs=(Socket("model", "MODEL"), Combo("control_net_name", _folder("controlnet"))),
        outputs=(Out("CONTROL_NET"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, control_net_name: str) -> tuple[Any]:
        from nodegraph.models import ModelRef, as_ref
        from nodegraph.memory import model_nbytes

        from .sd.controlnet import load_controlnet

        path = ctx.env.models.resolve("controlnet", control_net_name)
        handle = load_controlnet(path, manager=ctx.env.manager, dtype=unet_dtype(ctx.env))
        if not is_difference_file(path):
            return (handle,)
        unet_ref = model.unet_ref
        unet_key = unet_ref.key if isinstance(unet_ref, ModelRef) else id(unet_ref)
        derived = as_ref(handle.model_ref, "ControlNet").derive(
            ("diff", unet_key), lambda net: add_unet_weights(net, model.unet), size=model_nbytes,
            name=f"ControlNet {path.name} + {getattr(unet_ref, 'name', 'UNet')}")
        derived.get()  # build now, so a mismatched model fails in this node
        return (replace(handle, model_ref=derived),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, control_net_name: str) -> Any:
        return _file_fingerprint(ctx, "controlnet", control_net_name)


NODES = (CheckpointLoader, DiffusersLoader, DiffControlNetLoader)
