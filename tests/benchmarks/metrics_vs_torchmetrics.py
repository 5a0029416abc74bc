"""How closely the metric nodes' FID, KID and Inception Score agree with torchmetrics on identical features.

Random correlated features (Inception-sized by default: 2048-d) are handed to both: torchmetrics through a
pass-through `feature` module, ours directly. KID uses one subset of the whole sets (its random subsets would
otherwise differ), the IS one split (torchmetrics shuffles before splitting). Prints the relative differences;
the last line is one JSON object of named figures.

    python tests/benchmarks/metrics_vs_torchmetrics.py [--count 500] [--width 2048]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nodes.sd.metrics import statistics as stats  # noqa: E402


class Passthrough(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.num_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def main() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--width", type=int, default=2048)
    args = parser.parse_args()
    torch.manual_seed(0)
    mixing = torch.randn(args.width, args.width, dtype=torch.float64) / args.width**0.5
    real = (torch.randn(args.count, args.width, dtype=torch.float64) @ mixing).relu()  # pool3-like: >= 0
    fake = (torch.randn(args.count, args.width, dtype=torch.float64) @ mixing * 1.1 + 0.05).relu()

    fid_metric = FrechetInceptionDistance(feature=Passthrough(args.width))
    fid_metric.set_dtype(torch.float64)
    fid_metric.update(real, real=True)
    fid_metric.update(fake, real=False)
    fid_theirs = float(fid_metric.compute())
    fid_ours = stats.frechet_distance(stats.gaussian_stats(fake), stats.gaussian_stats(real))

    kid_metric = KernelInceptionDistance(feature=Passthrough(args.width), subsets=1, subset_size=args.count)
    kid_metric.update(real.float(), real=True)
    kid_metric.update(fake.float(), real=False)
    kid_theirs = float(kid_metric.compute()[0])
    kid_ours = stats.polynomial_mmd2(real.float(), fake.float())

    logits = torch.randn(args.count, 1008, dtype=torch.float64) * 4
    is_metric = InceptionScore(feature=Passthrough(1008), splits=1)
    is_metric.update(logits)
    is_theirs = float(is_metric.compute()[0])
    is_ours = stats.inception_score(logits, splits=1)[0]

    figures = {
        "count": args.count, "width": args.width,
        "fid_ours": fid_ours, "fid_torchmetrics": fid_theirs, "fid_rel_diff": abs(fid_ours - fid_theirs) / fid_theirs,
        "kid_ours": kid_ours, "kid_torchmetrics": kid_theirs, "kid_rel_diff": abs(kid_ours - kid_theirs) / kid_theirs,
        "is_ours": is_ours, "is_torchmetrics": is_theirs, "is_rel_diff": abs(is_ours - is_theirs) / is_theirs,
    }
    for name in ("fid", "kid", "is"):
        print(f"{name}: ours {figures[name + '_ours']:.8g}, torchmetrics {figures[name + '_torchmetrics']:.8g}, "
              f"relative difference {figures[name + '_rel_diff']:.2e}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
