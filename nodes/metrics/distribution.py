"""Set metrics against a reference set: FID, KID, precision/recall; and the Inception Score of a set alone.

Each returns FLOATs that show on the node and in the run's outputs. The reference is a folder of images under the
input folder (its features computed once per feature network and folder content, cached under the temp folder),
or an IMAGE batch wired into `reference_images` (which then takes precedence).
"""

from __future__ import annotations

from typing import Any

import torch

from nodegraph import Int, Node, NodeContext, NodeResult, NodeSchema, Out, Socket, String

from ..sd.metrics import statistics as stats
from ..sd.metrics.features import FeatureModel, image_features, reference_features

COMPARABLE = ("Comparable only with numbers from the same feature model (FID's Inception from Load FID Inception: "
              "published figures; the shipped CLIP tower: other runs with it) at the same image counts.")


def _reference_inputs() -> tuple[Any, ...]:
    return (String("reference_folder", "", tooltip="a folder of images under the input folder"),)


def _reference(ctx: NodeContext, model: FeatureModel, reference_folder: str,
               reference_images: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference features (and logits): from the wired batch, else from the folder (cached)."""
    if reference_images is not None:
        return image_features(model, reference_images)
    if not reference_folder.strip():
        raise ValueError("no reference: set reference_folder (a folder under the input folder) or wire "
                         "reference_images")
    folder = ctx.env.input_path(reference_folder.strip())
    from ..sd.metrics.features import folder_images

    folder_images(folder)  # a clear error for a missing or empty folder before fingerprinting
    return reference_features(model, folder, cache_dir=ctx.env.temp_dir, digest=ctx.fingerprint_file(folder),
                              progress=ctx.progress)


def _folder_fingerprint(ctx: NodeContext, reference_folder: str) -> Any:
    """The reference folder's content digest: a changed folder re-runs the metric."""
    if not reference_folder.strip():
        return None
    try:
        return ctx.fingerprint_file(ctx.env.input_path(reference_folder.strip()))
    except (OSError, ValueError):
        return None


def _shown(text: str, *values: float) -> NodeResult:
    return NodeResult(outputs=values, ui={"text": [text]})


class FID(Node):
    schema = NodeSchema(
        type_id="MetricFID", display_name="FID", category="evaluation",
        description="Fréchet distance (Heusel et al. 2017) between Gaussians fitted to the images' and the "
                    "reference's features; 0 for identical statistics, lower is better. " + COMPARABLE,
        inputs=(Socket("images", "IMAGE"), Socket("feature_model", "FEATURE_MODEL"), *_reference_inputs(),
                Socket("reference_images", "IMAGE", optional=True)),
        outputs=(Out("FLOAT", "fid"),), output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, images: torch.Tensor, feature_model: FeatureModel, reference_folder: str,
                reference_images: torch.Tensor | None = None) -> NodeResult:
        generated, _ = image_features(feature_model, images)
        reference, _ = _reference(ctx, feature_model, reference_folder, reference_images)
        value = stats.frechet_distance(stats.gaussian_stats(generated), stats.gaussian_stats(reference))
        return _shown(f"FID {value:.4f} ({len(generated)} images vs {len(reference)} references)", value)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, reference_folder: str = "", **_: Any) -> Any:
        return _folder_fingerprint(ctx, reference_folder)


class KID(Node):
    schema = NodeSchema(
        type_id="MetricKID", display_name="KID", category="evaluation",
        description="Kernel distance (Binkowski et al. 2018): unbiased squared MMD with a cubic polynomial kernel "
                    "on the features, mean and deviation over random subsets (seeded); ~0 for the same "
                    "distribution, without FID's small-sample bias. " + COMPARABLE,
        inputs=(Socket("images", "IMAGE"), Socket("feature_model", "FEATURE_MODEL"), *_reference_inputs(),
                Int("subsets", 100, min=1, max=10000), Int("subset_size", 1000, min=2, max=100000),
                Int("seed", 0, min=0, max=2**31 - 1), Socket("reference_images", "IMAGE", optional=True)),
        outputs=(Out("FLOAT", "kid"), Out("FLOAT", "kid_std")), output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, images: torch.Tensor, feature_model: FeatureModel, reference_folder: str,
                subsets: int, subset_size: int, seed: int, reference_images: torch.Tensor | None = None,
                ) -> NodeResult:
        generated, _ = image_features(feature_model, images)
        reference, _ = _reference(ctx, feature_model, reference_folder, reference_images)
        mean, std = stats.kernel_distance(generated, reference, subsets=subsets, subset_size=subset_size, seed=seed)
        return _shown(f"KID {mean:.6f} ± {std:.6f}", mean, std)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, reference_folder: str = "", **_: Any) -> Any:
        return _folder_fingerprint(ctx, reference_folder)


class InceptionScore(Node):
    schema = NodeSchema(
        type_id="MetricInceptionScore", display_name="Inception Score", category="evaluation",
        description="Inception Score (Salimans et al. 2016): exp of the mean KL divergence between each image's "
                    "class probabilities and their average, per split; from 1 (no confident, varied classes) to "
                    "the class count, higher is better. Needs class logits: FID's Inception (1008 classes) or a "
                    "CLIP feature model with class prompts. " + COMPARABLE,
        inputs=(Socket("images", "IMAGE"), Socket("feature_model", "FEATURE_MODEL"), Int("splits", 10, min=1, max=100)),
        outputs=(Out("FLOAT", "inception_score"), Out("FLOAT", "inception_score_std")), output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, images: torch.Tensor, feature_model: FeatureModel, splits: int) -> NodeResult:
        _, logits = image_features(feature_model, images)
        if logits is None:
            raise ValueError("Inception Score needs class probabilities: this CLIP feature model has no class prompts "
                             "(wire a CLIP text encoder into CLIP Vision as Feature Model) or load FID Inception")
        mean, std = stats.inception_score(logits, splits=splits)
        return _shown(f"IS {mean:.4f} ± {std:.4f} ({logits.shape[1]} classes)", mean, std)


class PrecisionRecall(Node):
    schema = NodeSchema(
        type_id="MetricPrecisionRecall", display_name="Precision and Recall", category="evaluation",
        description="Improved precision and recall (Kynkäänniemi et al. 2019): the fraction of images inside the "
                    "reference's k-nearest-neighbour feature manifold (fidelity) and of references inside the "
                    "images' manifold (variety); both in 0..1, higher is better. " + COMPARABLE,
        inputs=(Socket("images", "IMAGE"), Socket("feature_model", "FEATURE_MODEL"), *_reference_inputs(),
                Int("k", 3, min=1, max=100), Socket("reference_images", "IMAGE", optional=True)),
        outputs=(Out("FLOAT", "precision"), Out("FLOAT", "recall")), output_node=True,
    )

    @classmethod
    def execute(cls, ctx: NodeContext, images: torch.Tensor, feature_model: FeatureModel, reference_folder: str,
                k: int, reference_images: torch.Tensor | None = None) -> NodeResult:
        generated, _ = image_features(feature_model, images)
        reference, _ = _reference(ctx, feature_model, reference_folder, reference_images)
        precision, recall = stats.precision_recall(generated, reference, k=k)
        return _shown(f"precision {precision:.4f}, recall {recall:.4f} (k={k})", precision, recall)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, reference_folder: str = "", **_: Any) -> Any:
        return _folder_fingerprint(ctx, reference_folder)


NODES = (FID, KID, InceptionScore, PrecisionRecall)
