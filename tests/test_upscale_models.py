"""Upscale models: files in the published key layouts load and compute what their reference networks compute;
tiling agrees with one pass; the shipped 2x model beats bicubic on held-out shapes.

The reference networks below are written the way the original repositories build them (the old ESRGAN's
flattened sequential, the later ESRGAN rewrite, BasicSR's RRDBNet with pixel unshuffle, Real-ESRGAN's
SRVGGNetCompact), so their state dicts carry the real key names and their forward passes are the ground truth.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import pytest
from nodegraph.context import NodeContext
from nodes.models.embedded import ADAPTERS, default_adapter_path
from nodes.sd.upscale import load_upscale_model, tiled_scale, upscale_image
from nodes.upscaling import ImageUpscaleWithModel, UpscaleModelLoader
from tiny_models import engine_at

NF, GC, NB = 8, 4, 2


# -- reference networks, in each layout's own module structure --------------------------------------------------


class RefDense(nn.Module):
    """ESRGAN's residual dense block; `wrapped`: each conv inside a Sequential (the old repository's conv_block)."""

    def __init__(self, wrapped: bool) -> None:
        super().__init__()
        for i in range(1, 6):
            conv = nn.Conv2d(NF + (i - 1) * GC, GC if i < 5 else NF, 3, 1, 1)
            setattr(self, f"conv{i}", nn.Sequential(conv) if wrapped else conv)

    def forward(self, x):
        parts = [x]
        for i in range(1, 5):
            parts.append(F.leaky_relu(getattr(self, f"conv{i}")(torch.cat(parts, 1)), 0.2))
        return self.conv5(torch.cat(parts, 1)) * 0.2 + x


class RefRRDB(nn.Module):
    def __init__(self, names: tuple[str, str, str], wrapped: bool) -> None:
        super().__init__()
        self.names = names
        for name in names:
            setattr(self, name, RefDense(wrapped))

    def forward(self, x):
        out = x
        for name in self.names:
            out = getattr(self, name)(out)
        return out * 0.2 + x


class RefShortcut(nn.Module):
    def __init__(self, sub: nn.Module) -> None:
        super().__init__()
        self.sub = sub

    def forward(self, x):
        return x + self.sub(x)


def old_esrgan() -> nn.Module:
    """The original repository's 4x RRDBNet: model.0 ... model.10 (upsample, conv, act per 2x; HR conv, act,
    last conv)."""
    trunk = nn.Sequential(*(RefRRDB(("RDB1", "RDB2", "RDB3"), True) for _ in range(NB)), nn.Conv2d(NF, NF, 3, 1, 1))

    def up() -> list[nn.Module]:
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(NF, NF, 3, 1, 1), nn.LeakyReLU(0.2)]

    wrapper = nn.Module()
    wrapper.model = nn.Sequential(nn.Conv2d(3, NF, 3, 1, 1), RefShortcut(trunk), *up(), *up(),
                                  nn.Conv2d(NF, NF, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(NF, 3, 3, 1, 1))
    wrapper.forward = wrapper.model.forward
    return wrapper


class NamedRRDBNet(nn.Module):
    """The later ESRGAN rewrite ("new": RRDB_trunk, trunk_conv, upconv1, HRconv) or BasicSR's RRDBNet (body,
    conv_body, conv_up1, conv_hr), BasicSR's with a pixel unshuffle by `unshuffle` first."""

    def __init__(self, basicsr: bool, unshuffle: int = 1) -> None:
        super().__init__()
        self.basicsr, self.unshuffle = basicsr, unshuffle
        names = ("rdb1", "rdb2", "rdb3") if basicsr else ("RDB1", "RDB2", "RDB3")
        self.conv_first = nn.Conv2d(3 * unshuffle**2, NF, 3, 1, 1)
        trunk = nn.Sequential(*(RefRRDB(names, False) for _ in range(NB)))
        self.parts = ("body", "conv_body", "conv_up1", "conv_up2", "conv_hr") if basicsr else (
            "RRDB_trunk", "trunk_conv", "upconv1", "upconv2", "HRconv")
        setattr(self, self.parts[0], trunk)
        for name in self.parts[1:]:
            setattr(self, name, nn.Conv2d(NF, NF, 3, 1, 1))
        self.conv_last = nn.Conv2d(NF, 3, 3, 1, 1)

    def forward(self, x):
        body, trunk_conv, up1, up2, hr = (getattr(self, name) for name in self.parts)
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        fea = self.conv_first(x)
        fea = fea + trunk_conv(body(fea))
        fea = F.leaky_relu(up1(F.interpolate(fea, scale_factor=2, mode="nearest")), 0.2)
        fea = F.leaky_relu(up2(F.interpolate(fea, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(hr(fea), 0.2))


class RefSRVGG(nn.Module):
    def __init__(self, convs: int = 3, scale: int = 4) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, NF, 3, 1, 1), nn.PReLU(NF)]
        for _ in range(convs):
            layers += [nn.Conv2d(NF, NF, 3, 1, 1), nn.PReLU(NF)]
        self.body = nn.Sequential(*layers, nn.Conv2d(NF, 3 * scale * scale, 3, 1, 1))
        self.scale = scale

    def forward(self, x):
        return F.pixel_shuffle(self.body(x), self.scale) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def _randomized(module: nn.Module) -> nn.Module:
    """Small random weights; an ESRGAN's last bias at 0.5, so its output (not a residual) lands mostly in 0..1."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.1)
        if not isinstance(module, RefSRVGG):
            [*_, last] = (m for m in module.modules() if isinstance(m, nn.Conv2d))
            last.bias.fill_(0.5)
    return module.eval()


CASES = {  # file name -> (reference, scale, architecture, how it is saved)
    "esrgan_old.safetensors": (old_esrgan, 4, "ESRGAN", "safetensors"),
    "esrgan_new.pth": (lambda: NamedRRDBNet(False), 4, "ESRGAN", "plain"),
    "realesrgan_x2.pth": (lambda: NamedRRDBNet(True, 2), 2, "ESRGAN", "params_ema"),
    "srvgg_compact.safetensors": (RefSRVGG, 4, "SRVGGNetCompact", "safetensors"),
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    engine = engine_at(tmp_path_factory.mktemp("upscale"))
    folder = engine.env.models.folder_dirs("upscale_models")[0]
    folder.mkdir(parents=True, exist_ok=True)
    for name, (make, _, _, kind) in CASES.items():
        state = {key: value.contiguous() for key, value in _randomized(make()).state_dict().items()}
        if kind == "safetensors":
            save_file(state, str(folder / name))
        else:
            torch.save({"params_ema": state} if kind == "params_ema" else state, folder / name)
    save_file({"conv_in.weight": torch.zeros(4, 3, 3, 3)}, str(folder / "not_an_upscaler.safetensors"))
    return engine


def ctx(engine) -> NodeContext:
    return NodeContext("1", "test", engine.env)


def test_files_list_under_upscale_models_with_the_shipped_model_first(engine):
    names = engine.env.models.list("upscale_models")
    assert names[0] == ADAPTERS["upscale"][1]
    assert set(CASES) <= set(names)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_layout_loads_and_computes_what_its_reference_computes(engine, name):
    make, scale, architecture, _ = CASES[name]
    (handle,) = UpscaleModelLoader.execute(ctx(engine), model_name=name)
    assert (handle.architecture, handle.scale) == (architecture, scale)
    reference = _randomized(make())
    image = torch.rand(2, 12, 10, 3, generator=torch.Generator().manual_seed(1))
    (out,) = ImageUpscaleWithModel.execute(ctx(engine), upscale_model=handle, image=image)
    assert out.shape == (2, 12 * scale, 10 * scale, 3)
    with torch.no_grad():
        expected = reference(image.movedim(-1, 1)).movedim(1, -1)
    torch.testing.assert_close(out, expected.clamp(0, 1), atol=1e-5, rtol=1e-5)
    inside = (expected > 0.01) & (expected < 0.99)
    assert inside.float().mean() > 0.2, "the comparison must not be decided by clamping alone"


def test_the_loader_registers_the_model_with_the_manager_once(engine):
    manager = engine.env.manager
    before = manager.loads
    first = UpscaleModelLoader.execute(ctx(engine), model_name="srvgg_compact.safetensors")[0]
    second = UpscaleModelLoader.execute(ctx(engine), model_name="srvgg_compact.safetensors")[0]
    assert first.model_ref == second.model_ref
    assert manager.loads - before <= 1
    assert any(model["name"] == "upscale model srvgg_compact.safetensors" for model in manager.stats()["models"])


def test_unknown_layouts_and_unsafe_pickles_are_refused_naming_the_file(engine, tmp_path):
    with pytest.raises(ValueError, match=r"not_an_upscaler\.safetensors.*unknown upscale model layout"):
        UpscaleModelLoader.execute(ctx(engine), model_name="not_an_upscaler.safetensors")
    pickled = tmp_path / "code.pth"
    torch.save({"body.0.weight": torch.zeros(1), "evil": print}, pickled)  # a callable: weights_only refuses it
    with pytest.raises(ValueError, match=r"code\.pth.*cannot read"):
        load_upscale_model(pickled)
    with pytest.raises(ValueError, match="refusing"):
        load_upscale_model(tmp_path / "model.pkl")


def test_weights_that_do_not_fit_their_layout_are_refused_naming_the_file(tmp_path):
    state = _randomized(RefSRVGG()).state_dict()
    state["body.2.weight"] = state["body.2.weight"][:, :5]  # a conv that takes 5 of the 8 features
    save_file({key: value.contiguous() for key, value in state.items()}, str(tmp_path / "cut.safetensors"))
    with pytest.raises(ValueError, match=r"cut\.safetensors.*do not fit the SRVGGNetCompact"):
        load_upscale_model(tmp_path / "cut.safetensors")


def test_pixel_unshuffle_models_take_odd_sizes(engine):
    (handle,) = UpscaleModelLoader.execute(ctx(engine), model_name="realesrgan_x2.pth")
    (out,) = ImageUpscaleWithModel.execute(ctx(engine), upscale_model=handle, image=torch.rand(1, 9, 7, 3))
    assert out.shape == (1, 18, 14, 3)


# -- tiling ---------------------------------------------------------------------------------------------------


def shapes_image(side: int = 160) -> torch.Tensor:
    from nodes.sd.shapes import render_striped, spec_from_seed

    picture = render_striped(spec_from_seed(11), side)[0]
    return torch.from_numpy(np.asarray(picture, dtype=np.float32))[None][:, :, :136] / 255


@pytest.fixture(scope="module")
def shipped():
    return load_upscale_model(default_adapter_path("upscale"))


def test_tiled_equals_untiled_within_tolerance(shipped):
    """The shipped model sees 6 px around each input pixel; with 64 px tiles overlapping by 16 px the blended
    result is within 2e-4 of one pass on average and 0.015 anywhere (0..1 scale; measured 6e-5 and 0.008)."""
    image = shapes_image()
    calls = []
    whole = upscale_image(shipped, image, tile=4096)
    tiled = upscale_image(shipped, image, tile=64, overlap=16, progress=lambda done, total: calls.append(total))
    assert calls and calls[-1] == 9  # 3 x 3 tiles of 64 over 160 x 136
    assert tiled.shape == whole.shape == (1, 320, 272, 3)
    difference = (tiled - whole).abs()
    assert difference.mean() < 2e-4 and difference.max() < 0.015, (difference.mean(), difference.max())


def test_blending_reproduces_any_pointwise_function_exactly():
    """With no context to lose (a per-pixel function), the weighted blend of tiles is the one-pass result."""
    image = torch.rand(2, 3, 50, 37)
    double = lambda x: F.interpolate(x * 2 - 0.3, scale_factor=2, mode="nearest")  # noqa: E731
    torch.testing.assert_close(tiled_scale(image, double, 2, tile=16, overlap=4), double(image))


class Tight(nn.Module):
    """A model that runs out of memory on tiles larger than `limit` px, and records the tile sides it got."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit, self.seen = inner, limit, []

    def forward(self, x):
        self.seen.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > self.limit:
            raise torch.OutOfMemoryError(f"tile of {max(x.shape[-2:])} px")
        return self.inner(x)


def test_out_of_memory_halves_the_tile_until_it_fits(shipped):
    image = torch.rand(1, 300, 200, 3)
    tight = Tight(shipped.model, 140)
    out = upscale_image(shipped, image, module=tight)
    assert tight.seen[:2] == [300, 256] and set(tight.seen[2:]) == {128}  # one pass, then 256 px, then 128 px tiles
    torch.testing.assert_close(out, upscale_image(shipped, image, tile=128))
    tighter = Tight(shipped.model, 100)
    with pytest.raises(torch.OutOfMemoryError):  # 128 px is the smallest tile tried, as in ComfyUI
        upscale_image(shipped, image, module=tighter)
    assert min(tighter.seen) == 128


# -- the shipped model --------------------------------------------------------------------------------------


def test_shipped_model_is_tiny_and_beats_bicubic_on_held_out_shapes(shipped):
    from training.upscaler import evaluate_upscaler

    assert default_adapter_path("upscale").stat().st_size < 1_000_000
    assert (shipped.architecture, shipped.scale) == ("SRVGGNetCompact", 2)
    figures = evaluate_upscaler(shipped.model, count=16)
    assert figures["model_psnr_db"] > figures["bicubic_psnr_db"] + 1.0, figures
