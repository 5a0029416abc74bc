"""Set-level statistics on image features: FID, KID, Inception Score, precision and recall.

Each takes feature matrices [N, D] (or class logits [N, C]) and computes in float64; which network made the
features decides what a number is comparable to (see nodes/sd/metrics/features.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GaussianStats:
    """Mean [D] and covariance [D, D] of a feature set (what FID compares), with its count."""

    mean: Tensor
    cov: Tensor
    count: int


def gaussian_stats(features: Tensor) -> GaussianStats:
    """Mean and unbiased covariance of features [N, D] (N >= 2), in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 feature rows [N, D], got shape {tuple(features.shape)}")
    x = features.double()
    return GaussianStats(x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1]), int(x.shape[0]))


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """FID (Heusel et al. 2017, arXiv:1706.08500): ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2).

    Tr((S_a S_b)^1/2) is the sum of square roots of the eigenvalues of S_a^1/2 S_b S_a^1/2, which is symmetric
    positive semi-definite, so no complex round-off appears (scipy's sqrtm route can give some).
    """
    values, vectors = torch.linalg.eigh(a.cov)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_a @ b.cov @ root_a).clamp(min=0).sqrt().sum()
    trace = torch.trace(a.cov) + torch.trace(b.cov) - 2.0 * cross
    return float(((a.mean - b.mean) ** 2).sum() + trace)


def polynomial_mmd2(x: Tensor, y: Tensor, *, degree: int = 3, coef: float = 1.0) -> float:
    """Unbiased squared MMD with the kernel k(a, b) = (a.b / D + coef)^degree (KID's; Binkowski et al. 2018,
    arXiv:1801.01401): the mean off-diagonal k within each set less twice the mean k across them."""
    x, y = x.double(), y.double()
    gamma = 1.0 / x.shape[1]
    k_xx, k_yy, k_xy = ((p @ q.T * gamma + coef) ** degree for p, q in ((x, x), (y, y), (x, y)))
    n, m = x.shape[0], y.shape[0]
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


def kernel_distance(generated: Tensor, reference: Tensor, *, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID: (mean, standard deviation) of the unbiased MMD^2 over random subsets of both sets (the FID-like
    measure without FID's small-sample bias). Subsets hold min(subset_size, N_generated, N_reference) rows, drawn
    without replacement by a generator seeded with `seed` (so a run repeats exactly)."""
    size = min(subset_size, generated.shape[0], reference.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 images on each side, got {generated.shape[0]} and {reference.shape[0]}")
    rng = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        pick_g = torch.randperm(generated.shape[0], generator=rng)[:size]
        pick_r = torch.randperm(reference.shape[0], generator=rng)[:size]
        scores.append(polynomial_mmd2(reference[pick_r], generated[pick_g]))
    values = torch.tensor(scores, dtype=torch.float64)
    return float(values.mean()), float(values.std(unbiased=False))


def inception_score(logits: Tensor, *, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016, arXiv:1606.03498): exp(E_x KL(p(y|x) || p(y))) per split of the
    images (in order, no shuffling), as (mean, standard deviation over splits). Splits are capped at N."""
    if logits.ndim != 2 or logits.shape[0] < 1:
        raise ValueError(f"Inception Score needs class logits [N, C], got shape {tuple(logits.shape)}")
    logits = logits.double()
    scores = []
    for chunk in logits.chunk(min(splits, logits.shape[0]), dim=0):
        log_p = chunk.log_softmax(dim=1)
        log_marginal = log_p.exp().mean(dim=0, keepdim=True).log()
        scores.append((log_p.exp() * (log_p - log_marginal)).sum(dim=1).mean().exp())
    values = torch.stack(scores)
    return float(values.mean()), float(values.std()) if len(scores) > 1 else 0.0


def knn_radii(features: Tensor, k: int) -> Tensor:
    """Distance from each row to its k-th nearest other row (the radius of its ball in the k-NN manifold)."""
    if features.shape[0] <= k:
        raise ValueError(f"a k-NN manifold with k={k} needs more than {k} images, got {features.shape[0]}")
    distances = torch.cdist(features.double(), features.double())
    return distances.kthvalue(k + 1, dim=1).values  # +1: the row's distance to itself is the smallest


def manifold_coverage(points: Tensor, support: Tensor, radii: Tensor) -> float:
    """Fraction of `points` inside at least one ball (centre a `support` row, radius its k-NN radius)."""
    distances = torch.cdist(points.double(), support.double())
    return float((distances <= radii[None, :]).any(dim=1).double().mean())


def precision_recall(generated: Tensor, reference: Tensor, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, arXiv:1904.06991): precision is the fraction of
    generated images inside the reference set's k-NN manifold (fidelity), recall the fraction of reference
    images inside the generated set's (coverage of what the reference shows)."""
    precision = manifold_coverage(generated, reference, knn_radii(reference, k))
    recall = manifold_coverage(reference, generated, knn_radii(generated, k))
    return precision, recall
