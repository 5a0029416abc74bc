"""VAELoader: VAE files, the embedded model's VAE, and TAESD pairs from `vae_approx` (ComfyUI's "taesd", "taesdxl")."""

from __future__ import annotations

from typing import Any

from nodegraph import Combo, Node, NodeContext, NodeSchema, Out

from ..loaders import _file_fingerprint, part_dtypes
from ..sd.types import VaeHandle

TAESD_NAMES = ("taesd", "taesdxl")
"""Listed after the `vae` folder's files when both halves are in `vae_approx` (nodes/sd/taesd.py)."""


def vae_names(env: Any) -> list[str]:
    """VAELoader's options: the `vae` folder (the embedded model's VAE first), then each complete TAESD pair."""
    if env is None:
        return []
    from ..sd.taesd_names import available

    names = env.models.list("vae")
    return names + [name for name in available(env.models.list("vae_approx")) if name not in names]


def _is_taesd(env: Any, vae_name: str) -> bool:
    """A TAESD name that no file of the `vae` folder shadows."""
    return vae_name in TAESD_NAMES and vae_name not in env.models.list("vae")


class VAELoader(Node):
    schema = NodeSchema(
        type_id="VAELoader", display_name="Load VAE", category="loaders",
        description="Loads a VAE file (SD1/SD2 or SDXL latent scaling, told from its weights) or a TAESD pair.",
        inputs=(Combo("vae_name", vae_names),), outputs=(Out("VAE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, vae_name: str) -> tuple[VaeHandle]:
        dtype = part_dtypes(ctx.env).vae  # force_upcast unknown before reading: fp32 on CUDA unless told
        if _is_taesd(ctx.env, vae_name):
            from ..sd.taesd import load_taesd

            return (load_taesd(ctx.env, vae_name, dtype=dtype),)
        from ..sd.loading import load_vae

        return (load_vae(ctx.env.models.resolve("vae", vae_name), manager=ctx.env.manager, dtype=dtype),)

    @classmethod
    def fingerprint(cls, ctx: NodeContext, vae_name: str) -> Any:
        if _is_taesd(ctx.env, vae_name):
            from ..sd.taesd_names import TAESD_KINDS, find_files

            kind, stems = TAESD_KINDS[vae_name], find_files(ctx.env.models.list("vae_approx"))
            halves = (stems.get(kind.encoder, ""), stems.get(kind.decoder, ""))
            return tuple(_file_fingerprint(ctx, "vae_approx", name) for name in halves)
        return _file_fingerprint(ctx, "vae", vae_name)


NODES = (VAELoader,)
