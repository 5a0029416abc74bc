"""Merging and saving models (ComfyUI's advanced/model_merging menu, and LoraSave)."""

from . import merge, save
from .merge import (
    CLIPMergeAdd,
    CLIPMergeSimple,
    CLIPMergeSubtract,
    ModelMergeAdd,
    ModelMergeBlocks,
    ModelMergeSD1,
    ModelMergeSD2,
    ModelMergeSDXL,
    ModelMergeSimple,
    ModelMergeSubtract,
)
from .save import CheckpointSave, CLIPSave, LoraSave, ModelSave, VAESave

NODES = (*merge.NODES, *save.NODES)
__all__ = ["CLIPMergeAdd", "CLIPMergeSimple", "CLIPMergeSubtract", "CLIPSave", "CheckpointSave", "LoraSave",
           "ModelMergeAdd", "ModelMergeBlocks", "ModelMergeSD1", "ModelMergeSD2", "ModelMergeSDXL", "ModelMergeSimple",
           "ModelMergeSubtract", "ModelSave", "NODES", "VAESave"]
