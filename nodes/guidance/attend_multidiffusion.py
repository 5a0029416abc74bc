"""Attend-and-Excite and MultiDiffusion nodes: MODEL patches for subject neglect and for images larger than the
model's training size (nodes/sd/attend_excite.py, nodes/sd/multidiffusion.py)."""

from __future__ import annotations

from nodegraph import Combo, Float, Int, Node, NodeContext, NodeSchema, Out, Socket, String

from nodes.sd.types import ClipHandle, Conditioning, ModelHandle


class AttendAndExcite(Node):
    schema = NodeSchema(
        type_id="AttendAndExcite", display_name="Attend-and-Excite", category="model_patches/guidance",
        description="Moves the latent at each early step so that every subject word is strongly attended somewhere "
                    "(Chefer et al. 2023, arXiv 2301.13826): use the CONDITIONING output as the sampler's positive.",
        inputs=(Socket("model", "MODEL"), Socket("clip", "CLIP"),
                String("text", multiline=True, tooltip="The prompt (it is encoded here: the CONDITIONING output)."),
                String("words", tooltip="The subject words of the prompt to excite, separated by commas."),
                Float("scale", 20.0, min=0.0, max=1000.0, step=0.1,
                      tooltip="Gradient step size at the first step (diffusers' scale_factor); it decays to "
                              "scale * sqrt(0.5) at the last."),
                Int("max_iter_to_alter", 25, min=0, max=10000, tooltip="Steps (from the first) that move the latent."),
                String("thresholds", "0:0.05, 10:0.5, 20:0.8",
                       tooltip="step:value pairs: at that step, refine until each subject's attention reaches value."),
                Int("max_refinement_steps", 20, min=0, max=1000),
                Int("attention_downscale", 4, min=1, max=64,
                    tooltip="Cross-attention maps are read at the latent size divided by this (4: 16x16 at 512 px).")),
        outputs=(Out("MODEL"), Out("CONDITIONING")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, clip: ClipHandle, text: str, words: str, scale: float,
                max_iter_to_alter: int, thresholds: str, max_refinement_steps: int,
                attention_downscale: int) -> tuple[ModelHandle, Conditioning]:
        from nodes.sd.attend_excite import ExciteSettings, attend_excite_patch, parse_thresholds, subject_token_positions
        from nodes.sd.text import encode, tokenize

        names = [word.strip() for word in words.split(",") if word.strip()]
        if not names:
            raise ValueError("AttendAndExcite: no subject words given (e.g. 'circle, square')")
        windows = tokenize(clip, text)[0]
        if len(windows) > 1:
            raise ValueError(f"AttendAndExcite: the prompt fills {len(windows)} 77-token windows; it needs one")
        tokenizer = clip.tokenizers[0]
        word_ids = [tokenizer.word_ids(name) for name in names]
        indices, stop = subject_token_positions([token.id for token in windows[0]], word_ids,
                                                tokenizer.eos_token_id, names)
        settings = ExciteSettings(indices=indices, stop=stop, scale=scale, max_iter_to_alter=max_iter_to_alter,
                                  thresholds=parse_thresholds(thresholds), max_refinement_steps=max_refinement_steps,
                                  attention_downscale=attention_downscale)
        return model.with_patch(attend_excite_patch(settings)), (encode(clip, text),)


class MultiDiffusion(Node):
    schema = NodeSchema(
        type_id="MultiDiffusion", display_name="MultiDiffusion (Panorama)", category="model_patches/guidance",
        description="Denoises overlapping windows of the latent at every step and averages them (Bar-Tal et al. "
                    "2023, arXiv 2302.08113): panoramas and sizes beyond the model's own, without seams. Region "
                    "prompts: ConditioningSetArea / ConditioningSetMask on the positive.",
        inputs=(Socket("model", "MODEL"),
                Int("window", 64, min=1, max=2048, tooltip="Window side in latent pixels (image pixels / 8)."),
                Int("stride", 8, min=1, max=2048, tooltip="Step between windows in latent pixels."),
                Combo("weighting", ("uniform", "gaussian"),
                      tooltip="uniform: the paper's plain average; gaussian: each window weighted towards its "
                              "centre, so no window's border shows (Mixture of Diffusers).")),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, window: int, stride: int,
                weighting: str) -> tuple[ModelHandle]:
        from nodes.sd.multidiffusion import multidiffusion_patch

        return (model.with_patch(multidiffusion_patch(window, stride, weighting)),)


NODES = (AttendAndExcite, MultiDiffusion)
