"""Training nodes (ComfyUI's "training" menu and its dataset / LoRA loaders): image sets from a folder with
captions, TrainLoraNode, LoraModelLoader, SaveLoRANode and LossGraphNode; and personalization from a few images
(TextualInversionTrain, DreamBoothTrain, CustomDiffusionTrain). The maths is nodes/sd/finetune/ and
nodes/sd/personalization.py."""

from __future__ import annotations

from . import datasets, graph, lora, personalize
from .datasets import LoadImageSetFromFolderNode, LoadImageTextSetFromFolderNode
from .graph import LossGraphNode
from .lora import LoraModelLoader, SaveLoRANode, TrainLoraNode

NODES = datasets.NODES + lora.NODES + graph.NODES + personalize.NODES

__all__ = ["LoadImageSetFromFolderNode", "LoadImageTextSetFromFolderNode", "LoraModelLoader", "LossGraphNode",
           "NODES", "SaveLoRANode", "TrainLoraNode"]
