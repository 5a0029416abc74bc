"""File fingerprints: content digests memoised by stat identity, sampled for big files, used by every file node."""

import json
import os
import struct

import numpy as np
import pytest
from PIL import Image

import nodegraph.fingerprint as fp
from nodegraph import NodeContext
from nodegraph.environment import Environment, ModelPaths
from nodegraph.fingerprint import FileFingerprints
from nodes.controlnet_nodes import ControlNetLoader
from nodes.image import LoadImage
from nodes.loaders import CheckpointLoaderSimple, VAELoader
from nodes.lora_nodes import LoraLoader


def keep_times(path, stat):
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_digest_follows_content_not_times_and_reads_once(tmp_path, monkeypatch):
    monkeypatch.setattr(fp, "RACY_NS", 0)  # trust digests at once (see the next test)
    path = tmp_path / "a.bin"
    path.write_bytes(b"one")
    prints = FileFingerprints()
    first = prints.file(path)
    assert prints.file(path) == first and prints.reads == 1  # unchanged: a stat, no read
    os.utime(path, ns=(1, 2_000_000_000))  # touched: read again, same content, same digest
    assert prints.file(path) == first and prints.reads == 2
    stat = path.stat()
    path.write_bytes(b"two")  # same size, times put back: ctime and the content still tell
    keep_times(path, stat)
    assert prints.file(path) != first
    copy = tmp_path / "copy.bin"
    copy.write_bytes(b"one")
    assert prints.file(copy) == first  # a copy of the same bytes is the same input


def test_a_file_changed_just_now_is_read_again(tmp_path):
    """A write in the same timestamp tick keeps size and times: a digest that young is not memoised."""
    path = tmp_path / "a.txt"
    path.write_text("4")
    prints = FileFingerprints()
    assert prints.file(path) == prints.file(path) and prints.reads == 2 and len(prints) == 0


def test_replaced_file_with_same_size_and_mtime_is_seen(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"A" * 100)
    prints = FileFingerprints()
    first = prints.file(path)
    stat = path.stat()
    other = tmp_path / "new.tmp"
    other.write_bytes(b"B" * 100)
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, path)  # a new inode under the old name
    assert prints.file(path) != first


def _safetensors(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def test_big_files_are_sampled_header_size_and_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(fp, "FULL_HASH_LIMIT", 4096)
    monkeypatch.setattr(fp, "SAMPLE_CHUNK", 256)
    monkeypatch.setattr(fp, "SAMPLE_CHUNKS", 4)
    header = {"w": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]}, "__metadata__": {"x": "y" * 400}}
    data = bytearray(os.urandom(4096))
    path = tmp_path / "big.safetensors"
    path.write_bytes(_safetensors(header, bytes(data)))
    first = FileFingerprints().file(path)
    assert first.startswith("sampled-")
    header["__metadata__"]["x"] = "z" * 400  # past the first chunk: the header is hashed whole
    path.write_bytes(_safetensors(header, bytes(data)))
    assert FileFingerprints().file(path) != first
    data[-1] ^= 0xFF  # the last chunk is sampled
    path.write_bytes(_safetensors(header, bytes(data)))
    second = FileFingerprints().file(path)
    assert second != first
    path.write_bytes(_safetensors(header, bytes(data) + b"\0"))  # the size is hashed
    assert FileFingerprints().file(path) != second


def test_folder_digest_covers_names_and_contents(tmp_path):
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "w.bin").write_bytes(b"1")
    prints = FileFingerprints()
    first = prints.path(folder)
    (folder / "unet" / "w.bin").write_bytes(b"2")
    second = prints.path(folder)
    (folder / "unet" / "w.bin").rename(folder / "unet" / "v.bin")
    assert len({first, second, prints.path(folder)}) == 3


@pytest.fixture
def env(tmp_path):
    for name in ("input", "output", "temp"):
        (tmp_path / name).mkdir()
    return Environment(input_dir=tmp_path / "input", output_dir=tmp_path / "output", temp_dir=tmp_path / "temp",
                       models=ModelPaths(roots=[tmp_path / "models"]))


@pytest.mark.parametrize("node, folder, widget", [
    (CheckpointLoaderSimple, "checkpoints", "ckpt_name"), (VAELoader, "vae", "vae_name"),
    (LoraLoader, "loras", "lora_name"), (ControlNetLoader, "controlnet", "control_net_name"),
])
def test_model_loaders_fingerprint_content(env, node, folder, widget):
    """Before: size and mtime, so an edit that kept both served stale outputs and a touch reloaded."""
    path = env.models.folder_dirs(folder)[0] / "m.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights-1")
    ctx = NodeContext("1", node.schema.type_id, env)
    first = node.fingerprint(ctx, **{widget: "m.safetensors"})
    stat = path.stat()
    path.write_bytes(b"weights-2")
    keep_times(path, stat)
    second = node.fingerprint(ctx, **{widget: "m.safetensors"})
    assert second != first
    os.utime(path, ns=(1, 5_000_000_000))
    assert node.fingerprint(ctx, **{widget: "m.safetensors"}) == second
    assert node.fingerprint(ctx, **{widget: "missing.safetensors"}) is None  # execute names the missing file


def test_load_image_uses_the_contract(env):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(env.input_dir / "a.png")
    prints = FileFingerprints()
    ctx = NodeContext("1", "LoadImage", env, fingerprints=prints)
    assert LoadImage.fingerprint(ctx, image="a.png") == FileFingerprints().file(env.input_dir / "a.png")
    assert prints.reads == 1
