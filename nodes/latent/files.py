"""Latent files: SaveLatent writes ComfyUI's .latent format and LoadLatent reads it back.

A .latent file is a safetensors file holding "latent_tensor" (the latent as the UNet sees it) and an empty
"latent_format_version_0" marker; files without the marker come from ComfyUI's first format, stored divided by
SD1's 0.18215, and are scaled back on loading. Only safetensors is ever read (never pickle): any other content is
refused with an error naming the file, and names are resolved inside the input folder (nodegraph.paths).
"""

from __future__ import annotations

import json
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from nodegraph import Combo, Node, NodeContext, NodeResult, NodeSchema, Out, Socket, String
from nodegraph.paths import list_files, output_prefix_problem, save_new_file

from ..sd.types import Latent

LATENT_EXTENSION = ".latent"
FORMAT_MARKER = "latent_format_version_0"
FIRST_FORMAT_SCALE = 0.18215


def _input_latents(env: Any) -> list[str]:
    return list_files(env.input_dir, (LATENT_EXTENSION,)) if env is not None else []


def latent_file_bytes(samples: torch.Tensor, metadata: dict[str, str] | None = None) -> bytes:
    """A .latent file's content for a latent batch."""
    tensors = {"latent_tensor": samples.detach().to("cpu", torch.float32).contiguous(), FORMAT_MARKER: torch.tensor([])}
    return save_safetensors(tensors, metadata=metadata)


def read_latent_file(data: bytes, name: str) -> torch.Tensor:
    """The latent in a .latent file's bytes (float32, in the UNet's units); ValueError for anything else."""
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, OSError) as error:
        raise ValueError(f"LoadLatent: {name!r} is not a safetensors .latent file ({error})") from None
    if "latent_tensor" not in tensors:
        raise ValueError(f"LoadLatent: {name!r} holds no 'latent_tensor' (keys: {sorted(tensors)})")
    scale = 1.0 if FORMAT_MARKER in tensors else 1.0 / FIRST_FORMAT_SCALE
    return tensors["latent_tensor"].float() * scale


class SaveLatent(Node):
    schema = NodeSchema(
        type_id="SaveLatent", display_name="SaveLatent", category="_for_testing",
        description="Saves the latent to the output folder as a .latent file (safetensors) with the workflow.",
        inputs=(Socket("samples", "LATENT"),
                String("filename_prefix", "latents/ComfyUI", check=output_prefix_problem)),
        output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples: Latent, filename_prefix: str) -> NodeResult:
        directory = ctx.env.output_dir
        meta = ctx.metadata
        metadata = {"prompt": json.dumps(meta["prompt"]) if meta.get("prompt") is not None else ""}
        if meta.get("workflow") is not None:
            metadata["workflow"] = json.dumps(meta["workflow"])
        data = latent_file_bytes(samples.samples, metadata)
        path = save_new_file(directory, filename_prefix, LATENT_EXTENSION.lstrip("."), data)
        subfolder = path.parent.relative_to(directory.resolve()).as_posix()
        saved = {"filename": path.name, "subfolder": "" if subfolder == "." else subfolder, "type": "output"}
        return NodeResult(ui={"latents": [saved]})


class LoadLatent(Node):
    schema = NodeSchema(
        type_id="LoadLatent", display_name="LoadLatent", category="_for_testing",
        description="A .latent file from the input folder (safetensors only).",
        inputs=(Combo("latent", _input_latents),),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, latent: str) -> tuple[Latent]:
        if not latent.endswith(LATENT_EXTENSION):
            raise ValueError(f"LoadLatent: {latent!r} is not a {LATENT_EXTENSION} file")
        path = ctx.env.input_path(latent)
        return (Latent(read_latent_file(path.read_bytes(), latent)),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, latent: str) -> Any:
        return ctx.fingerprint_file(ctx.env.input_path(latent))


NODES = (SaveLatent, LoadLatent)
