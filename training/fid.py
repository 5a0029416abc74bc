"""A Fréchet distance between generated and real shapes images, on fixed hand-made features.

FID (Heusel et al. 2017, arXiv:1706.08500) compares Gaussians fitted to image features. Its usual
extractor, Inception-v3, cannot be downloaded here, and features from our own VAE would change whenever
the model does, making numbers from two runs incomparable. So the features are fixed functions of the
pixels, chosen for what this data varies in — "SF-FID v1", not comparable with Inception FID:

- colour: a 4x4x4 RGB histogram (64 values, square-rooted so small regions still count);
- shape and layout: gradient-orientation histograms (8 unsigned orientations) on a 4x4 grid of a 64 px
  grey image (128 values, square-rooted, HOG-like, Dalal & Triggs 2005).

192 dimensions in all, numpy only, deterministic. Compare runs only at equal image counts: FID is biased
upward at small sample sizes (the real-vs-real `floor` shows how much).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from nodes.sd.metrics import statistics as stats

FEATURES_NAME = "SF-FID v1: RGB histogram 4^3 + 4x4x8 HOG at 64 px, 192-d"
_GRID, _ORIENTATIONS, _SIDE = 4, 8, 64


def colour_histogram(pixels: np.ndarray) -> np.ndarray:
    """64-bin joint RGB histogram of uint8 pixels, as square-rooted fractions."""
    bins = (pixels // 64).astype(np.int64)
    index = bins[..., 0] * 16 + bins[..., 1] * 4 + bins[..., 2]
    counts = np.bincount(index.ravel(), minlength=64).astype(np.float64)
    return np.sqrt(counts / counts.sum())


def orientation_histograms(grey: np.ndarray) -> np.ndarray:
    """Magnitude-weighted unsigned gradient orientations per cell of a 4x4 grid, L2-normalised, square-rooted."""
    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    orientation = ((np.arctan2(gy, gx) % np.pi) / np.pi * _ORIENTATIONS).astype(np.int64) % _ORIENTATIONS
    cell = grey.shape[0] // _GRID
    out = np.zeros((_GRID, _GRID, _ORIENTATIONS))
    for i in range(_GRID):
        for j in range(_GRID):
            window = (slice(i * cell, (i + 1) * cell), slice(j * cell, (j + 1) * cell))
            out[i, j] = np.bincount(orientation[window].ravel(), magnitude[window].ravel(), minlength=_ORIENTATIONS)
    flat = out.ravel()
    return np.sqrt(flat / (np.linalg.norm(flat) + 1e-8))


def features(images: Sequence[Image.Image]) -> np.ndarray:
    """[N, 192] features of RGB images (any size; resized to 64 px for the orientation part)."""
    rows = []
    for image in images:
        rgb = np.asarray(image.convert("RGB"))
        grey = np.asarray(image.convert("L").resize((_SIDE, _SIDE), Image.Resampling.BILINEAR), dtype=np.float64)
        rows.append(np.concatenate([colour_histogram(rgb), orientation_histograms(grey / 255.0)]))
    return np.stack(rows)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets [N, D]: the metric nodes' FID
    (nodes/sd/metrics/statistics.py), one implementation for both."""
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("FID needs at least two images on each side")
    return stats.frechet_distance(stats.gaussian_stats(torch.from_numpy(np.asarray(a, dtype=np.float64))),
                                  stats.gaussian_stats(torch.from_numpy(np.asarray(b, dtype=np.float64))))


def fid(generated: Sequence[Image.Image], real: Sequence[Image.Image]) -> float:
    """SF-FID between two image sets."""
    return frechet_distance(features(generated), features(real))
