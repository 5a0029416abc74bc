"""The metric networks load from random-weight files in their real layouts: FID's Inception-v3 as pytorch-fid
stores it, LPIPS as the lpips package does; and the loader/metric nodes run them in a graph."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nodegraph.formats.api import from_api
from nodes.sd.metrics import inception as inc
from nodes.sd.metrics import lpips as lp
from tiny_models import engine_at

PYTORCH_FID_KEYS = {
    # (key, shape) facts of pt_inception-2015-12-05-6726825d.pth, read from pytorch-fid's and torchvision's source
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


def random_inception_file(path: Path, seed: int = 0) -> Path:
    """A pytorch-fid-layout .pth of random weights (batch-norm statistics included, as the real file has)."""
    torch.manual_seed(seed)
    model = inc.FIDInceptionV3()
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5
        elif key.endswith("running_mean"):
            state[key] = torch.randn_like(value) * 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> Path:
    return random_inception_file(tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-test.pth")


def test_inception_has_pytorch_fids_key_layout():
    with torch.device("meta"):
        state = inc.FIDInceptionV3().state_dict()
    for key, shape in PYTORCH_FID_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert not any("AuxLogits" in key for key in state)  # the FID graph has no auxiliary head


def test_exclusive_average_pool_leaves_padding_out():
    """TensorFlow's pooling (the FID graph's): a constant map stays constant at the borders too."""
    x = torch.full((1, 2, 5, 5), 3.0)
    torch.testing.assert_close(inc._pool_exclusive(x), x)
    block = inc.BlockE(8, max_pool=True).eval()
    probe = torch.randn(1, 8, 4, 4)
    pooled = block.branch_pool(F.max_pool2d(probe, 3, stride=1, padding=1))
    torch.testing.assert_close(block(probe)[:, -192:], pooled)  # Mixed_7c's pool branch takes the maximum


def test_inception_loads_its_file_and_rejects_others(inception_file):
    state = torch.load(inception_file, weights_only=True)
    model = inc.build_fid_inception(state, "test file")
    with torch.device("meta"):
        reference = inc.FIDInceptionV3()
    reference.load_state_dict(state, assign=True)  # strict: the file holds exactly this module's tensors
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(ours, theirs), name
    with torch.no_grad():  # one forward (Inception at 299 px is slow on a shared CPU)
        features, logits = model(torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(0)))
    assert features.shape == (1, 2048) and logits.shape == (1, 1008) and features.isfinite().all()
    assert (features >= 0).all()  # pool3 averages ReLU outputs
    del state["Mixed_7c.branch_pool.conv.weight"]
    with pytest.raises(ValueError, match="pytorch-fid's layout.*Mixed_7c.branch_pool"):
        inc.build_fid_inception(state, "test file")


def random_lpips_state(kind: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """An lpips.LPIPS state dict of random weights: net.sliceN.M.* (torchvision indices), lin*.model.1.weight."""
    torch.manual_seed(seed)
    backbone = lp.Backbone(kind)
    bounds = (0, *[tap + 1 for tap in backbone.taps])
    state: dict[str, torch.Tensor] = {}
    for slice_index in range(5):
        for index in range(bounds[slice_index], bounds[slice_index + 1]):
            layer = backbone.features[index]
            if isinstance(layer, torch.nn.Conv2d):
                state[f"net.slice{slice_index + 1}.{index}.weight"] = layer.weight.detach().clone()
                state[f"net.slice{slice_index + 1}.{index}.bias"] = layer.bias.detach().clone()
    for index, channels in enumerate(backbone.channels):
        state[f"lin{index}.model.1.weight"] = torch.rand(1, channels, 1, 1) * 0.1
    state["scaling_layer.shift"] = torch.tensor(lp.SHIFT)[None, :, None, None]
    state["scaling_layer.scale"] = torch.tensor(lp.SCALE)[None, :, None, None]
    return state


def lpips_by_hand(state: dict[str, torch.Tensor], kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 written out from the file's own tensors (conv/relu/pool by torchvision index)."""
    convs = {int(k.split(".")[2]): (state[k], state[k.replace("weight", "bias")])
             for k in state if k.startswith("net.") and k.endswith("weight")}
    spec = {"vgg": (lp.VGG16_TAPS, {4, 9, 16, 23}, 2, {}), "alex": (lp.ALEX_TAPS, {2, 5}, 3, {0: (4, 2)})}[kind]
    taps, pools, pool_kernel, strides = spec

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        x = ((2 * x - 1) - state["scaling_layer.shift"]) / state["scaling_layer.scale"]
        out = []
        for index in range(taps[-1] + 1):
            if index in convs:
                weight, bias = convs[index]
                stride, padding = strides.get(index, (1, weight.shape[-1] // 2))
                x = F.conv2d(x, weight, bias, stride=stride, padding=padding)
            elif index in pools:
                x = F.max_pool2d(x, pool_kernel, 2)
            else:
                x = x.clamp(min=0)
            if index in taps:
                out.append(x)
        return out

    total = torch.zeros(a.shape[0])
    for layer, (x, y) in enumerate(zip(run(a), run(b))):
        x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        y = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total += ((x - y) ** 2 * state[f"lin{layer}.model.1.weight"]).sum(1).mean((1, 2))
    return total


@pytest.mark.parametrize("kind,size", [("alex", 64), ("vgg", 32)])
def test_lpips_matches_its_formula_from_the_file_and_is_zero_for_equal_images(kind, size):
    state = random_lpips_state(kind)
    model = lp.build_lpips(state, "test file")
    assert model.net.kind == kind
    generator = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, size, size, generator=generator), torch.rand(2, 3, size, size, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(model(a, b), lpips_by_hand(state, kind, a, b), rtol=1e-4, atol=1e-6)
        assert model(a, a).abs().max() == 0
    # the lpips v0.1 head file + a torchvision-layout backbone in one file loads to the same network
    split = {k: v for k, v in state.items() if k.startswith("lin")}
    split.update({"features." + ".".join(k.split(".")[2:]): v for k, v in state.items() if k.startswith("net.")})
    with torch.no_grad():
        torch.testing.assert_close(lp.build_lpips(split, "split file")(a, b), model(a, b))
    with pytest.raises(ValueError, match="only the linear heads"):
        lp.build_lpips({k: v for k, v in state.items() if k.startswith("lin")}, "heads only")


def test_diversity_is_the_mean_over_pairs():
    model = lp.build_lpips(random_lpips_state("alex"), "test").eval()
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pairs = [float(model(images[i : i + 1], images[j : j + 1])) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert lp.pairwise_diversity(model, images) == pytest.approx(sum(pairs) / 3, rel=1e-5)
    assert lp.paired_distance(model, images, images) == 0.0


def save_png(image: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(path)


def images_node(batch: torch.Tensor):
    from nodegraph.schema import Node, NodeSchema, Out

    class TestImages(Node):
        schema = NodeSchema(type_id="TestImages", display_name="test images", outputs=(Out("IMAGE"),))

        @classmethod
        def execute(cls, ctx):
            return (batch,)

    return TestImages


def test_inception_loader_and_inception_score_nodes(tmp_path, inception_file):
    folder = tmp_path / "models" / "inception"
    folder.mkdir(parents=True)
    os.link(inception_file, folder / inception_file.name)  # a symlink out of the models root is not listed
    engine = engine_at(tmp_path)
    assert inception_file.name in engine.env.models.list("inception")
    image = torch.rand(1, 40, 40, 3, generator=torch.Generator().manual_seed(5))
    engine.registry.register(images_node(image))
    graph = {"1": {"class_type": "FIDInceptionLoader", "inputs": {"inception_name": inception_file.name}},
             "2": {"class_type": "TestImages", "inputs": {}},
             "3": {"class_type": "MetricInceptionScore", "inputs": {"images": ["2", 0], "feature_model": ["1", 0],
                                                                   "splits": 1}}}
    result = engine.run(from_api(graph, engine.registry), outputs=["1", "3"])
    handle = result.values["1"][0]
    assert handle.kind == "inception"
    # one image: its class distribution is the marginal, so the score is exactly 1
    assert result.values["3"][0] == pytest.approx(1.0) and handle.model.fc.out_features == 1008
    assert result.ui["3"]["text"][0].startswith("IS 1.0000")


def tiny_tower_file(path: Path) -> Path:
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16, hidden_act="quick_gelu")
    tower = CLIPVisionModelWithProjection(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(path))
    return path


def test_reference_folder_features_are_cached_and_lpips_runs_in_a_graph(tmp_path):
    """FID on a CLIP tower's features against a reference folder (cached under temp/metrics) equals FID against
    the same images wired in; LPIPS diversity from the `lpips` folder equals the maths module's."""
    tiny_tower_file(tmp_path / "models" / "clip_vision" / "tower.safetensors")
    (tmp_path / "models" / "lpips").mkdir(parents=True)
    torch.save(random_lpips_state("alex"), tmp_path / "models" / "lpips" / "alex.pth")
    refs = (torch.rand(4, 48, 48, 3, generator=torch.Generator().manual_seed(3)) * 255).round() / 255  # 8-bit
    for index, image in enumerate(refs):
        save_png(image, tmp_path / "input" / "refs" / f"{index}.png")
    engine = engine_at(tmp_path)
    engine.registry.register(images_node(refs))
    graph = {
        "1": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "tower.safetensors"}},
        "2": {"class_type": "CLIPVisionFeatureModel", "inputs": {"clip_vision": ["1", 0], "class_prompts": ""}},
        "9": {"class_type": "TestImages", "inputs": {}},
        "3": {"class_type": "MetricFID", "inputs": {"images": ["9", 0], "feature_model": ["2", 0],
                                                    "reference_folder": "refs"}},
        "4": {"class_type": "MetricFID", "inputs": {"images": ["9", 0], "feature_model": ["2", 0],
                                                    "reference_folder": "", "reference_images": ["9", 0]}},
        "5": {"class_type": "LPIPSLoader", "inputs": {"lpips_name": "alex.pth"}},
        "6": {"class_type": "MetricLPIPS", "inputs": {"images": ["9", 0], "lpips_model": ["5", 0],
                                                      "mode": "diversity"}},
    }
    result = engine.run(from_api(graph, engine.registry), outputs=["3", "4", "6"])
    from_folder, from_batch = result.values["3"][0], result.values["4"][0]
    assert abs(from_batch) < 1e-6 and from_folder == pytest.approx(from_batch, abs=1e-6)
    assert result.ui["3"]["text"][0].startswith("FID ")
    cached = list((tmp_path / "temp" / "metrics").glob("*.pt"))
    assert len(cached) == 1 and torch.load(cached[0], weights_only=True)["features"].shape == (4, 16)
    model = lp.build_lpips(random_lpips_state("alex"), "test")
    assert result.values["6"][0] == pytest.approx(lp.pairwise_diversity(model, refs.movedim(-1, 1)), rel=1e-5)
    with pytest.raises(Exception, match="holds no images"):
        (tmp_path / "input" / "empty").mkdir()
        graph["3"]["inputs"]["reference_folder"] = "empty"
        engine.run(from_api(graph, engine.registry), outputs=["3"])
