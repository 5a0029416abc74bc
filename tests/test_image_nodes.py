"""Image and latent nodes as a user sees them: files in, files out, shapes and masks right."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph import NodeContext
from nodegraph.environment import Environment
from nodes.image import (ImagePadForOutpaint, ImageScale, ImageScaleBy, ImageScaleToTotalPixels, LoadImage,
                         PreviewImage, SaveImage)
from nodes.latent import EmptyLatentImage, LatentUpscale, LatentUpscaleBy, SetLatentNoiseMask
from nodes.sd.imageops import bislerp
from nodes.sd.types import Latent


@pytest.fixture
def env(tmp_path):
    for name in ("output", "input", "temp"):
        (tmp_path / name).mkdir()
    return Environment(output_dir=(tmp_path / "output").resolve(), input_dir=(tmp_path / "input").resolve(),
                       temp_dir=(tmp_path / "temp").resolve())


def ctx(env, metadata=None):
    from nodegraph.hooks import RunInfo

    return NodeContext("7", "Test", env, run=RunInfo(run_id="r", outputs=[], metadata=metadata or {}))


def test_load_image_gives_image_and_mask_from_alpha(env):
    rgba = np.zeros((6, 10, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    rgba[:, :5, 3] = 0  # left half transparent
    Image.fromarray(rgba, "RGBA").save(env.input_dir / "half.png")
    assert LoadImage.schema.input("image").resolve_options(env) == ["half.png"]
    image, mask = LoadImage.execute(ctx(env), image="half.png")
    assert image.shape == (1, 6, 10, 3) and torch.allclose(image[0, 0, 9], torch.tensor([1.0, 0.0, 0.0]))
    assert mask.shape == (1, 6, 10) and mask[0, :, :5].eq(1).all() and mask[0, :, 5:].eq(0).all()
    before = LoadImage.fingerprint(ctx(env), image="half.png")
    Image.fromarray(rgba[..., :3]).save(env.input_dir / "half.png")
    assert LoadImage.fingerprint(ctx(env), image="half.png") != before


def test_save_image_writes_pngs_with_workflow_chunks(env):
    images = torch.rand(2, 8, 12, 3)
    meta = {"prompt": {"3": {"class_type": "KSampler", "inputs": {}}}, "workflow": {"nodes": [], "links": []}}
    result = SaveImage.execute(ctx(env, meta), images=images, filename_prefix="shots/test")
    assert [e["filename"] for e in result.ui["images"]] == ["test_00001_.png", "test_00002_.png"]
    assert {e["subfolder"] for e in result.ui["images"]} == {"shots"} and result.ui["images"][0]["type"] == "output"
    with Image.open(env.output_dir / "shots" / "test_00001_.png") as png:
        assert json.loads(png.text["prompt"]) == meta["prompt"] and json.loads(png.text["workflow"]) == meta["workflow"]
        saved = np.asarray(png, dtype=np.float32) / 255
    assert np.abs(saved - images[0].numpy()).max() <= 0.5 / 255 + 1e-6
    preview = PreviewImage.execute(ctx(env), images=images[:1])
    assert preview.ui["images"][0]["type"] == "temp" and (env.temp_dir / preview.ui["images"][0]["filename"]).is_file()


def test_image_scaling_nodes():
    image = torch.rand(1, 32, 48, 3)
    (scaled,) = ImageScale.execute(None, image=image, upscale_method="bilinear", width=24, height=0, crop="disabled")
    assert scaled.shape == (1, 16, 24, 3)
    (cropped,) = ImageScale.execute(None, image=image, upscale_method="lanczos", width=16, height=16, crop="center")
    assert cropped.shape == (1, 16, 16, 3) and 0 <= cropped.min() and cropped.max() <= 1
    (by,) = ImageScaleBy.execute(None, image=image, upscale_method="nearest-exact", scale_by=0.5)
    assert by.shape == (1, 16, 24, 3)
    (total,) = ImageScaleToTotalPixels.execute(None, image=image, upscale_method="area", megapixels=0.25)
    assert abs(total.shape[1] * total.shape[2] - 0.25 * 1024 * 1024) < 0.01 * 1024 * 1024


def test_pad_for_outpaint_mask_covers_new_area_and_feathers_inward():
    image = torch.rand(1, 64, 64, 3)
    padded, mask = ImagePadForOutpaint.execute(None, image=image, left=16, top=0, right=8, bottom=0, feathering=8)
    assert padded.shape == (1, 64, 88, 3) and torch.equal(padded[:, :, 16:80], image)
    assert padded[0, 0, 0].eq(0.5).all() and mask.shape == (1, 64, 88)
    assert mask[0, :, :16].eq(1).all() and mask[0, :, 80:].eq(1).all()
    assert mask[0, 32, 16] > mask[0, 32, 20] > mask[0, 32, 24] == 0  # fades from the new edge inward


def test_latent_nodes():
    (latent,) = EmptyLatentImage.execute(None, width=128, height=96, batch_size=3)
    assert latent.samples.shape == (3, 4, 12, 16) and latent.samples.eq(0).all()
    random = Latent(torch.randn(1, 4, 8, 8))
    (up,) = LatentUpscale.execute(None, samples=random, upscale_method="bislerp", width=128, height=0, crop="disabled")
    assert up.samples.shape == (1, 4, 16, 16)
    (by,) = LatentUpscaleBy.execute(None, samples=random, upscale_method="bilinear", scale_by=1.5)
    assert by.samples.shape == (1, 4, 12, 12)
    (masked,) = SetLatentNoiseMask.execute(None, samples=random, mask=torch.ones(8, 8))
    assert masked.noise_mask.shape == (1, 1, 8, 8) and masked.samples is random.samples


def test_bislerp_keeps_latent_norms_that_bilinear_shrinks():
    torch.manual_seed(0)
    latent = torch.randn(1, 4, 8, 8)
    slerped = bislerp(latent, 16, 16)
    linear = torch.nn.functional.interpolate(latent, size=(16, 16), mode="bilinear")
    norm = latent.norm(dim=1).mean()
    assert abs(slerped.norm(dim=1).mean() - norm) < abs(linear.norm(dim=1).mean() - norm)
    assert torch.allclose(bislerp(latent, 8, 8), latent)


def test_load_image_takes_its_file_name_from_a_link(env):
    """A PrimitiveString feeding LoadImage.image is valid (as in ComfyUI) and the file is still fingerprinted."""
    from nodegraph import Engine, NodeRegistry
    from nodegraph.formats.api import from_api
    from nodes.utils import PrimitiveString

    Image.fromarray(np.full((4, 4, 3), 10, np.uint8)).save(env.input_dir / "a.png")
    engine = Engine(NodeRegistry([PrimitiveString, LoadImage]), env=env)
    api = {"1": {"class_type": "PrimitiveString", "inputs": {"value": "a.png"}},
           "2": {"class_type": "LoadImage", "inputs": {"image": ["1", 0]}}}
    first = engine.run(from_api(api), outputs=["2"])
    assert first.executed == ["1", "2"] and float(first.values["2"][0][0, 0, 0, 0]) == pytest.approx(10 / 255)
    assert engine.run(from_api(api), outputs=["2"]).cached == ["1", "2"]
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(env.input_dir / "a.png")
    again = engine.run(from_api(api), outputs=["2"])
    assert again.executed == ["2"] and float(again.values["2"][0][0, 0, 0, 0]) == pytest.approx(200 / 255)
