"""The set statistics behind the metric nodes (nodes/sd/metrics/statistics.py): FID, KID and the Inception Score
against torchmetrics on the same features, and improved precision/recall against closed-form expectations."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from nodes.sd.metrics import statistics as stats

TOLERANCE = 1e-6
"""Relative agreement with torchmetrics on identical float64 features (measured: ~1e-12; docs/metrics.md)."""


class Passthrough(torch.nn.Module):
    """torchmetrics' custom `feature` module: the 'images' handed to it are already the features."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.num_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def features(count: int, width: int = 8, seed: int = 0, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    return (torch.randn(count, width, generator=generator, dtype=torch.float64) @ mixing) * scale + shift


def fid(a: torch.Tensor, b: torch.Tensor) -> float:
    return stats.frechet_distance(stats.gaussian_stats(a), stats.gaussian_stats(b))


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    real = features(400)
    assert abs(fid(real, real)) < 1e-8
    distances = [fid(features(400, seed=1, shift=shift), real) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances) and distances[0] < 1.0 < distances[-1]
    # a pure mean shift of s in every one of 8 dimensions adds ||mu||^2 = 8 s^2 (same covariance)
    assert fid(real + 2.0, real) == pytest.approx(32.0, rel=1e-9)


def test_fid_matches_torchmetrics_on_the_same_features():
    real, fake = features(120, seed=2), features(90, seed=3, shift=0.3, scale=1.2)
    metric = FrechetInceptionDistance(feature=Passthrough(real.shape[1]))
    metric.set_dtype(torch.float64)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert fid(fake, real) == pytest.approx(float(metric.compute()), rel=TOLERANCE)


def test_kid_matches_torchmetrics_on_whole_sets_and_is_near_zero_for_one_distribution():
    real, fake = features(60, seed=4), features(60, seed=5, shift=0.4)
    metric = KernelInceptionDistance(feature=Passthrough(real.shape[1]), subsets=1, subset_size=60)
    metric.update(real.float(), real=True)
    metric.update(fake.float(), real=False)
    theirs = float(metric.compute()[0])
    ours = stats.polynomial_mmd2(real.float(), fake.float())
    assert ours == pytest.approx(theirs, rel=1e-4)  # torchmetrics keeps KID features in float32
    mean, std = stats.kernel_distance(fake, real, subsets=1, subset_size=60)
    assert mean == pytest.approx(ours, rel=1e-4) and std == 0.0
    white = lambda n, seed, shift=0.0: torch.randn(n, 8, generator=torch.Generator().manual_seed(seed),  # noqa: E731
                                                   dtype=torch.float64) + shift
    same, _ = stats.kernel_distance(white(300, 6), white(300, 7), subsets=20, subset_size=100)
    far, _ = stats.kernel_distance(white(300, 6, 0.5), white(300, 7), subsets=20, subset_size=100)
    assert abs(same) < 0.1 * far


def test_kid_subsets_repeat_for_a_seed():
    a, b = features(80, seed=8), features(70, seed=9, shift=0.2)
    assert stats.kernel_distance(a, b, subsets=5, subset_size=30, seed=3) == \
        stats.kernel_distance(a, b, subsets=5, subset_size=30, seed=3)


def test_inception_score_matches_torchmetrics_and_its_bounds():
    logits = torch.randn(64, 20, generator=torch.Generator().manual_seed(10), dtype=torch.float64) * 3
    metric = InceptionScore(feature=Passthrough(20), splits=1)
    metric.update(logits)
    assert stats.inception_score(logits, splits=1)[0] == pytest.approx(float(metric.compute()[0]), rel=TOLERANCE)
    assert stats.inception_score(torch.zeros(10, 7))[0] == pytest.approx(1.0)  # no confidence: IS = 1
    confident = torch.eye(7, dtype=torch.float64).repeat(2, 1) * 60  # every class, each certain: IS = classes
    assert stats.inception_score(confident, splits=1)[0] == pytest.approx(7.0, rel=1e-6)
    mean, std = stats.inception_score(logits, splits=4)
    assert std > 0 and 1 < mean < 20


def uniform(count: int, low: tuple[float, float], seed: int) -> torch.Tensor:
    return torch.rand(count, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + \
        torch.tensor(low, dtype=torch.float64)


def test_precision_recall_of_identical_and_disjoint_sets():
    real = features(200, seed=11)
    assert stats.precision_recall(real, real, k=3) == (1.0, 1.0)
    assert stats.precision_recall(features(200, seed=12, shift=100.0), real, k=3) == (0.0, 0.0)


def test_precision_recall_follow_the_support_overlap():
    """Uniform squares overlapping by half: both precision and recall -> 0.5 as the sets grow (the k-NN balls
    reach a little past each support's edge: ~ +0.02 at 2000 points and k = 3)."""
    real = uniform(2000, (0.0, 0.0), seed=13)
    fake = uniform(2000, (0.5, 0.0), seed=14)
    precision, recall = stats.precision_recall(fake, real, k=3)
    assert precision == pytest.approx(0.5, abs=0.04) and recall == pytest.approx(0.5, abs=0.04)
    # a generator that covers the reference's square and as much again outside it: precision 1/2, recall ~1
    wide = torch.cat([uniform(2000, (0.0, 0.0), seed=15), uniform(2000, (1.0, 0.0), seed=16)])
    precision, recall = stats.precision_recall(wide, real, k=3)
    assert precision == pytest.approx(0.5, abs=0.04) and recall > 0.97


def test_precision_drops_with_the_fraction_of_off_manifold_gaussian_samples():
    """Fake = mixture of the reference Gaussian (weight w) and a far one: precision -> w x (precision of the
    reference Gaussian against itself), recall is unchanged by the far mode."""
    real = features(1000, width=4, seed=17)
    same = features(1000, width=4, seed=18)
    base_precision, base_recall = stats.precision_recall(same, real, k=5)
    assert base_precision > 0.9 and base_recall > 0.9
    mixture = torch.cat([same[:700], features(300, width=4, seed=19, shift=50.0)])
    precision, recall = stats.precision_recall(mixture, real, k=5)
    assert precision == pytest.approx(0.7 * stats.precision_recall(same[:700], real, k=5)[0], abs=1e-9)
    assert recall > 0.85


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="at least 2"):
        stats.gaussian_stats(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="k=3"):
        stats.knn_radii(torch.zeros(3, 2), 3)
