"""ComfyUI's LossGraphNode (training): the loss curve of a training run as a preview image."""

from __future__ import annotations

import io

from nodegraph import Node, NodeContext, NodeResult, NodeSchema, Socket, String
from nodegraph.formats.png import png_info
from nodegraph.paths import output_prefix_problem

from ..image.files import save_output
from ..sd.finetune.lora_train import LossHistory
from ..sd.finetune.plot import loss_graph


class LossGraphNode(Node):
    schema = NodeSchema(
        type_id="LossGraphNode", display_name="Plot Loss Graph", category="training",
        description="Plots the loss of every training step and shows it (written to the temp folder).",
        inputs=(Socket("loss", "LOSS_MAP"), String("filename_prefix", "loss_graph", check=output_prefix_problem)),
        output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, loss: LossHistory, filename_prefix: str) -> NodeResult:
        meta = ctx.metadata
        buffer = io.BytesIO()
        loss_graph(loss.values).save(buffer, "PNG", pnginfo=png_info(meta.get("prompt"), meta.get("workflow"),
                                                                     meta.get("nodegraph_workflow")))
        saved = save_output(ctx.env.temp_dir, filename_prefix, "png", buffer.getvalue(), "temp")
        return NodeResult(ui={"images": [saved]})


NODES = (LossGraphNode,)
