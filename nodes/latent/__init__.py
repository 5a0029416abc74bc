"""Latent nodes (ComfyUI's "latent" menu): empty latents and resizing, batches, compositing and geometry,
arithmetic and latent operations, and .latent files. The VAE nodes live in nodes/vae_nodes.py."""

from __future__ import annotations

from . import advanced, basic, batch, files, operations, transform
from .advanced import LatentAdd, LatentConcat, LatentCut, LatentInterpolate, LatentMultiply, LatentSubtract
from .basic import EmptyLatentImage, LatentUpscale, LatentUpscaleBy, SetLatentNoiseMask
from .batch import LatentBatch, LatentBatchSeedBehavior, LatentFromBatch, RepeatLatentBatch
from .files import LoadLatent, SaveLatent
from .operations import (LatentApplyOperation, LatentApplyOperationCFG, LatentOperationSharpen,
                         LatentOperationTonemapReinhard)
from .transform import LatentBlend, LatentComposite, LatentCompositeMasked, LatentCrop, LatentFlip, LatentRotate

NODES = (*basic.NODES, *batch.NODES, *transform.NODES, *advanced.NODES, *operations.NODES, *files.NODES)

__all__ = ["EmptyLatentImage", "LatentAdd", "LatentApplyOperation", "LatentApplyOperationCFG", "LatentBatch",
           "LatentBatchSeedBehavior", "LatentBlend", "LatentComposite", "LatentCompositeMasked", "LatentConcat",
           "LatentCrop", "LatentCut", "LatentFlip", "LatentFromBatch", "LatentInterpolate", "LatentMultiply",
           "LatentOperationSharpen", "LatentOperationTonemapReinhard", "LatentRotate", "LatentSubtract",
           "LatentUpscale", "LatentUpscaleBy", "LoadLatent", "NODES", "RepeatLatentBatch", "SaveLatent",
           "SetLatentNoiseMask"]
