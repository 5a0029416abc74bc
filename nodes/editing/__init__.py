"""Editing nodes ("sampling/editing"): DDIM inversion, DiffEdit's mask and Pix2Pix-Zero, training-free image editing
composed from ordinary sampling. The maths lives in nodes/sd (inversion.py, diffedit.py, pix2pix_zero.py)."""

from __future__ import annotations

from . import diffedit, inversion, pix2pix_zero
from .diffedit import DiffEditMask
from .inversion import DDIMInversion, ImageReconstructionError
from .pix2pix_zero import CrossAttentionRecord, Pix2PixZeroEditDirection, Pix2PixZeroGuidance

NODES = (*inversion.NODES, *diffedit.NODES, *pix2pix_zero.NODES)

__all__ = ["NODES", "CrossAttentionRecord", "DDIMInversion", "DiffEditMask", "ImageReconstructionError",
           "Pix2PixZeroEditDirection", "Pix2PixZeroGuidance"]
