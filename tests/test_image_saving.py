"""Animated WEBP/PNG and SVG saving as a user sees it: files in the output folder that pillow re-reads with their
frames, frame duration and embedded workflow; the UI entries ComfyUI's client expects; path escapes refused."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph import NodeContext
from nodegraph.environment import Environment
from nodegraph.errors import ValidationFailed
from nodegraph.hooks import RunInfo
from nodegraph.paths import UnsafePath
from nodegraph.registry import NodeRegistry
from nodegraph.validation import compile_workflow
from nodegraph.workflow import NodeInstance, Workflow
from nodes.image import SaveAnimatedPNG, SaveAnimatedWEBP, SaveSVGNode, SvgDocuments

META = {"prompt": {"3": {"class_type": "KSampler", "inputs": {}}}, "workflow": {"nodes": [], "links": []}}


@pytest.fixture
def env(tmp_path):
    for name in ("output", "input", "temp"):
        (tmp_path / name).mkdir()
    return Environment(output_dir=(tmp_path / "output").resolve(), input_dir=(tmp_path / "input").resolve(),
                       temp_dir=(tmp_path / "temp").resolve())


def ctx(env, metadata=None):
    return NodeContext("9", "Test", env, run=RunInfo(run_id="r", outputs=[], metadata=metadata or {}))


def frames(count=3, height=6, width=8):
    """Frame i is a flat grey of level (i + 1) / (count + 1): each frame recognisable after a lossless round trip."""
    levels = torch.arange(1, count + 1, dtype=torch.float32) / (count + 1)
    return levels.view(count, 1, 1, 1).expand(count, height, width, 3).contiguous()


def read_frames(path):
    with Image.open(path) as image:
        durations, arrays = [], []
        for index in range(image.n_frames):
            image.seek(index)
            arrays.append(np.asarray(image.convert("RGB"), dtype=np.float32) / 255)
            durations.append(image.info.get("duration"))  # known once the frame is loaded
        return arrays, durations


def png_chunks(path):
    """(type, data) of every chunk, read with the PNG layout itself (pillow skips private chunks)."""
    data = path.read_bytes()[8:]
    chunks = []
    while data:
        length = int.from_bytes(data[:4], "big")
        chunks.append((data[4:8], data[8: 8 + length]))
        data = data[12 + length:]
    return chunks


def test_animated_webp_has_every_frame_its_duration_and_the_workflow(env):
    images = frames()
    result = SaveAnimatedWEBP.execute(ctx(env, META), images=images, filename_prefix="anim/clip", fps=4.0,
                                      lossless=True, quality=80, method="fastest")
    assert result.ui == {"images": [{"filename": "clip_00001_.webp", "subfolder": "anim", "type": "output"}],
                         "animated": [True]}
    path = env.output_dir / "anim" / "clip_00001_.webp"
    arrays, durations = read_frames(path)
    assert len(arrays) == 3 and durations == [250, 250, 250]
    for array, frame in zip(arrays, images):
        assert np.abs(array - frame.numpy()).max() <= 1 / 255 + 1e-6  # lossless, up to 8-bit truncation
    with Image.open(path) as image:
        exif = image.getexif()
    assert exif[0x0110] == "prompt:" + json.dumps(META["prompt"])
    assert exif[0x010F] == "workflow:" + json.dumps(META["workflow"])
    again = SaveAnimatedWEBP.execute(ctx(env), images=images[:1], filename_prefix="anim/clip", fps=6.0,
                                     lossless=False, quality=50, method="default")
    assert again.ui["images"][0]["filename"] == "clip_00002_.webp"  # never overwrites
    assert not [p for p in (env.output_dir / "anim").iterdir() if p.name.startswith(".")]  # no temporary left


def test_animated_png_has_every_frame_its_duration_and_comf_chunks(env):
    images = frames(count=4)
    result = SaveAnimatedPNG.execute(ctx(env, META), images=images, filename_prefix="ComfyUI", fps=10.0,
                                     compress_level=9)
    assert result.ui == {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}],
                         "animated": [True]}
    path = env.output_dir / "ComfyUI_00001_.png"
    arrays, durations = read_frames(path)
    assert len(arrays) == 4 and durations == [100.0] * 4
    for array, frame in zip(arrays, images):
        assert np.abs(array - frame.numpy()).max() <= 1 / 255 + 1e-6
    chunks = png_chunks(path)
    comf = [data for kind, data in chunks if kind == b"comf"]
    assert comf == [b"prompt\0" + json.dumps(META["prompt"]).encode(),
                    b"workflow\0" + json.dumps(META["workflow"]).encode()]
    kinds = [kind for kind, _ in chunks]
    assert kinds.index(b"comf") > kinds.index(b"IDAT")  # after the image data, as ComfyUI writes them


def test_svg_documents_are_saved_with_the_workflow_in_their_metadata(env):
    documents = ('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect/></svg>',
                 '<svg xmlns="http://www.w3.org/2000/svg"><circle r="1"/></svg>')
    meta = {"prompt": {"1": {"class_type": "X", "inputs": {"text": "a ]]> b"}}}, "workflow": {"nodes": []}}
    result = SaveSVGNode.execute(ctx(env, meta), svg=SvgDocuments(documents), filename_prefix="svg/ComfyUI")
    assert [e["filename"] for e in result.ui["images"]] == ["ComfyUI_00001_.svg", "ComfyUI_00002_.svg"]
    assert {(e["subfolder"], e["type"]) for e in result.ui["images"]} == {("svg", "output")}
    import xml.etree.ElementTree as ET

    text = (env.output_dir / "svg" / "ComfyUI_00001_.svg").read_text()
    root = ET.fromstring(text.split("?>", 1)[1])  # still well-formed, despite "]]>" inside the prompt
    metadata = root.find("{http://www.w3.org/2000/svg}metadata")
    assert json.loads(metadata.text) == {"prompt": meta["prompt"], "workflow": meta["workflow"]}
    assert root.find("{http://www.w3.org/2000/svg}rect") is not None
    plain = SaveSVGNode.execute(ctx(env), svg=SvgDocuments(documents[1:]), filename_prefix="plain")
    assert (env.output_dir / plain.ui["images"][0]["filename"]).read_text() == documents[1]


@pytest.mark.parametrize("node", [SaveAnimatedWEBP, SaveAnimatedPNG, SaveSVGNode])
def test_output_nodes_refuse_prefixes_that_leave_the_output_folder(env, node, tmp_path):
    (tmp_path / "outside").mkdir()
    (env.output_dir / "link").symlink_to(tmp_path / "outside")
    registry = NodeRegistry([node])
    for prefix in ("../escape", "/tmp/escape", "link/escape", "a/../../escape"):
        workflow = Workflow(nodes={"1": NodeInstance(type=node.schema.type_id, widgets={"filename_prefix": prefix})})
        with pytest.raises(ValidationFailed) as failed:
            compile_workflow(workflow, registry, env)
        assert any(issue.input_name == "filename_prefix" for issue in failed.value.issues), prefix
    # and at run time too, should a prefix reach execute without validation
    widgets = {SaveSVGNode: {"svg": SvgDocuments(("<svg/>",))},
               SaveAnimatedPNG: {"images": frames(1), "fps": 6.0, "compress_level": 4},
               SaveAnimatedWEBP: {"images": frames(1), "fps": 6.0, "lossless": True, "quality": 80,
                                  "method": "default"}}[node]
    with pytest.raises(UnsafePath):
        node.execute(ctx(env), filename_prefix="../escape", **widgets)
    assert not list((tmp_path / "outside").iterdir()) and not (tmp_path / "escape_00001_.png").exists()


def test_a_workflow_of_image_nodes_runs_through_the_engine(env):
    """EmptyImage -> noise -> ImageStitch (image2 left unconnected) -> blur -> GetImageSize, and the batch saved as
    an APNG (the noise makes the two frames differ: pillow merges identical neighbouring frames)."""
    from nodegraph import Engine
    from nodegraph.formats.api import from_api

    import nodes.image

    engine = Engine(NodeRegistry(list(nodes.image.NODES)), env=env)
    api = {"1": {"class_type": "EmptyImage", "inputs": {"width": 6, "height": 4, "batch_size": 2, "color": 0xFF0000}},
           "6": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 5, "strength": 0.1}},
           "2": {"class_type": "ImageStitch", "inputs": {"image1": ["6", 0], "direction": "right",
                                                          "match_image_size": True, "spacing_width": 0,
                                                          "spacing_color": "white"}},
           "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 1, "sigma": 1.0}},
           "4": {"class_type": "GetImageSize", "inputs": {"image": ["3", 0]}},
           "5": {"class_type": "SaveAnimatedPNG", "inputs": {"images": ["3", 0], "filename_prefix": "run",
                                                              "fps": 2.0, "compress_level": 1}}}
    result = engine.run(from_api(api), outputs=["4", "5"])
    assert result.values["4"] == (6, 4, 2)
    arrays, durations = read_frames(env.output_dir / "run_00001_.png")
    assert len(arrays) == 2 and durations == [500.0, 500.0] and arrays[0][..., 0].mean() > 0.8
