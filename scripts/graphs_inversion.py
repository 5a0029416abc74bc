"""Example workflows for training-free editing (issue #18, part A): DDIM inversion, DiffEdit and Pix2Pix-Zero, each
editing workflows/input/example.png (a blue square on yellow) with the embedded model. Merged into
build_workflows.GRAPHS."""

from __future__ import annotations

from typing import Any

from nodes.models.embedded import EMBEDDED_NAME
from nodes.sd.shapes import COLOURS

SOURCE = "a blue square on a yellow background"
STEPS = 10


def _source(prompt: str = SOURCE) -> dict[str, Any]:
    """Loader, prompts, the example image encoded, and DDIMInversion of it with the source prompt (node "20")."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]},
              "_meta": {"title": "Source prompt"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]},
              "_meta": {"title": "Negative prompt"}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
        "20": {"class_type": "DDIMInversion", "inputs": {
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["11", 0],
            "steps": STEPS, "cfg": 1.0, "scheduler": "simple", "denoise": 1.0, "refine_iterations": 0,
            "report_error": True}},
    }


def ddim_inversion() -> dict[str, Any]:
    """Invert the image and sample it back with KSamplerAdvanced (add_noise disabled, euler, same schedule); the
    round trip's error is reported by DDIMInversion and, on the decoded images, by ImageReconstructionError."""
    graph = _source()
    graph["20"]["inputs"]["refine_iterations"] = 1
    graph["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["4", 0], "add_noise": "disable", "noise_seed": 0, "steps": STEPS, "cfg": 1.0, "sampler_name": "euler",
        "scheduler": "simple", "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["20", 0],
        "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    graph["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}
    graph["12"] = {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["4", 2]}}
    graph["13"] = {"class_type": "ImageReconstructionError", "inputs": {"reference": ["12", 0], "image": ["8", 0]}}
    graph["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ddim_inversion"}}
    return graph


def _sampler_parts(graph: dict[str, Any]) -> None:
    graph["21"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    graph["22"] = {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": "simple",
                                                              "steps": STEPS, "denoise": 1.0}}


def diffedit() -> dict[str, Any]:
    """DiffEdit: the mask where "blue square" and "green square" disagree, then masked sampling of the target prompt
    from the inverted NOISE over the source latent (the rest of the picture stays as it was)."""
    graph = _source()
    graph["20"]["inputs"]["report_error"] = False
    graph["14"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a green square on a yellow background",
                                                              "clip": ["4", 1]}, "_meta": {"title": "Target prompt"}}
    graph["30"] = {"class_type": "DiffEditMask", "inputs": {
        "model": ["4", 0], "source": ["6", 0], "target": ["14", 0], "negative": ["7", 0], "latent_image": ["11", 0],
        "seed": 0, "steps": STEPS, "cfg": 6.0, "scheduler": "simple", "strength": 0.5, "num_maps": 10,
        "threshold_ratio": 3.0}}
    graph["31"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["30", 0]}}
    _sampler_parts(graph)
    graph["23"] = {"class_type": "CFGGuider", "inputs": {"model": ["4", 0], "positive": ["14", 0],
                                                         "negative": ["7", 0], "cfg": 6.0}}
    graph["3"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["20", 1], "guider": ["23", 0], "sampler": ["21", 0], "sigmas": ["22", 0], "latent_image": ["31", 0]}}
    graph["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}
    graph["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "diffedit"}}
    return graph


def _captions(shape: str) -> str:
    pairs = [(fg, bg) for fg in COLOURS for bg in COLOURS if fg != bg][::6]
    article = lambda word: "an" if word[0] in "aeiou" else "a"  # noqa: E731
    return "\n".join(f"{article(fg)} {fg} {shape} on {article(bg)} {bg} background" for fg, bg in pairs)


def pix2pix_zero() -> dict[str, Any]:
    """Pix2Pix-Zero square -> circle: the reconstruction run records the cross-attention maps, the edit direction
    from two caption lists is added to the source prompt, and guidance keeps the maps while sampling the edit."""
    graph = _source()
    graph["20"]["inputs"]["report_error"] = False
    _sampler_parts(graph)
    graph["40"] = {"class_type": "CrossAttentionRecord", "inputs": {
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "cfg": 3.0, "sampler": ["21", 0],
        "sigmas": ["22", 0], "latent_image": ["20", 0]}}
    graph["41"] = {"class_type": "Pix2PixZeroGuidance", "inputs": {"model": ["4", 0], "maps": ["40", 0],
                                                                  "amount": 0.1}}
    graph["42"] = {"class_type": "Pix2PixZeroEditDirection", "inputs": {
        "conditioning": ["6", 0], "clip": ["4", 1], "source_captions": _captions("square"),
        "target_captions": _captions("circle"), "strength": 1.0}}
    graph["3"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["41", 0], "add_noise": False, "noise_seed": 0, "cfg": 3.0, "positive": ["42", 0],
        "negative": ["7", 0], "sampler": ["21", 0], "sigmas": ["22", 0], "latent_image": ["20", 0]}}
    graph["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}
    graph["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "pix2pix_zero"}}
    return graph


GRAPHS = {"ddim-inversion": ddim_inversion, "diffedit": diffedit, "pix2pix-zero": pix2pix_zero}
