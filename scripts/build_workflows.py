"""Write the shipped example workflows (native JSON, plus each in ComfyUI's UI format as we export it) and the
example input images they read. Re-run after changing a node declaration; a test checks the files are current.

Usage: python scripts/build_workflows.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nodegraph.formats import ui_from_native  # noqa: E402
from nodegraph.formats.api import from_api  # noqa: E402
from nodegraph.registry import default_registry  # noqa: E402
from nodegraph.workflow import Workflow, dump_workflow  # noqa: E402
from nodes.models.embedded import ADAPTERS, EMBEDDED_NAME  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))  # the per-topic graph modules beside this script
import graphs_attend  # noqa: E402
import graphs_inversion  # noqa: E402
import graphs_ip2p  # noqa: E402
import graphs_metrics  # noqa: E402
import graphs_personalize  # noqa: E402
import graphs_photomaker  # noqa: E402
import graphs_time  # noqa: E402
import graphs_training  # noqa: E402
import graphs_xyz  # noqa: E402

WORKFLOWS = ROOT / "workflows"
PROMPT = "a red circle on a blue background"
COLUMN = 320


def base(prompt: str = PROMPT, seed: int = 1, steps: int = 20, cfg: float = 6.0) -> dict[str, Any]:
    """ComfyUI's default graph on the embedded model at its native 128 px."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]},
              "_meta": {"title": "Positive prompt"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]},
              "_meta": {"title": "Negative prompt"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 4}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "txt2img"}},
    }


def img2img() -> dict[str, Any]:
    graph = base("a red square on a yellow background")
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
    graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    graph["3"]["inputs"].update(latent_image=["11", 0], denoise=0.6)
    graph["9"]["inputs"]["filename_prefix"] = "img2img"
    del graph["5"]
    return graph


def inpaint() -> dict[str, Any]:
    """The transparent shape of example_inpaint.png is repainted; the background is kept."""
    graph = base("a green circle on a yellow background")
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "example_inpaint.png"}}
    graph["11"] = {"class_type": "VAEEncodeForInpaint",
                   "inputs": {"pixels": ["10", 0], "vae": ["4", 2], "mask": ["10", 1], "grow_mask_by": 6}}
    graph["3"]["inputs"].update(latent_image=["11", 0])
    graph["9"]["inputs"]["filename_prefix"] = "inpaint"
    del graph["5"]
    return graph


def hires_fix() -> dict[str, Any]:
    """Sample at 128 px, upscale the latent 2x and re-sample its detail at denoise 0.5."""
    graph = base()
    graph["5"]["inputs"]["batch_size"] = 1
    graph["12"] = {"class_type": "LatentUpscaleBy",
                   "inputs": {"samples": ["3", 0], "upscale_method": "bislerp", "scale_by": 2.0}}
    graph["13"] = {"class_type": "KSampler", "inputs": {
        "seed": 2, "steps": 12, "cfg": 6.0, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 0.5,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["12", 0]}}
    graph["8"]["inputs"]["samples"] = ["13", 0]
    graph["9"]["inputs"]["filename_prefix"] = "hires"
    return graph


def hires_fix_upscale_model() -> dict[str, Any]:
    """Hires fix in pixel space: sample at 128 px, decode, upscale 2x with the shipped upscale model, scale to
    the 192 px target, encode and re-sample its detail at denoise 0.5."""
    graph = base()
    graph["5"]["inputs"]["batch_size"] = 1
    graph["12"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": ADAPTERS["upscale"][1]}}
    graph["13"] = {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["12", 0], "image": ["8", 0]}}
    graph["14"] = {"class_type": "ImageScaleBy",
                   "inputs": {"image": ["13", 0], "upscale_method": "area", "scale_by": 0.75}}
    graph["15"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["14", 0], "vae": ["4", 2]}}
    graph["16"] = {"class_type": "KSampler", "inputs": {
        "seed": 2, "steps": 12, "cfg": 6.0, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 0.5,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["15", 0]}}
    graph["17"] = {"class_type": "VAEDecode", "inputs": {"samples": ["16", 0], "vae": ["4", 2]}}
    graph["9"]["inputs"].update(images=["17", 0], filename_prefix="hires_upscale_model")
    return graph


def lora() -> dict[str, Any]:
    """The embedded model's style LoRA on its trigger word: the background drawn in diagonal stripes."""
    graph = base("a yellow star on a purple background, striped")
    graph["10"] = {"class_type": "LoraLoader", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora_name": ADAPTERS["lora"][1], "strength_model": 1.0,
        "strength_clip": 1.0}}
    graph["3"]["inputs"]["model"] = ["10", 0]
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["10", 1]
    graph["9"]["inputs"]["filename_prefix"] = "lora"
    return graph


