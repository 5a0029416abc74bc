"""SetUnionControlNetType: which control kind a union ControlNet (ControlNet++) is told its hint is."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodegraph import Combo, Node, NodeContext, NodeSchema, Out, Socket

from ..sd.controlnet_union import UNION_CONTROLNET_TYPES

if TYPE_CHECKING:  # the ControlNet module imports the loaders: only when a node runs
    from ..sd.controlnet import ControlNetHandle


class SetUnionControlNetType(Node):
    schema = NodeSchema(
        type_id="SetUnionControlNetType", display_name="SetUnionControlNetType", category="conditioning/controlnet",
        description="A new handle on the same union ControlNet whose hints are read as the chosen kind "
                    "(ControlNet++'s task embedding); other ControlNets ignore it.",
        inputs=(Socket("control_net", "CONTROL_NET"), Combo("type", tuple(UNION_CONTROLNET_TYPES))),
        outputs=(Out("CONTROL_NET"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, control_net: ControlNetHandle, type: str) -> tuple[ControlNetHandle]:
        number = UNION_CONTROLNET_TYPES.get(type, -1)
        return (control_net.with_extra("control_type", (number,) if number >= 0 else ()),)
