"""ComfyUI's GLIGEN nodes: GLIGENLoader (loaders) and GLIGENTextBoxApply (conditioning/gligen).

The loader reads a GLIGEN text-box model from the `gligen` folder (original LDM or diffusers key layout)
into the model manager; the text-box node adds a phrase in a box to every entry of a conditioning. Sampling
then grounds those entries' UNet calls (nodes/sd/gligen.py); the model and the other entries stay as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nodegraph import Combo, Int, Node, NodeContext, NodeSchema, Out, Socket, String

from ..loaders import _file_fingerprint, _folder

if TYPE_CHECKING:
    from ..sd.gligen import GligenHandle
    from ..sd.types import ClipHandle, Conditioning

FOLDER = "gligen"
MAX_RESOLUTION = 16384


class GLIGENLoader(Node):
    schema = NodeSchema(
        type_id="GLIGENLoader", display_name="GLIGENLoader", category="loaders",
        description="Loads a GLIGEN text-box model (position net and gated self-attention layers).",
        inputs=(Combo("gligen_name", _folder(FOLDER)),),
        outputs=(Out("GLIGEN"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, gligen_name: str) -> tuple[GligenHandle]:
        from ..sd.gligen import load_gligen

        return (load_gligen(ctx.env.models.resolve(FOLDER, gligen_name), manager=ctx.env.manager),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, gligen_name: str) -> Any:
        return _file_fingerprint(ctx, FOLDER, gligen_name)


def _box_int(name: str, default: int, minimum: int) -> Any:
    return Int(name, default, min=minimum, max=MAX_RESOLUTION, step=8)


class GLIGENTextBoxApply(Node):
    schema = NodeSchema(
        type_id="GLIGENTextBoxApply", display_name="GLIGENTextBoxApply", category="conditioning/gligen",
        description="Asks for `text` inside the box (image pixels; x, y its top-left corner) on every entry.",
        inputs=(Socket("conditioning_to", "CONDITIONING"), Socket("clip", "CLIP"),
                Socket("gligen_textbox_model", "GLIGEN"), String("text", multiline=True),
                _box_int("width", 64, 8), _box_int("height", 64, 8), _box_int("x", 0, 0), _box_int("y", 0, 0)),
        outputs=(Out("CONDITIONING"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, conditioning_to: Conditioning, clip: ClipHandle,
                gligen_textbox_model: GligenHandle, text: str, width: int, height: int, x: int,
                y: int) -> tuple[Conditioning]:
        from ..sd.gligen import apply_textbox, phrase_embedding

        phrase = phrase_embedding(clip, text)
        return (apply_textbox(conditioning_to, gligen_textbox_model, phrase, width, height, x, y),)


NODES = (GLIGENLoader, GLIGENTextBoxApply)
