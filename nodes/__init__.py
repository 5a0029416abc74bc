"""nodegraph's own node library, registered through the `nodegraph.nodes` entry point."""

from __future__ import annotations

from nodegraph.registry import NodeRegistry

from . import conditioning, images, latent, loaders, sampling, utility, vae_nodes

NODE_MODULES = (loaders, conditioning, latent, sampling, vae_nodes, images, utility)


def register(registry: NodeRegistry) -> None:
    """Entry point: add every node type of this library to `registry`."""
    for module in NODE_MODULES:
        for node in module.NODES:
            registry.register(node)
