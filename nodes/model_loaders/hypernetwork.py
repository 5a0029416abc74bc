"""HypernetworkLoader: an AUTOMATIC1111 hypernetwork file applied to a MODEL's attention (nodes/sd/hypernetwork.py)."""

from __future__ import annotations

from typing import Any

from nodegraph import Combo, Float, Node, NodeContext, NodeSchema, Out, Socket

from ..loaders import _file_fingerprint, _folder
from ..sd.types import ModelHandle


class HypernetworkLoader(Node):
    schema = NodeSchema(
        type_id="HypernetworkLoader", display_name="HypernetworkLoader", category="loaders",
        description="Adds a hypernetwork's key/value MLPs to every attention layer (a new MODEL; the input is "
                    "unchanged).",
        inputs=(Socket("model", "MODEL"), Combo("hypernetwork_name", _folder("hypernetworks")),
                Float("strength", 1.0, min=-10.0, max=10.0, step=0.01)),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, hypernetwork_name: str,
                strength: float) -> tuple[ModelHandle]:
        from ..sd.hypernetwork import build_hypernetwork, hypernetwork_patch
        from ..sd.loading.files import file_signature, read_raw

        path = ctx.env.models.resolve("hypernetworks", hypernetwork_name)

        def load(device: str) -> Any:
            data, _ = read_raw(path)
            if not isinstance(data, dict):
                raise ValueError(f"{path.name}: not a hypernetwork (expected a dict, found {type(data).__name__})")
            return build_hypernetwork(data, path.name).to(device)

        ref = ctx.env.manager.ref((file_signature(path), "hypernetwork"), load, name=f"{path.name} hypernetwork")
        ref.get()  # small: read now, so a broken file fails in this node
        return (model.with_patch(hypernetwork_patch(ref.get, strength, hypernetwork_name)),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, hypernetwork_name: str, **_: Any) -> Any:
        return _file_fingerprint(ctx, "hypernetworks", hypernetwork_name)


NODES = (HypernetworkLoader,)
