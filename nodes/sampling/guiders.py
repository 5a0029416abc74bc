"""GUIDER nodes (CFGGuider, DualCFGGuider, BasicGuider, PerpNegGuider) and the PerpNeg model patch.

A GUIDER is a frozen payload (nodes/sd/guiders.py) holding the model, its conditioning and the combination
rule; SamplerCustomAdvanced builds its denoiser per run.
"""

from __future__ import annotations

from nodegraph import Combo, Float, Node, NodeContext, NodeSchema, Out, Socket
from nodegraph.schema import InputSpec

from ..sd.guiders import BasicGuide, CFGGuide, DualCFGGuide, PerpNegGuide
from ..sd.perp_neg import perp_neg_patch
from ..sd.types import Conditioning, ModelHandle

CATEGORY = "sampling/custom_sampling/guiders"


def _cfg(name: str) -> InputSpec:
    return Float(name, 8.0, min=0.0, max=100.0, step=0.1, round=0.01)


class CFGGuider(Node):
    schema = NodeSchema(
        type_id="CFGGuider", display_name="CFGGuider", category=CATEGORY,
        description="Classifier-free guidance: KSampler's guidance as a GUIDER.",
        inputs=(Socket("model", "MODEL"), Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
                _cfg("cfg")),
        outputs=(Out("GUIDER"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, positive: Conditioning, negative: Conditioning,
                cfg: float) -> tuple[CFGGuide]:
        return (CFGGuide(model, tuple(positive), tuple(negative), cfg),)


class DualCFGGuider(Node):
    schema = NodeSchema(
        type_id="DualCFGGuider", display_name="DualCFGGuider", category=CATEGORY,
        description="Guides by two prompts with two scales: cond2 against the negative, cond1 against cond2; "
                    "\"nested\" applies the second scale to the first guidance.",
        inputs=(Socket("model", "MODEL"), Socket("cond1", "CONDITIONING"), Socket("cond2", "CONDITIONING"),
                Socket("negative", "CONDITIONING"), _cfg("cfg_conds"), _cfg("cfg_cond2_negative"),
                Combo("style", ("regular", "nested"))),
        outputs=(Out("GUIDER"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, cond1: Conditioning, cond2: Conditioning,
                negative: Conditioning, cfg_conds: float, cfg_cond2_negative: float, style: str) -> tuple[DualCFGGuide]:
        return (DualCFGGuide(model, tuple(cond1), tuple(cond2), tuple(negative), cfg_conds, cfg_cond2_negative,
                             nested=style == "nested"),)


class BasicGuider(Node):
    schema = NodeSchema(
        type_id="BasicGuider", display_name="BasicGuider", category=CATEGORY,
        description="Follows one conditioning without guidance (CFG at scale 1; no negative is evaluated).",
        inputs=(Socket("model", "MODEL"), Socket("conditioning", "CONDITIONING")),
        outputs=(Out("GUIDER"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, conditioning: Conditioning) -> tuple[BasicGuide]:
        return (BasicGuide(model, tuple(conditioning)),)


class PerpNegGuider(Node):
    schema = NodeSchema(
        type_id="PerpNegGuider", display_name="PerpNegGuider", category="_for_testing",
        description="Perp-Neg guidance (Armandpour et al. 2023): removes only the part of the negative prompt "
                    "perpendicular to the positive, relative to an empty prompt.",
        inputs=(Socket("model", "MODEL"), Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
                Socket("empty_conditioning", "CONDITIONING"), _cfg("cfg"),
                Float("neg_scale", 1.0, min=0.0, max=100.0, step=0.01)),
        outputs=(Out("GUIDER"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, positive: Conditioning, negative: Conditioning,
                empty_conditioning: Conditioning, cfg: float, neg_scale: float) -> tuple[PerpNegGuide]:
        return (PerpNegGuide(model, tuple(positive), tuple(negative), tuple(empty_conditioning), cfg, neg_scale),)


class PerpNeg(Node):
    schema = NodeSchema(
        type_id="PerpNeg", display_name="Perp-Neg (DEPRECATED by PerpNegGuider)", category="_for_testing",
        description="Perp-Neg as a MODEL patch: KSampler's CFG becomes Perp-Neg against empty_conditioning.",
        inputs=(Socket("model", "MODEL"), Socket("empty_conditioning", "CONDITIONING"),
                Float("neg_scale", 1.0, min=0.0, max=100.0, step=0.01)),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, empty_conditioning: Conditioning,
                neg_scale: float) -> tuple[ModelHandle]:
        return (model.with_patch(perp_neg_patch(tuple(empty_conditioning), neg_scale)),)


NODES = (CFGGuider, DualCFGGuider, BasicGuider, PerpNegGuider, PerpNeg)
