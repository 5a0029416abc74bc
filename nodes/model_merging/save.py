"""ComfyUI's model-saving nodes: CheckpointSave, CLIPSave, VAESave, ModelSave (advanced/model_merging) and
LoraSave (_for_testing), with ComfyUI's inputs, defaults and file names.

Files go into the output folder under `filename_prefix` as `prefix_00001_.safetensors`, through the same
safe path code as SaveImage: a prefix that leaves the output folder is refused when the prompt is validated,
and each file is written to a hidden temporary file and then linked under a free name, so no half-written
model is ever listed and nothing is overwritten. What each file holds is in nodes/sd/saving.py and
nodes/sd/lora_extract.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from nodegraph import Boolean, Combo, Int, Node, NodeContext, NodeResult, NodeSchema, Socket, String
from nodegraph.paths import next_counter, output_prefix_problem, save_new_file

from ..image.files import extra_info
from ..sd.lora_extract import LORA_TYPES, extracted_lora
from ..sd.types import ClipHandle, ModelHandle, VaeHandle


def _saving():
    """nodes.sd.saving, imported when a node first saves: it pulls in the loaders (diffusers, transformers), which
    listing the node types must not wait for."""
    from ..sd import saving

    return saving

CATEGORY = "advanced/model_merging"


def _prefix(default: str) -> Any:
    return String("filename_prefix", default, check=output_prefix_problem)


def _saved(ctx: NodeContext, prefix: str, write: Any) -> dict[str, str]:
    """Write one `.safetensors` file by `write(path)`; describe it as SaveImage describes images."""
    root = Path(ctx.env.output_dir)
    path = save_new_file(root, prefix, "safetensors", write)
    subfolder = path.parent.relative_to(root.resolve()).as_posix()
    return {"filename": path.name, "subfolder": "" if subfolder == "." else subfolder, "type": "output"}


def _metadata(ctx: NodeContext) -> dict[str, str]:
    return _saving().run_metadata(ctx.metadata.get("prompt"), extra_info(ctx))


def _title(ctx: NodeContext, prefix: str) -> str:
    """ModelSpec's title as ComfyUI writes it: the file name stem and the counter it gets."""
    return f"{Path(prefix).name} {next_counter(ctx.env.output_dir, prefix, 'safetensors')}"


def _save_model_file(ctx: NodeContext, prefix: str, tensors: Any, config: Any, extra: dict[str, str]) -> NodeResult:
    metadata = {**extra, **_metadata(ctx)}
    saved = _saved(ctx, prefix, lambda path: _saving().write_safetensors(path, tensors, metadata, config))
    return NodeResult(ui={"models": [saved]})


class CheckpointSave(Node):
    schema = NodeSchema(
        type_id="CheckpointSave", display_name="Save Checkpoint", category=CATEGORY,
        description="Writes MODEL, CLIP and VAE as one single-file checkpoint (the family's original layout) "
                    "with the workflow in its metadata.",
        inputs=(Socket("model", "MODEL"), Socket("clip", "CLIP"), Socket("vae", "VAE"),
                _prefix("checkpoints/ComfyUI")),
        output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, clip: ClipHandle, vae: VaeHandle,
                filename_prefix: str) -> NodeResult:
        tensors, config = _saving().checkpoint_tensors(model, clip, vae)
        return _save_model_file(ctx, filename_prefix, tensors, config, _saving().model_spec(model, _title(ctx, filename_prefix)))


class ModelSave(Node):
    schema = NodeSchema(
        type_id="ModelSave", display_name="ModelSave", category=CATEGORY,
        description="Writes the diffusion model (UNet) alone, as UNETLoader reads it.",
        inputs=(Socket("model", "MODEL"), _prefix("diffusion_models/ComfyUI")),
        output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, filename_prefix: str) -> NodeResult:
        tensors, config = _saving().unet_tensors(model)
        return _save_model_file(ctx, filename_prefix, tensors, config, _saving().model_spec(model, _title(ctx, filename_prefix)))


class VAESave(Node):
    schema = NodeSchema(
        type_id="VAESave", display_name="VAESave", category=CATEGORY,
        description="Writes the VAE as a standalone file (LDM layout), as VAELoader reads it.",
        inputs=(Socket("vae", "VAE"), _prefix("vae/ComfyUI_vae")),
        output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, vae: VaeHandle, filename_prefix: str) -> NodeResult:
        tensors, config = _saving().vae_tensors(vae)
        return _save_model_file(ctx, filename_prefix, tensors, config, {})


class CLIPSave(Node):
    schema = NodeSchema(
        type_id="CLIPSave", display_name="CLIPSave", category=CATEGORY,
        description="Writes each text encoder as its own file, `<prefix>_clip_l_00001_.safetensors` (and "
                    "`_clip_g` for SDXL, `_clip_h` for SD2), in transformers' CLIP layout.",
        inputs=(Socket("clip", "CLIP"), _prefix("clip/ComfyUI")),
        output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, clip: ClipHandle, filename_prefix: str) -> NodeResult:
        metadata = {"format": "pt", **_metadata(ctx)}
        saved = []
        for name, tensors, config in _saving().text_encoder_files(clip):
            write = (lambda t, c: lambda path: _saving().write_safetensors(path, t, metadata, c))(tensors, config)
            saved.append(_saved(ctx, f"{filename_prefix}_{name}", write))
        return NodeResult(ui={"models": saved})


class LoraSave(Node):
    schema = NodeSchema(
        type_id="LoraSave", display_name="Extract and Save Lora", category="_for_testing",
        description="Extracts a LoRA from a model difference (ModelMergeSubtract / CLIPMergeSubtract) by "
                    "truncated SVD at `rank` and saves it where LoraLoader can read it.",
        inputs=(_prefix("loras/ComfyUI_extracted_lora"), Int("rank", 8, min=1, max=4096, step=1),
                Combo("lora_type", LORA_TYPES), Boolean("bias_diff", True),
                Socket("model_diff", "MODEL", optional=True,
                       tooltip="The ModelSubtract output to be converted to a lora."),
                Socket("text_encoder_diff", "CLIP", optional=True,
                       tooltip="The CLIPSubtract output to be converted to a lora.")),
        output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, filename_prefix: str, rank: int, lora_type: str, bias_diff: bool,
                model_diff: ModelHandle | None = None, text_encoder_diff: ClipHandle | None = None) -> NodeResult:
        if model_diff is None and text_encoder_diff is None:
            return NodeResult()  # ComfyUI saves nothing when neither difference is linked
        tensors = extracted_lora(model_diff, text_encoder_diff, rank=rank, lora_type=lora_type,  # type: ignore[arg-type]
                                 bias_diff=bias_diff)
        saved = _saved(ctx, filename_prefix, lambda path: save_file(tensors, str(path)))
        return NodeResult(ui={"models": [saved]})


NODES = (CheckpointSave, CLIPSave, VAESave, ModelSave, LoraSave)
