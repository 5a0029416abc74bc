"""FID's Inception-v3 (Szegedy et al. 2016, arXiv:1512.00567) as the standard FID implementations run it.

FID (Heusel et al. 2017) is only comparable between papers with one network: the TensorFlow Inception graph of
2015-12-05, ported to PyTorch by pytorch-fid as `pt_inception-2015-12-05-*.pth`. That port differs from
torchvision's Inception-v3 in three ways, all kept here: 1008 output classes; the average pools inside the
A, C and first E blocks leave padded zeros out of the mean (TensorFlow's behaviour); and the last E block pools
with a max instead of an average. Everything else (the stem, Mixed_5b..Mixed_7c, conv + batch norm (eps 1e-3) +
ReLU units) follows the paper's Inception-v3, with the module names the weight file uses: `Conv2d_1a_3x3.conv.weight`,
`Mixed_5b.branch1x1.bn.running_mean`, ..., `fc.weight`. torchvision is not needed (it is not installable here).

Input: images in 0..1, resized bilinearly to 299 x 299 and scaled to -1..1 (pytorch-fid's defaults). Output: the
2048-d pool3 features FID/KID/precision-recall use, and the 1008 class logits the Inception Score uses.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INPUT_SIZE = 299
FEATURES = 2048
CLASSES = 1008


class ConvUnit(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU: Inception's basic unit (`<name>.conv`, `<name>.bn`)."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _pool_exclusive(x: Tensor) -> Tensor:
    """3x3 stride-1 average pool that ignores padding (TensorFlow's), as the FID graph's blocks pool."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    """35x35 block (Mixed_5b/5c/5d): 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvUnit(cin, 64, 1)
        self.branch5x5_1 = ConvUnit(cin, 48, 1)
        self.branch5x5_2 = ConvUnit(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvUnit(cin, 64, 1)
        self.branch3x3dbl_2 = ConvUnit(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvUnit(96, 96, 3, padding=1)
        self.branch_pool = ConvUnit(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        five = self.branch5x5_2(self.branch5x5_1(x))
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), five, double, self.branch_pool(_pool_exclusive(x))], 1)


class BlockB(nn.Module):
    """35 -> 17 reduction (Mixed_6a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = ConvUnit(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvUnit(cin, 64, 1)
        self.branch3x3dbl_2 = ConvUnit(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvUnit(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), double, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class BlockC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e)."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvUnit(cin, 192, 1)
        self.branch7x7_1 = ConvUnit(cin, c7, 1)
        self.branch7x7_2 = ConvUnit(c7, c7, **row)
        self.branch7x7_3 = ConvUnit(c7, 192, **col)
        self.branch7x7dbl_1 = ConvUnit(cin, c7, 1)
        self.branch7x7dbl_2 = ConvUnit(c7, c7, **col)
        self.branch7x7dbl_3 = ConvUnit(c7, c7, **row)
        self.branch7x7dbl_4 = ConvUnit(c7, c7, **col)
        self.branch7x7dbl_5 = ConvUnit(c7, 192, **row)
        self.branch_pool = ConvUnit(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = self.branch7x7dbl_1(x)
        for unit in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = unit(double)
        return torch.cat([self.branch1x1(x), seven, double, self.branch_pool(_pool_exclusive(x))], 1)


class BlockD(nn.Module):
    """17 -> 8 reduction (Mixed_7a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvUnit(cin, 192, 1)
        self.branch3x3_2 = ConvUnit(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvUnit(cin, 192, 1)
        self.branch7x7x3_2 = ConvUnit(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvUnit(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvUnit(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        three = self.branch3x3_2(self.branch3x3_1(x))
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([three, seven, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class BlockE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs (Mixed_7b pools by exclusive average, Mixed_7c by max)."""

    def __init__(self, cin: int, *, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvUnit(cin, 320, 1)
        self.branch3x3_1 = ConvUnit(cin, 384, 1)
        self.branch3x3_2a = ConvUnit(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvUnit(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvUnit(cin, 448, 1)
        self.branch3x3dbl_2 = ConvUnit(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvUnit(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvUnit(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvUnit(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        three = self.branch3x3_1(x)
        three = torch.cat([self.branch3x3_2a(three), self.branch3x3_2b(three)], 1)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        double = torch.cat([self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _pool_exclusive(x)
        return torch.cat([self.branch1x1(x), three, double, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception graph; `forward` returns (pool3 features [B, 2048], logits [B, 1008])."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvUnit(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvUnit(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvUnit(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvUnit(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvUnit(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURES, CLASSES)

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """pixels [B, 3, H, W] in 0..1 -> (features [B, 2048], logits [B, 1008])."""
        x = F.interpolate(pixels, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        features = x.mean(dim=(2, 3))
        return features, self.fc(features)


def build_fid_inception(tensors: Mapping[str, Tensor], what: str) -> FIDInceptionV3:
    """The network holding a pytorch-fid weight file's tensors (strict: every key, every shape).

    Raises:
        ValueError: keys missing or unexpected, or a shape that differs (naming `what` and a few of them).
    """
    tensors = {k.removeprefix("module."): v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    with torch.device("meta"):
        model = FIDInceptionV3()
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what}: not FID Inception-v3 weights in pytorch-fid's layout (pt_inception-2015-12-05): "
                         f"missing {missing[:4]} ({len(missing)}), unexpected {unexpected[:4]} ({len(unexpected)})")
    wrong = [f"{k} {tuple(tensors[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if tuple(tensors[k].shape) != tuple(v.shape)]
    if wrong:
        raise ValueError(f"{what}: FID Inception-v3 tensors of the wrong shape: {wrong[:3]}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False, assign=True)
    for module in model.modules():  # the counters were skipped: give them real (unused in eval) values
        if isinstance(module, nn.BatchNorm2d) and module.num_batches_tracked.is_meta:
            module.num_batches_tracked = torch.zeros((), dtype=torch.long)
    return model.eval().requires_grad_(False)
