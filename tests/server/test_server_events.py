"""Preview encoding: whatever a sampler hands the progress hook becomes one small JPEG frame."""

import io
import struct

import numpy as np
import pytest
from PIL import Image

from nodegraph.server.events import encode_preview
from nodegraph.server.ws import preview_frame


def _size(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG"
        return image.size


def test_pil_array_tensor_and_tuple_previews():
    assert _size(encode_preview(Image.new("RGBA", (1024, 512)))) == (512, 256)  # bounded to 512 px
    assert _size(encode_preview(np.full((1, 32, 48, 3), 0.5, dtype=np.float32))) == (48, 32)  # IMAGE: B,H,W,C
    assert _size(encode_preview(np.zeros((3, 20, 40)))) == (40, 20)  # channels first
    assert _size(encode_preview(("JPEG", Image.new("RGB", (8, 8)), 512))) == (8, 8)  # ComfyUI's tuple
    torch = pytest.importorskip("torch")
    assert _size(encode_preview(torch.rand(1, 16, 24, 3))) == (24, 16)


def test_unusable_preview_is_skipped_not_raised():
    assert encode_preview("not an image") is None
    assert encode_preview(object()) is None


def test_frame_layout():
    frame = preview_frame(b"\xff\xd8jpeg")
    assert struct.unpack(">II", frame[:8]) == (1, 1) and frame[8:] == b"\xff\xd8jpeg"
