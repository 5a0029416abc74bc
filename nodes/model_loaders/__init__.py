"""Loaders of model parts: a VAE or TAESD, a diffusion model or text encoders alone, unCLIP checkpoints, and
hypernetworks (ComfyUI's "loaders" and "advanced/loaders" menus). The maths they call lives in nodes/sd/."""

from __future__ import annotations

from . import hypernetwork, parts, vae

NODES = (*vae.NODES, *parts.NODES, *hypernetwork.NODES)
