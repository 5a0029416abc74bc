"""TextToImageModelEdit: TIME (Orgad et al. 2023, arXiv 2303.08084), a closed-form edit of the UNet's
cross-attention key/value projections so a source phrase means what a destination phrase did.

The returned MODEL's UNet is a copy derived from the input's by the model manager (only the edited projections
are new tensors); the input MODEL and its cached UNet are untouched, and CheckpointSave / ModelSave write the
edited weights. The CLIP is only read (to embed the prompts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodegraph import Boolean, Float, Node, NodeContext, NodeSchema, Out, Socket, String

if TYPE_CHECKING:
    from ..sd.types import ClipHandle, ModelHandle


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


class TextToImageModelEdit(Node):
    schema = NodeSchema(
        type_id="TextToImageModelEdit", display_name="Text-to-Image Model Edit (TIME)",
        category="advanced/model_editing",
        description="Edits the cross-attention projections so the source prompt acts as the destination prompt "
                    "(TIME, Orgad et al. 2023). One edit per line: line k of the source pairs with line k of the "
                    "destination. Preserved prompts (one per line) keep their meaning.",
        inputs=(Socket("model", "MODEL"), Socket("clip", "CLIP"),
                String("source_prompt", "circle", multiline=True),
                String("destination_prompt", "square", multiline=True),
                Float("lamb", 0.1, min=0.0001, max=100000.0, step=0.01,
                      tooltip="TIME's lambda: how strongly the weights are held to the original (diffusers' lamb). "
                              "Larger keeps more of the model; smaller edits harder."),
                Boolean("edit_keys", True, tooltip="Edit to_k as well as to_v (diffusers' with_to_k)."),
                Boolean("augment", True, tooltip='Also edit the phrasings "A photo of ...", "An image of ...", '
                                                 '"A picture of ..." (diffusers\' with_augs).'),
                String("preserve_prompts", "", multiline=True,
                       tooltip="Prompts whose meaning must not change, one per line (mapped to themselves).")),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, clip: ClipHandle, source_prompt: str,
                destination_prompt: str, lamb: float, edit_keys: bool, augment: bool,
                preserve_prompts: str) -> tuple[ModelHandle]:
        from ..sd.model_editing import edit_model, edit_pairs, joined

        sources, destinations = _lines(source_prompt), _lines(destination_prompt)
        if not sources or len(sources) != len(destinations):
            raise ValueError(f"TextToImageModelEdit: source_prompt has {len(sources)} non-empty line(s) and "
                             f"destination_prompt {len(destinations)}; give one destination line per source line")
        pairs = [edit_pairs(clip, s, d, augment=augment) for s, d in zip(sources, destinations)]
        preserved = [edit_pairs(clip, p, p, augment=False) for p in _lines(preserve_prompts)]
        edited = edit_model(model, joined(pairs + preserved), lamb=lamb, keys=edit_keys)
        edited.unet  # built now (once, by the model manager), so a mismatched CLIP fails in this node
        return (edited,)
