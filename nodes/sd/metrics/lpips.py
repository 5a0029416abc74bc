"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
arXiv:1801.03924): the distance between two images is the sum over a backbone's layers of the spatially averaged,
channel-weighted squared difference of their unit-normalised activations.

Files load in the `lpips` package's layout: a whole `lpips.LPIPS` state dict (`net.slice1.0.weight`, ...,
`lin0.model.1.weight` .. `lin4.model.1.weight`, optionally `scaling_layer.shift/scale`), or its v0.1 head file
(`lin*` keys only) together with the backbone in torchvision's `features.N.*` layout in the same file. The
backbone (VGG-16 or AlexNet) is read from the shapes; its conv layers keep torchvision's `features` indices, as
the `lpips` package's slices do. Inputs are 0..1 images, scaled to -1..1 and then by LPIPS's ScalingLayer.

The embedded model ships no LPIPS network (LPIPS's heads are trained on human judgments the project does not
have); `TowerDistance` gives the same formula on the shipped CLIP vision tower's layers with equal weights (the
package's `lpips=False` "baseline" mode), which ranks pairs but is not comparable with LPIPS numbers.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
"""LPIPS's ScalingLayer: ImageNet statistics expressed for -1..1 inputs."""
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_TAPS = (3, 8, 15, 22, 29)
"""torchvision `features` indices after which LPIPS reads VGG-16 (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)."""
ALEX_LAYERS = ((64, 11, 4, 2), "M", (192, 5, 1, 2), "M", (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
ALEX_TAPS = (1, 4, 7, 9, 11)
"""AlexNet's conv layers (channels, kernel, stride, padding) and the relu indices LPIPS reads."""


def normalise_channels(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Unit length along channels at each position (LPIPS's normalize_tensor)."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class Backbone(nn.Module):
    """torchvision's VGG-16 or AlexNet `features`, returning the activations LPIPS taps."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        spec = VGG16_LAYERS if kind == "vgg" else ALEX_LAYERS
        for item in spec:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2 if kind == "vgg" else 3, stride=2))
                continue
            cout, kernel, stride, padding = (item, 3, 1, 1) if kind == "vgg" else item
            layers += [nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding), nn.ReLU()]
            cin = cout
        self.kind = kind
        self.features = nn.Sequential(*layers)
        self.taps = VGG16_TAPS if kind == "vgg" else ALEX_TAPS

    @property
    def channels(self) -> list[int]:
        return [self.features[i - 1].out_channels for i in self.taps]

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for index, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if index in self.taps:
                out.append(x)
        return out


class LPIPS(nn.Module):
    """Backbone + one 1x1 non-negative head per tapped layer: `forward(a, b)` -> [B] distances."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.net = Backbone(kind)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.net.channels)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """a, b [B, 3, H, W] in 0..1 -> [B]."""
        fa, fb = (self.net(((2 * x - 1) - self.shift) / self.scale) for x in (a, b))
        total = torch.zeros(a.shape[0], device=a.device)
        for lin, x, y in zip(self.lins, fa, fb):
            total = total + lin((normalise_channels(x) - normalise_channels(y)) ** 2).mean(dim=(1, 2, 3))
        return total


def _backbone_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Backbone conv tensors under torchvision indices (`features.N.weight`) from either layout."""
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        parts = key.split(".")
        if key.startswith("net.slice") and len(parts) == 4:  # net.slice2.5.weight -> features.5.weight
            out[f"features.{parts[2]}.{parts[3]}"] = value
        elif key.startswith("features.") and len(parts) == 3:
            out[key] = value
        elif key.startswith("net.features.") and len(parts) == 4:
            out[key.removeprefix("net.")] = value
    return out


def build_lpips(tensors: Mapping[str, Tensor], what: str) -> LPIPS:
    """An LPIPS network from a file's tensors (see the module docstring for the layouts).

    Raises:
        ValueError: no `lin0..lin4` heads, no VGG-16/AlexNet backbone, or tensors that do not fit it.
    """
    tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    backbone = _backbone_tensors(tensors)
    first = backbone.get("features.0.weight")
    if first is None:
        heads = any(k.startswith("lin0.") for k in tensors)
        raise ValueError(f"{what}: no LPIPS backbone ({'only the linear heads' if heads else 'no lin0..lin4 heads'}"
                         f" found; expected net.sliceN.M.* or features.N.* VGG-16/AlexNet tensors too)")
    kind = "alex" if first.shape[-1] == 11 else "vgg"
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        model = LPIPS(kind)
    state = {f"net.{k}": v for k, v in backbone.items()}
    for index in range(5):
        head = tensors.get(f"lin{index}.model.1.weight", tensors.get(f"lin{index}.model.0.weight"))
        if head is None:
            raise ValueError(f"{what}: LPIPS head lin{index}.model.1.weight missing (lpips v0.1 files hold lin0..lin4)")
        state[f"lins.{index}.weight"] = head
    state["shift"] = tensors.get("scaling_layer.shift", torch.tensor(SHIFT)).reshape(1, 3, 1, 1)
    state["scale"] = tensors.get("scaling_layer.scale", torch.tensor(SCALE)).reshape(1, 3, 1, 1)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what}: tensors do not fit LPIPS-{kind}: missing {missing[:4]}, unexpected {unexpected[:4]}")
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        raise ValueError(f"{what}: LPIPS-{kind} tensors of the wrong shape: {wrong[:4]}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return model.eval().requires_grad_(False)


class TowerDistance(nn.Module):
    """LPIPS's formula without learned heads on a CLIP vision tower's layers (the `lpips=False` baseline):
    per layer, the squared difference of channel-normalised tokens, summed over channels and averaged over tokens."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """a, b [B, 3, H, W] in 0..1 -> [B]."""
        from ..clip_vision import preprocess

        size = int(self.tower.config.image_size)
        hidden = [self.tower(pixel_values=preprocess(x.movedim(1, -1), size), output_hidden_states=True).hidden_states
                  for x in (a, b)]
        total = torch.zeros(a.shape[0], device=a.device)
        for x, y in zip(hidden[0][1:], hidden[1][1:]):  # every layer's output, not the embeddings
            x, y = F.normalize(x, dim=-1, eps=1e-10), F.normalize(y, dim=-1, eps=1e-10)
            total = total + ((x - y) ** 2).sum(-1).mean(-1)
        return total


@torch.no_grad()
def pairwise_diversity(model: nn.Module, images: Tensor, *, batch: int = 16) -> float:
    """Mean distance over all unordered pairs of a batch [B, 3, H, W] (LPIPS diversity; needs B >= 2)."""
    count = images.shape[0]
    if count < 2:
        raise ValueError(f"LPIPS diversity needs at least 2 images, got {count}")
    pairs = torch.combinations(torch.arange(count), 2)
    values = [model(images[chunk[:, 0]], images[chunk[:, 1]]) for chunk in pairs.split(batch)]
    return float(torch.cat(values).mean())


@torch.no_grad()
def paired_distance(model: nn.Module, images: Tensor, references: Tensor, *, batch: int = 16) -> float:
    """Mean distance of each image to its reference (the same index; a single reference serves every image)."""
    if references.shape[0] == 1:
        references = references.expand(images.shape[0], -1, -1, -1)
    if references.shape[0] != images.shape[0]:
        raise ValueError(f"LPIPS against references: {images.shape[0]} images but {references.shape[0]} references "
                         f"(give one reference, or one per image)")
    if references.shape[-2:] != images.shape[-2:]:
        references = F.interpolate(references, size=images.shape[-2:], mode="bilinear", align_corners=False)
    values = [model(a, b) for a, b in zip(images.split(batch), references.split(batch))]
    return float(torch.cat(values).mean())
