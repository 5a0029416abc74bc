"""LoadImageMask and LoadImageOutput on real PNG files: channels, ComfyUI's inverted alpha, safe paths."""

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph import NodeContext
from nodegraph.environment import Environment
from nodegraph.paths import UnsafePath
from nodes.image.loaders import LoadImageMask, LoadImageOutput


@pytest.fixture
def env(tmp_path):
    for name in ("output", "input", "temp"):
        (tmp_path / name).mkdir()
    return Environment(output_dir=(tmp_path / "output").resolve(), input_dir=(tmp_path / "input").resolve(),
                       temp_dir=(tmp_path / "temp").resolve())


def ctx(env):
    return NodeContext("1", "Test", env)


@pytest.fixture
def rgba():
    pixels = np.zeros((4, 5, 4), dtype=np.uint8)
    pixels[..., 0] = np.arange(5) * 50      # red ramps left to right
    pixels[..., 1] = 200
    pixels[..., 2] = np.arange(4)[:, None] * 60
    pixels[..., 3] = 255
    pixels[:2, :, 3] = 64                   # the top half mostly transparent
    return pixels


def test_load_image_mask_channels_and_inverted_alpha(env, rgba):
    Image.fromarray(rgba, "RGBA").save(env.input_dir / "m.png")
    assert LoadImageMask.schema.input("image").resolve_options(env) == ["m.png"]
    for index, channel in enumerate(("red", "green", "blue")):
        mask = LoadImageMask.execute(ctx(env), image="m.png", channel=channel)[0]
        assert mask.shape == (1, 4, 5) and torch.allclose(mask[0], torch.from_numpy(rgba[..., index] / 255.0).float())
    alpha = LoadImageMask.execute(ctx(env), image="m.png", channel="alpha")[0]
    assert torch.allclose(alpha[0], torch.from_numpy(1.0 - rgba[..., 3] / 255.0).float())  # 1 where transparent
    Image.fromarray(rgba[..., :3], "RGB").save(env.input_dir / "opaque.png")
    assert LoadImageMask.execute(ctx(env), image="opaque.png", channel="alpha")[0].eq(0).all()


def test_load_image_mask_fingerprint_follows_the_file(env, rgba):
    Image.fromarray(rgba, "RGBA").save(env.input_dir / "m.png")
    before = LoadImageMask.fingerprint(ctx(env), image="m.png", channel="red")
    assert LoadImageMask.fingerprint(ctx(env), image="m.png", channel="red") == before
    Image.fromarray(255 - rgba, "RGBA").save(env.input_dir / "m.png")
    assert LoadImageMask.fingerprint(ctx(env), image="m.png", channel="red") != before


def test_loaders_refuse_names_outside_their_folder(env, rgba):
    Image.fromarray(rgba, "RGBA").save(env.output_dir / "secret.png")
    with pytest.raises(UnsafePath):
        LoadImageMask.execute(ctx(env), image="../output/secret.png", channel="red")
    with pytest.raises(UnsafePath):
        LoadImageOutput.execute(ctx(env), image="../input/x.png [output]")


def test_load_image_output_lists_annotated_outputs_and_loads_them(env, rgba):
    (env.output_dir / "run").mkdir()
    Image.fromarray(rgba, "RGBA").save(env.output_dir / "run" / "ComfyUI_00001_.png")
    Image.fromarray(rgba, "RGBA").save(env.input_dir / "not_listed.png")
    options = LoadImageOutput.schema.input("image").resolve_options(env)
    assert options == ["run/ComfyUI_00001_.png [output]"]
    image, mask = LoadImageOutput.execute(ctx(env), image=options[0])
    assert image.shape == (1, 4, 5, 3) and torch.allclose(image[0], torch.from_numpy(rgba[..., :3] / 255.0).float())
    assert torch.allclose(mask[0], torch.from_numpy(1.0 - rgba[..., 3] / 255.0).float())
    before = LoadImageOutput.fingerprint(ctx(env), image=options[0])
    Image.fromarray(rgba[..., :3], "RGB").save(env.output_dir / "run" / "ComfyUI_00001_.png")
    assert LoadImageOutput.fingerprint(ctx(env), image=options[0]) != before
    assert LoadImageOutput.execute(ctx(env), image=options[0])[1].eq(0).all()
    # an "[input]" annotation names the input folder, as ComfyUI's annotated names do
    assert LoadImageOutput.execute(ctx(env), image="not_listed.png [input]")[0].shape == (1, 4, 5, 3)


def test_engine_reruns_a_mask_workflow_when_the_file_changes(env, rgba):
    """LoadImageMask -> GrowMask -> PreviewAny (a wildcard input) through the engine, from API JSON."""
    from nodegraph import Engine, NodeRegistry
    from nodegraph.formats.api import from_api
    from nodes.mask import GrowMask
    from nodes.utils import PreviewAny

    Image.fromarray(rgba, "RGBA").save(env.input_dir / "m.png")
    engine = Engine(NodeRegistry([LoadImageMask, GrowMask, PreviewAny]), env=env)
    api = {"1": {"class_type": "LoadImageMask", "inputs": {"image": "m.png", "channel": "alpha"}},
           "2": {"class_type": "GrowMask", "inputs": {"mask": ["1", 0], "expand": 1, "tapered_corners": True}},
           "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    first = engine.run(from_api(api))
    assert first.executed == ["1", "2", "3"] and first.ui["3"]["text"][0].startswith("tensor([[[0.7490")
    assert engine.run(from_api(api)).executed == []  # unchanged file: all from the cache
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(env.input_dir / "m.png")
    again = engine.run(from_api(api))
    assert again.executed == ["1", "2", "3"] and again.ui["3"]["text"][0].startswith("tensor([[[0.,")