def controlnet() -> dict[str, Any]:
    """The embedded model's outline ControlNet: the shape is drawn inside example_outline.png's outline."""
    graph = base("a green triangle on a white background")
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "example_outline.png"}}
    graph["11"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": ADAPTERS["controlnet"][1]}}
    graph["12"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": ["11", 0], "image": ["10", 0],
        "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    graph["3"]["inputs"].update(positive=["12", 0], negative=["12", 1])
    graph["9"]["inputs"]["filename_prefix"] = "controlnet"
    return graph


def t2i_adapter() -> dict[str, Any]:
    """The embedded model's silhouette T2I-Adapter (loaded by ControlNetLoader, applied by ControlNetApplyAdvanced):
    the shape fills example_silhouette.png's white area."""
    graph = controlnet()
    graph["6"]["inputs"]["text"] = "a yellow circle on a purple background"
    graph["10"]["inputs"]["image"] = "example_silhouette.png"
    graph["11"]["inputs"]["control_net_name"] = ADAPTERS["t2i_adapter"][1]
    graph["9"]["inputs"]["filename_prefix"] = "t2i_adapter"
    return graph


def gligen_boxes() -> dict[str, Any]:
    """The embedded model's GLIGEN: the prompt names no position; the text box asks for the shape top left (the shipped
    tiny GLIGEN does not place shapes yet: see the model card)."""
    graph = base()
    graph["10"] = {"class_type": "GLIGENLoader", "inputs": {"gligen_name": ADAPTERS["gligen"][1]}}
    graph["11"] = {"class_type": "GLIGENTextBoxApply", "inputs": {
        "conditioning_to": ["6", 0], "clip": ["4", 1], "gligen_textbox_model": ["10", 0], "text": "a red circle",
        "width": 56, "height": 56, "x": 8, "y": 8}}
    graph["3"]["inputs"]["positive"] = ["11", 0]
    graph["9"]["inputs"]["filename_prefix"] = "gligen_boxes"
    return graph


def sega() -> dict[str, Any]:
    graph = base("a circle on a blue background")
    graph["20"] = {"class_type": "SemanticGuidance", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "concept": "red", "direction": "add", "scale": 5.0,
        "warmup_steps": 2, "threshold": 0.9, "momentum_scale": 0.1, "momentum_beta": 0.4, "edit_weight": 1.0}}
    graph["3"]["inputs"]["model"] = ["20", 0]
    graph["9"]["inputs"]["filename_prefix"] = "sega"
    return graph


def sag() -> dict[str, Any]:
    graph = base()
    graph["20"] = {"class_type": "SelfAttentionGuidance",
                   "inputs": {"model": ["4", 0], "scale": 0.5, "blur_sigma": 2.0}}
    graph["3"]["inputs"]["model"] = ["20", 0]
    graph["9"]["inputs"]["filename_prefix"] = "sag"
    return graph


def model_merge_save() -> dict[str, Any]:
    """The embedded model merged half-way with its own style-LoRA variant (UNet and text encoder), saved as a
    new checkpoint (output/checkpoints/merged_00001_.safetensors) and sampled from."""
    graph = base("a yellow star on a purple background, striped")
    graph["10"] = {"class_type": "LoraLoader", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora_name": ADAPTERS["lora"][1], "strength_model": 1.0,
        "strength_clip": 1.0}}
    graph["11"] = {"class_type": "ModelMergeSimple", "inputs": {"model1": ["4", 0], "model2": ["10", 0], "ratio": 0.5}}
    graph["12"] = {"class_type": "CLIPMergeSimple", "inputs": {"clip1": ["4", 1], "clip2": ["10", 1], "ratio": 0.5}}
    graph["13"] = {"class_type": "CheckpointSave", "inputs": {
        "model": ["11", 0], "clip": ["12", 0], "vae": ["4", 2], "filename_prefix": "checkpoints/merged"}}
    graph["3"]["inputs"]["model"] = ["11", 0]
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["12", 0]
    graph["9"]["inputs"]["filename_prefix"] = "model_merge_save"
    return graph


def separate_vae() -> dict[str, Any]:
    """The image decoded by a VAE loaded on its own (VAELoader): here the embedded model's VAE, which VAELoader lists
    under the checkpoint's name; any SD1/SDXL VAE file in models/vae takes its place."""
    graph = base("a white triangle on a green background")
    graph["10"] = {"class_type": "VAELoader", "inputs": {"vae_name": EMBEDDED_NAME}}
    graph["8"]["inputs"]["vae"] = ["10", 0]
    graph["9"]["inputs"]["filename_prefix"] = "separate_vae"
    return graph


