"""Model patch nodes that change how the UNet runs, not what it computes: TorchCompileModel (ComfyUI's)."""

from __future__ import annotations

from dataclasses import replace

from nodegraph import Combo, Node, NodeContext, NodeSchema, Out, Socket

from nodes.sd.types import COMPILE_BACKENDS, ModelHandle


class TorchCompileModel(Node):
    schema = NodeSchema(
        type_id="TorchCompileModel", display_name="TorchCompileModel", category="_for_testing",
        description="Runs the diffusion model through torch.compile: the first run at a new size compiles "
                    "(slow), later runs and prompts at that size reuse it (faster steps on a GPU).",
        inputs=(Socket("model", "MODEL"), Combo("backend", COMPILE_BACKENDS)),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, backend: str) -> tuple[ModelHandle]:
        return (replace(model, compile_backend=backend),)


NODES = (TorchCompileModel,)
