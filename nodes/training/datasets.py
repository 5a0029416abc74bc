"""ComfyUI's training-set loaders: LoadImageSetFromFolderNode and LoadImageTextSetFromFolderNode (loaders).

A training set is a subfolder of the input folder: its images (sorted by name, plus kohya-ss's `<repeats>_<name>`
subfolders for the captioned loader), each with an optional `<stem>.txt` caption. The captioned loader returns one
conditioning entry per image, in image order, which is what TrainLoraNode pairs with the latents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nodegraph import Combo, Int, Node, NodeContext, NodeSchema, Out, Socket

from ..sd.finetune.data import RESIZE_METHODS, caption_for, image_files, kohya_files, load_images
from ..sd.types import ClipHandle, CondItem


def input_subfolders(env: Any) -> list[str]:
    """Folders under the input folder (relative names, forward slashes), for the `folder` combo."""
    if env is None:
        return []
    root = Path(env.input_dir)
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _folder_path(ctx: NodeContext, folder: str) -> Path:
    path = ctx.env.input_path(folder)
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{folder!r} is not a folder of the input folder")
    return Path(path)


def _fingerprint(ctx: NodeContext, folder: str) -> Any:
    try:
        return ctx.fingerprint_file(_folder_path(ctx, folder))
    except (OSError, ValueError):
        return None


_FOLDER_TIP = "A folder inside the input folder holding the training images."


class LoadImageSetFromFolderNode(Node):
    schema = NodeSchema(
        type_id="LoadImageSetFromFolderNode", display_name="Load Image Dataset from Folder", category="loaders",
        description="Loads every image of an input subfolder as one IMAGE batch, for training.",
        inputs=(Combo("folder", input_subfolders, tooltip=_FOLDER_TIP),
                Combo("resize_method", RESIZE_METHODS, "None", optional=True)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, folder: str, resize_method: str = "None") -> tuple[torch.Tensor]:
        return (load_images(image_files(_folder_path(ctx, folder)), resize_method=resize_method),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, folder: str, **_: Any) -> Any:
        return _fingerprint(ctx, folder)


class LoadImageTextSetFromFolderNode(Node):
    schema = NodeSchema(
        type_id="LoadImageTextSetFromFolderNode", display_name="Load Image and Text Dataset from Folder",
        category="loaders",
        description="Loads an input subfolder's images and encodes each one's .txt caption (one CONDITIONING "
                    "entry per image, in order), for training.",
        inputs=(Combo("folder", input_subfolders, tooltip=_FOLDER_TIP),
                Socket("clip", "CLIP", tooltip="Text encoder for the captions."),
                Combo("resize_method", RESIZE_METHODS, "None", optional=True),
                Int("width", -1, min=-1, max=10000, step=1, optional=True,
                    tooltip="Target width; -1 keeps the first image's."),
                Int("height", -1, min=-1, max=10000, step=1, optional=True,
                    tooltip="Target height; -1 keeps the first image's.")),
        outputs=(Out("IMAGE"), Out("CONDITIONING")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, folder: str, clip: ClipHandle, resize_method: str = "None",
                width: int = -1, height: int = -1) -> tuple[torch.Tensor, tuple[CondItem, ...]]:
        from ..sd.text import encode

        files = kohya_files(_folder_path(ctx, folder))
        images = load_images(files, resize_method=resize_method, width=width, height=height)
        encoded: dict[str, CondItem] = {}
        for text in {caption_for(f) for f in files}:
            encoded[text] = encode(clip, text)
        return images, tuple(encoded[caption_for(f)] for f in files)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, folder: str, **_: Any) -> Any:
        return _fingerprint(ctx, folder)


NODES = (LoadImageSetFromFolderNode, LoadImageTextSetFromFolderNode)
