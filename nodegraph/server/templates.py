"""Our shipped workflows as ComfyUI's frontend's core templates: `/templates/index.json` in the
`comfyui-workflow-templates` index format, each template's workflow (`/templates/NAME.json`, ComfyUI's UI format
from `workflows/comfyui/`) and its thumbnail (`/templates/NAME-1.png`, rendered once from the workflow's own
output and committed in `workflows/comfyui/thumbnails/`).

ComfyUI serves these files from the templates package's folder; the frontend fetches them beside the page
(not under /api), and reads the index only when it is `application/json`.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from .responses import ApiError, json_response

WORKFLOWS_DIR = Path(__file__).resolve().parents[2] / "workflows"
"""The repository's shipped workflows (a source checkout or an editable install)."""
THUMBNAIL_SUFFIX = "-1.png"
DESCRIPTIONS = {
    "txt2img": ("Text to image", "A prompt to a picture: the classic SD1.5 graph on the shipped embedded model."),
    "img2img": ("Image to image", "Redraw an input picture, keeping its layout (denoise below 1)."),
    "inpaint": ("Inpainting", "Redraw only the masked part of a picture."),
    "hires-fix": ("Hires fix", "Generate small, upscale the latent, then refine at the larger size."),
    "lora": ("LoRA", "Apply the shipped style LoRA to the model and the text encoder."),
    "controlnet": ("ControlNet", "Follow an outline image with the shipped outline ControlNet."),
    "sag": ("Self-attention guidance", "Sharper details by guiding with the model's own attention maps."),
    "sega": ("Semantic guidance", "Push the image toward or away from concepts (SEGA)."),
    "hires_fix_upscale_model": ("Hires fix with an upscale model", "Upscale with the shipped 2x model, then refine."),
    "separate_vae": ("Separate VAE", "Decode with a VAE loaded from its own file."),
    "model_merge_save": ("Merge and save", "Merge two models block by block and save the result."),
    "style_model": ("Image prompt (style model)", "Draw what a reference image shows, through CLIP vision."),
    "t2i_adapter": ("T2I-Adapter", "Place the shape on a silhouette with the shipped T2I-Adapter."),
    "gligen_boxes": ("GLIGEN boxes", "Ask for a phrase inside a box (GLIGEN)."),
    "lora_training": ("Train a LoRA", "Train a LoRA on five captioned images, save it and sample with it."),
    "textual_inversion": ("Textual inversion", "Learn a new word from five images and prompt with it."),
    "xyz-samplers-steps": ("X/Y plot: samplers x steps", "A labelled grid of one prompt over samplers and steps."),
    "metrics": ("Measure images", "FID, KID, IS, precision/recall, LPIPS, CLIP score and accuracy of a batch."),
    "ddim-inversion": ("DDIM inversion", "Invert an image to its noise and sample it back."),
    "diffedit": ("DiffEdit", "Find what to change from two prompts and inpaint only there."),
    "pix2pix-zero": ("Pix2Pix-Zero", "Edit an image along a caption direction, keeping its layout."),
    "attend-and-excite": ("Attend-and-Excite", "Make a neglected subject of the prompt appear."),
    "panorama": ("Panorama (MultiDiffusion)", "A 512 x 128 picture from the 128 px model, with a region prompt."),
    "model-editing": ("Model editing (TIME)", "Edit the model so one phrase means another."),
    "classifier-guidance": ("Classifier guidance", "Steer an empty prompt toward a shape with a noisy classifier."),
    "instruct-pix2pix": ("InstructPix2Pix", "Edit an image by an instruction."),
    "depth2img": ("Depth to image", "Generate a picture that follows a depth map."),
    "photomaker": ("PhotoMaker", "Draw the shape and colour four reference images share (PhotoMaker ID encoder)."),
}
"""Title and description of each shipped workflow; one not listed here is shown under its file name."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def template_names(workflows_dir: Path = WORKFLOWS_DIR) -> list[str]:
    """Shipped workflows that have a ComfyUI UI-format export, txt2img (the default) first."""
    folder = workflows_dir / "comfyui"
    names = sorted(path.stem for path in folder.glob("*.json")) if folder.is_dir() else []
    return sorted(names, key=lambda name: (name != "txt2img", name))


def template_index(workflows_dir: Path = WORKFLOWS_DIR) -> list[dict[str, Any]]:
    """One category holding every shipped workflow, in the templates package's index format."""
    templates = []
    for name in template_names(workflows_dir):
        title, description = DESCRIPTIONS.get(name, (name, f"The shipped {name} workflow."))
        templates.append({"name": name, "title": title, "description": description, "mediaType": "image",
                          "mediaSubtype": "png", "tags": ["nodegraph"], "models": ["nodegraph embedded"]})
    return [{"moduleName": "default", "title": "nodegraph", "type": "image", "category": "nodegraph",
             "templates": templates}]


def template_file(name: str, workflows_dir: Path = WORKFLOWS_DIR) -> Path | None:
    """The file behind `/templates/NAME.json` or `/templates/NAME-1.png`, or None."""
    if not _NAME.match(name) or ".." in name:
        return None
    folder = workflows_dir / "comfyui"
    if name.endswith(THUMBNAIL_SUFFIX):
        path = folder / "thumbnails" / f"{name[:-len(THUMBNAIL_SUFFIX)]}.png"
    elif name.endswith(".json"):
        path = folder / name
    else:
        return None
    return path if path.is_file() else None


async def get_template(request: web.Request) -> web.StreamResponse:
    """GET /templates/{file}: `index.json` (and its locale variants `index.LANG.json`, the same English index),
    `index_logo.json` (no logos: {}), a workflow `NAME.json` or a thumbnail `NAME-1.png`."""
    name = request.match_info["file"]
    if name == "index.json" or re.fullmatch(r"index\.[A-Za-z-]{2,10}\.json", name):
        return json_response(await asyncio.to_thread(template_index))
    if name == "index_logo.json":
        return json_response({})
    path = await asyncio.to_thread(template_file, name)
    if path is None:
        raise ApiError(404, "not_found", "No such template", name)
    content_type = "image/png" if path.suffix == ".png" else "application/json"
    return web.FileResponse(path, headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff",
                                           "Cache-Control": "no-cache"})
