"""NoisyClassifierLoader (loaders) and ClassifierGuidance (model_patches): classifier guidance as a MODEL patch.

The guidance is a "guidance" ModelPatch: after CFG (or without it, at cfg 1) the denoiser's x0 gets
scale * sigma^2 * grad_x log p(class | x_t, sigma) from the classifier (Dhariwal & Nichol 2021, arXiv
2105.05233), so it works with every sampler and scheduler and stacks with the other patches.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodegraph import Combo, Float, Node, NodeContext, NodeSchema, Out, Socket, String

from ..loaders import _file_fingerprint, _folder

if TYPE_CHECKING:
    from ..sd.noisy_classifier import ClassifierHandle
    from ..sd.types import ModelHandle

FOLDER = "classifiers"


def load_classifier_handle(path: str | Path, manager: Any = None) -> ClassifierHandle:
    """A NOISY_CLASSIFIER handle whose classifier the model manager loads (kept by file identity)."""
    from nodegraph.models import ModelManager

    from ..sd.loading.files import file_signature
    from ..sd.noisy_classifier import ClassifierHandle, load_classifier

    path = Path(path)
    manager = manager if manager is not None else ModelManager("cpu", ram_budget=sys.maxsize)
    ref = manager.ref((file_signature(path), "noisy_classifier"), lambda device: load_classifier(path).to(device),
                      name=f"classifier {path.name}")
    classifier = ref.get()  # load now, so a broken file fails in its loader node
    return ClassifierHandle(ref, str(path), dict(classifier.heads_classes))


class NoisyClassifierLoader(Node):
    schema = NodeSchema(
        type_id="NoisyClassifierLoader", display_name="Load Noisy Classifier", category="loaders",
        description="Loads a noise-aware latent classifier for classifier guidance (from the classifiers folder).",
        inputs=(Combo("classifier_name", _folder(FOLDER)),),
        outputs=(Out("NOISY_CLASSIFIER"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, classifier_name: str) -> tuple[ClassifierHandle]:
        return (load_classifier_handle(ctx.env.models.resolve(FOLDER, classifier_name), ctx.env.manager),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, classifier_name: str) -> Any:
        return _file_fingerprint(ctx, FOLDER, classifier_name)


class ClassifierGuidance(Node):
    schema = NodeSchema(
        type_id="ClassifierGuidance", display_name="Classifier Guidance", category="model_patches",
        description="Steers sampling toward a class with the gradient of a noise-aware classifier's log p(class | "
                    "x_t) (Dhariwal & Nichol 2021). Works with any sampler, with or without CFG.",
        inputs=(Socket("model", "MODEL"), Socket("classifier", "NOISY_CLASSIFIER"),
                String("class_name", "circle", tooltip="A class the classifier knows (the embedded one: a shape "
                                                       "or a foreground colour)."),
                Float("scale", 1.0, min=0.0, max=1000.0, step=0.1,
                      tooltip="Guidance scale s: x0 += s * sigma^2 * grad log p(class | x_t).")),
        outputs=(Out("MODEL"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, classifier: ClassifierHandle, class_name: str,
                scale: float) -> tuple[ModelHandle]:
        from ..sd.noisy_classifier import classifier_guidance_patch

        try:
            patch = classifier_guidance_patch(classifier, class_name.strip(), scale)
        except ValueError as error:
            raise ValueError(f"ClassifierGuidance: {error}") from None
        return (model.with_patch(patch),)