def style_model() -> dict[str, Any]:
    """An image prompt: the shipped CLIP vision tower reads example.png (a blue square on yellow) and the shipped
    style model appends what it saw to an empty prompt."""
    graph = base("")
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
    graph["11"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": ADAPTERS["clip_vision"][1]}}
    graph["12"] = {"class_type": "CLIPVisionEncode",
                   "inputs": {"clip_vision": ["11", 0], "image": ["10", 0], "crop": "center"}}
    graph["13"] = {"class_type": "StyleModelLoader", "inputs": {"style_model_name": ADAPTERS["style_model"][1]}}
    graph["14"] = {"class_type": "StyleModelApply", "inputs": {
        "conditioning": ["6", 0], "style_model": ["13", 0], "clip_vision_output": ["12", 0], "strength": 1.0,
        "strength_type": "multiply"}}
    graph["3"]["inputs"]["positive"] = ["14", 0]
    graph["9"]["inputs"]["filename_prefix"] = "style_model"
    return graph


GRAPHS = {"txt2img": base, "img2img": img2img, "inpaint": inpaint, "hires-fix": hires_fix, "lora": lora,
          "controlnet": controlnet, "sega": sega, "sag": sag, "hires_fix_upscale_model": hires_fix_upscale_model,
          "model_merge_save": model_merge_save, "separate_vae": separate_vae, "style_model": style_model,
          "t2i_adapter": t2i_adapter, "gligen_boxes": gligen_boxes}
GRAPHS.update(graphs_training.GRAPHS)  # issue 19's training workflow
GRAPHS.update(graphs_xyz.GRAPHS)  # the X/Y/Z plot study (scripts/graphs_xyz.py)
GRAPHS.update(graphs_metrics.GRAPHS)  # evaluation metrics on a small batch
GRAPHS.update(graphs_inversion.GRAPHS)  # DDIM inversion, DiffEdit, Pix2Pix-Zero
GRAPHS.update(graphs_attend.GRAPHS)  # Attend-and-Excite, MultiDiffusion panorama
GRAPHS.update(graphs_personalize.GRAPHS)  # issue 19's personalization workflow
GRAPHS.update(graphs_time.GRAPHS)  # TIME model editing, classifier guidance
GRAPHS.update(graphs_ip2p.GRAPHS)  # InstructPix2Pix, depth-to-image
GRAPHS.update(graphs_photomaker.GRAPHS)  # PhotoMaker on the shapes
OUTLINE_SPEC = dict(shape="triangle", fg="green", bg="white", size="large", horizontal="left", vertical="top",
                    cx=0.33, cy=0.35, radius=0.3, rotation=10.0)
"""The shape whose outline example_outline.png shows (a large triangle up and to the left)."""
SILHOUETTE_SPEC = dict(shape="circle", fg="yellow", bg="purple", size="large", horizontal="right", vertical="bottom",
                       cx=0.64, cy=0.62, radius=0.28, rotation=0.0)
"""The shape whose white silhouette example_silhouette.png shows (a large circle down and to the right)."""


def laid_out(workflow: Workflow) -> Workflow:
    """Place nodes in columns by their depth in the graph, so the editor shows them readably."""
    depth: dict[str, int] = {}
    incoming: dict[str, list[str]] = {}
    for link in workflow.links:
        incoming.setdefault(link.to_node, []).append(link.from_node)
    pending = list(workflow.nodes)
    while pending:
        node_id = pending.pop(0)
        sources = incoming.get(node_id, [])
        if all(s in depth for s in sources):
            depth[node_id] = 1 + max((depth[s] for s in sources), default=-1)
        else:
            pending.append(node_id)
    rows: dict[int, int] = {}
    nodes = {}
    for node_id in sorted(workflow.nodes, key=int):
        column = depth[node_id]
        row = rows.get(column, 0)
        rows[column] = row + 1
        nodes[node_id] = workflow.nodes[node_id].model_copy(update={"pos": (40.0 + COLUMN * column, 60.0 + 220 * row)})
    return workflow.model_copy(update={"nodes": nodes})


def example_images() -> None:
    """A blue square on yellow; the same with the square transparent (LoadImage's MASK) for inpainting; and a
    triangle's outline for the ControlNet."""
    from PIL import Image

    from nodes.sd.shapes import ShapeSpec, render, spec_for

    spec = spec_for("square", "blue", "yellow", random.Random(3))
    image, mask, _ = render(spec)
    (WORKFLOWS / "input").mkdir(exist_ok=True)
    image.save(WORKFLOWS / "input" / "example.png")
    rgba = image.convert("RGBA")
    alpha = Image.eval(mask.convert("L"), lambda v: 255 - v)
    rgba.putalpha(alpha)
    rgba.save(WORKFLOWS / "input" / "example_inpaint.png")
    render(ShapeSpec(**OUTLINE_SPEC))[2].convert("RGB").save(WORKFLOWS / "input" / "example_outline.png")
    render(ShapeSpec(**SILHOUETTE_SPEC))[1].convert("RGB").save(WORKFLOWS / "input" / "example_silhouette.png")


def build() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Native and ComfyUI-UI JSON of every shipped workflow, by name."""
    registry = default_registry()
    out = {}
    for name, make in GRAPHS.items():
        workflow = laid_out(from_api(make()))
        out[name] = (dump_workflow(workflow), ui_from_native(workflow, registry))
    return out


def main() -> None:
    example_images()
    graphs_metrics.write_reference_images(WORKFLOWS / "input")
    (WORKFLOWS / "comfyui").mkdir(exist_ok=True)
    for name, (native, ui) in build().items():
        (WORKFLOWS / f"{name}.json").write_text(json.dumps(native, indent=2) + "\n")
        (WORKFLOWS / "comfyui" / f"{name}.json").write_text(json.dumps(ui, indent=2) + "\n")
        print(f"workflows/{name}.json, workflows/comfyui/{name}.json")


if __name__ == "__main__":
    main()
