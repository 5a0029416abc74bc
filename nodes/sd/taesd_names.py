"""TAESD's file names and latent scalings, apart from its maths so VAELoader can list names without loading torch
model code (diffusers takes seconds to import; `/object_info` lists VAELoader's options)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaesdKind:
    """One TAESD pair: its file name stems in `vae_approx` and the latent scaling of the family it serves."""

    name: str
    encoder: str
    decoder: str
    families: tuple[str, ...]
    scaling_factor: float
    shift_factor: float = 0.0


TAESD_KINDS: dict[str, TaesdKind] = {
    "taesd": TaesdKind("taesd", "taesd_encoder", "taesd_decoder", ("sd1", "sd2"), 0.18215),
    "taesdxl": TaesdKind("taesdxl", "taesdxl_encoder", "taesdxl_decoder", ("sdxl",), 0.13025),
}
"""The TAESD VAEs VAELoader can list (ComfyUI's names); SD3's and Flux's need 16-channel models we do not run."""

PREVIEW_METHODS = ("auto", "latent2rgb", "taesd", "none")
"""ComfyUI's --preview-method choices: auto is TAESD when its decoder is installed, else the linear projection."""


def stem_of(file_name: str) -> str:
    """"taesd_decoder.pth" -> "taesd_decoder" (names in sub-folders keep only their last part)."""
    return file_name.rsplit("/", 1)[-1].split(".", 1)[0]


def find_files(names: list[str]) -> dict[str, str]:
    """The first file of each TAESD stem among a `vae_approx` folder listing (stem -> listed name)."""
    found: dict[str, str] = {}
    for name in names:
        found.setdefault(stem_of(name), name)
    return found


def available(names: list[str]) -> list[str]:
    """The TAESD kinds ("taesd", "taesdxl") whose encoder and decoder are both in a `vae_approx` listing."""
    stems = find_files(names)
    return [kind.name for kind in TAESD_KINDS.values() if kind.encoder in stems and kind.decoder in stems]
