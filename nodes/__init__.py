"""nodegraph's own node library, registered through the `nodegraph.nodes` entry point."""

from __future__ import annotations

from nodegraph.registry import NodeRegistry

from .models.embedded import add_embedded_checkpoint
from . import (  # one family per line: node packs of a family are added beside it
    conditioning,
    control,
    controlnet_nodes,
    editing,
    gligen,
    guidance,
    guidance_classifier,
    image,
    latent,
    loaders,
    loaders_advanced,
    lora_nodes,
    mask,
    metrics,
    model_editing,
    model_loaders,
    model_merging,
    model_patches,
    rebatch,
    sampling,
    training,
    upscaling,
    utils,
    vae_nodes,
    vision,
    xyz,
)

NODE_MODULES = (
    loaders,
    loaders_advanced,
    model_loaders,
    lora_nodes,
    conditioning,
    controlnet_nodes,
    control,
    latent,
    sampling,
    model_patches,
    vae_nodes,
    image,
    mask,
    utils,
    rebatch,
    upscaling,
    model_merging,
    vision,
    gligen,
    training,
    xyz,
    metrics,
    editing,
    guidance,
    model_editing,
    guidance_classifier,
)


def register(registry: NodeRegistry) -> None:
    """Entry point: add every node type of this library to `registry`."""
    for module in NODE_MODULES:
        for node in module.NODES:
            registry.register(node)
    registry.add_environment_setup(add_embedded_checkpoint)
    registry.add_environment_setup(metrics.add_builtin_networks)
