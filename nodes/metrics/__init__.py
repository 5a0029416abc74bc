"""Evaluation metrics as nodes (menu "evaluation"): FID, KID, Inception Score, precision/recall, LPIPS, CLIP score
and conditional accuracy, with loaders of their networks. The maths lives in nodes/sd/metrics/."""

from typing import Any

from ..models.embedded import default_adapter_path
from .agreement import CLIPScore, ConditionalAccuracy, LPIPSMetric
from .distribution import FID, KID, InceptionScore, PrecisionRecall
from .networks import LPIPS_FOLDER, CLIPVisionFeatureModel, FIDInceptionLoader, LpipsHandle, LPIPSLoader

NODES = (FIDInceptionLoader, CLIPVisionFeatureModel, LPIPSLoader, FID, KID, InceptionScore, PrecisionRecall,
         LPIPSMetric, CLIPScore, ConditionalAccuracy)


def add_builtin_networks(env: Any) -> None:
    """List the shipped CLIP vision tower under `lpips` too: LPIPS's formula on its layers works out of the box."""
    path = default_adapter_path("clip_vision")
    if path.is_file():
        env.models.add_builtin(LPIPS_FOLDER, path.name, path)


__all__ = ["CLIPScore", "CLIPVisionFeatureModel", "ConditionalAccuracy", "FID", "FIDInceptionLoader",
           "InceptionScore", "KID", "LPIPSLoader", "LPIPSMetric", "LpipsHandle", "NODES", "PrecisionRecall",
           "add_builtin_networks"]
