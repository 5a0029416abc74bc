"""UNETLoader, CLIPLoader, DualCLIPLoader and unCLIPCheckpointLoader on parts split out of tiny SD1/SD2/SDXL
checkpoints: each part loaded alone computes exactly what the checkpoint's part computes, in either layout."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from nodegraph import NodeContext
from nodegraph.environment import Environment, ModelPaths
from nodes.loaders import CheckpointLoaderSimple
from nodes.model_loaders.parts import ClipVisionWeights, CLIPLoader, DualCLIPLoader, UNETLoader, unCLIPCheckpointLoader
from nodes.sd.denoisers import unet_denoiser
from nodes.sd.loading.configs import METADATA_KEY
from nodes.sd.loading.files import read_weights
from nodes.sd.text import encode
from tiny_models import sd1_modules, sd2_modules, sdxl_modules, write_checkpoint

UNET = "model.diffusion_model."
TEXT_PREFIXES = {"sd1": ["cond_stage_model.transformer."], "sd2": ["cond_stage_model.model."],
                 "sdxl": ["conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."]}
PROMPT = "a red (circle:1.2) on a blue background"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Per family: the tiny checkpoint, its modules, its tensors and its nodegraph_config."""
    root = tmp_path_factory.mktemp("parts")
    out = {}
    for family, build in (("sd1", sd1_modules), ("sd2", sd2_modules), ("sdxl", sdxl_modules)):
        modules = build(0)
        path = write_checkpoint(modules, root / "models" / "checkpoints" / f"{family}.safetensors")
        tensors, metadata = read_weights(path)
        out[family] = (path.name, modules, tensors, json.loads(metadata[METADATA_KEY]))
    return root, out


def _env(root) -> Environment:
    return Environment(models=ModelPaths(roots=[root / "models"]))


def _ctx(root, node: str = "test") -> NodeContext:
    return NodeContext("1", node, _env(root))


def _save(root, folder: str, name: str, tensors: dict, config: dict | None = None) -> str:
    path = root / "models" / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {METADATA_KEY: json.dumps(config)} if config is not None else None
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return name


def _denoise(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    width = model.unet.config.cross_attention_dim
    kwargs = {"encoder_hidden_states": torch.randn(1, 7, width, generator=g)}
    if model.family == "sdxl":
        pooled = model.unet.config.projection_class_embeddings_input_dim - 6 * model.unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return unet_denoiser(model)(x, torch.tensor([2.5]), **kwargs)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_unet_loader_matches_the_checkpoints_model(models, family, layout):
    root, found = models
    ckpt, modules, tensors, config = found[family]
    if layout == "ldm":
        part = {k: v for k, v in tensors.items() if k.startswith(UNET)}
    else:
        part = dict(modules.unet.state_dict())
    folder = "unet" if family == "sd1" else "diffusion_models"  # ComfyUI's legacy folder name lists too
    meta = {k: config[k] for k in ("family", "unet", "prediction")}
    if (family, layout) == ("sd1", "diffusers"):
        meta = None  # SD1's structure and head rule need no metadata
    name = _save(root, folder, f"{family}_{layout}_unet.safetensors", part, meta)
    assert name in UNETLoader.schema.input_map["unet_name"].options(_env(root))
    (model,) = UNETLoader.execute(_ctx(root), name, "default")
    (reference, _, _) = CheckpointLoaderSimple.execute(_ctx(root), ckpt)
    assert (model.family, model.prediction) == (reference.family, reference.prediction) == (family, modules.prediction)
    torch.testing.assert_close(model.alphas_cumprod, reference.alphas_cumprod)
    torch.testing.assert_close(_denoise(model), _denoise(reference), atol=0, rtol=0)


def test_unet_fp8_storage_upcasts_per_layer(models):
    root, found = models
    _, modules, tensors, config = found["sd1"]
    part = {k: v for k, v in tensors.items() if k.startswith(UNET)}
    name = _save(root, "diffusion_models", "sd1_fp8.safetensors", part)
    (default,) = UNETLoader.execute(_ctx(root), name, "default")
    for choice, dtype in (("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)):
        (model,) = UNETLoader.execute(_ctx(root), name, choice)
        unet = model.unet
        assert unet.conv_in.weight.dtype == dtype and unet.down_blocks[0].attentions[0].proj_in.weight.dtype == dtype
        assert unet.conv_norm_out.weight.dtype == torch.float32 and unet.conv_in.bias.dtype == torch.float32
        # the formula: every Linear/Conv weight rounded to fp8 and back, the arithmetic in fp32
        rounded = sd1_modules(0).unet
        with torch.no_grad():
            for layer in rounded.modules():
                if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                    layer.weight.copy_(layer.weight.to(dtype).float())
        expected = _denoise(replace(default, unet_ref=rounded))
        torch.testing.assert_close(_denoise(model), expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(_denoise(model), _denoise(default), atol=1e-6)
        def stored(unet):
            return sum(p.numel() * p.element_size() for p in unet.parameters())

        assert stored(model.unet) < 0.5 * stored(default.unet)
        assert model.unet_ref.size_hint == stored(model.unet)  # the manager makes room for what it will hold


@pytest.mark.parametrize(("family", "layout"), [("sd1", "original"), ("sd1", "transformers"), ("sd1", "text_model"),
                                               ("sd2", "original"), ("sd2", "transformers")])
def test_clip_loader_matches_the_checkpoints_clip(models, family, layout):
    root, found = models
    ckpt, modules, tensors, config = found[family]
    prefix = TEXT_PREFIXES[family][0]
    if layout == "original":
        part = {k: v for k, v in tensors.items() if k.startswith(prefix)}  # prefix kept: a checkpoint's slice
    else:
        state = modules.encoders[0].state_dict()
        part = {(f"text_model.{k}" if layout == "text_model" else k): v for k, v in state.items()}
        # a whole CLIP model's file: its image tower and logit scale are left out
        part.update({"vision_model.embeddings.patch_embedding.weight": torch.zeros(4, 3, 2, 2),
                     "visual_projection.weight": torch.zeros(4, 4), "logit_scale": torch.tensor(4.6)})
    folder = "clip" if layout == "transformers" else "text_encoders"
    meta = {"family": family, "text_encoders": config["text_encoders"]}  # a tiny H is as narrow as a tiny L
    name = _save(root, folder, f"{family}_{layout}_te.safetensors", part, meta)
    (clip,) = CLIPLoader.execute(_ctx(root), name, "stable_diffusion")
    (_, reference, _) = CheckpointLoaderSimple.execute(_ctx(root), ckpt)
    assert (clip.family, clip.layer_idx) == (reference.family, reference.layer_idx)
    assert [t.pad_token_id for t in clip.tokenizers] == [t.pad_token_id for t in reference.tokenizers]
    torch.testing.assert_close(encode(clip, PROMPT).embeds, encode(reference, PROMPT).embeds, atol=0, rtol=0)


def test_dual_clip_loader_gives_a_checkpoints_sdxl_clip(models):
    root, found = models
    ckpt, modules, tensors, config = found["sdxl"]
    names = []
    for index, prefix in enumerate(TEXT_PREFIXES["sdxl"]):
        part = {k: v for k, v in tensors.items() if k.startswith(prefix)}
        names.append(_save(root, "text_encoders", f"sdxl_te{index}.safetensors", part,
                           {"text_encoders": [config["text_encoders"][index]]}))
    (clip,) = DualCLIPLoader.execute(_ctx(root), names[1], names[0], "sdxl")  # bigG first: order is found
    (_, reference, _) = CheckpointLoaderSimple.execute(_ctx(root), ckpt)
    assert (clip.family, clip.layer_idx, len(clip.encoder_refs)) == (reference.family, reference.layer_idx, 2)
    assert [type(e) for e in clip.encoders] == [type(e) for e in reference.encoders]
    assert [t.pad_token_id for t in clip.tokenizers] == [t.pad_token_id for t in reference.tokenizers]
    assert replace(clip, encoder_refs=(), source="") == replace(reference, encoder_refs=(), source="")
    ours, theirs = encode(clip, PROMPT), encode(reference, PROMPT)
    torch.testing.assert_close(ours.embeds, theirs.embeds, atol=0, rtol=0)
    torch.testing.assert_close(ours.pooled, theirs.pooled, atol=0, rtol=0)
    (on_cpu,) = DualCLIPLoader.execute(_ctx(root), names[0], names[1], "sdxl", "cpu")
    encoder = on_cpu.encoders[1]
    assert isinstance(encoder, type(reference.encoders[1])) and encoder.to("meta") is encoder  # moves are ignored
    assert next(encoder.parameters()).device.type == "cpu"
    torch.testing.assert_close(encode(on_cpu, PROMPT).pooled, theirs.pooled, atol=0, rtol=0)


def test_other_families_and_mismatched_sets_are_refused_by_name(models):
    root, found = models
    _, _, tensors, config = found["sd1"]
    name = _save(root, "text_encoders", "l.safetensors",
                 {k: v for k, v in tensors.items() if k.startswith(TEXT_PREFIXES["sd1"][0])},
                 {"text_encoders": config["text_encoders"]})
    with pytest.raises(ValueError, match="type 'sd3'"):
        CLIPLoader.execute(_ctx(root), name, "sd3")
    with pytest.raises(ValueError, match="type 'flux'"):
        DualCLIPLoader.execute(_ctx(root), name, name, "flux")
    with pytest.raises(ValueError, match="weight_dtype"):
        UNETLoader.execute(_ctx(root), "whatever.safetensors", "fp4")


def test_unclip_loader_outputs_clip_vision_only_when_the_file_has_a_tower(models):
    root, found = models
    ckpt, _, tensors, config = found["sd1"]
    model, clip, vae, vision = unCLIPCheckpointLoader.execute(_ctx(root), ckpt)
    assert vision is None and model.family == "sd1" and clip.family == "sd1"
    tower = {"embedder.model.visual.conv1.weight": torch.zeros(8, 3, 4, 4),
             "embedder.model.visual.ln_post.weight": torch.ones(8)}
    name = _save(root, "checkpoints", "with_vision.safetensors", {**tensors, **tower}, config)
    *_, vision = unCLIPCheckpointLoader.execute(_ctx(root), name)
    assert vision == ClipVisionWeights(str(root / "models" / "checkpoints" / name), "embedder.model.visual.", 2)
    label = {**tensors, f"{UNET}label_emb.0.0.weight": torch.zeros(4, 4)}
    name = _save(root, "checkpoints", "unclip_unet.safetensors", label, config)
    with pytest.raises(ValueError, match="unCLIP UNet"):
        unCLIPCheckpointLoader.execute(_ctx(root), name)


def test_the_embedded_model_split_into_parts_draws_the_same_picture(tmp_path):
    """UNETLoader + CLIPLoader + VAELoader on the embedded model's parts, saved as separate files, sample and
    decode exactly the image its checkpoint gives."""
    from nodes.model_loaders.vae import VAELoader
    from nodes.models.embedded import EMBEDDED_NAME, EMBEDDED_PATH, add_embedded_checkpoint
    from nodes.sd.ksampler import sample
    from nodes.sd.types import Latent
    from nodes.sd.vae import decode

    tensors, metadata = read_weights(EMBEDDED_PATH)
    config = json.loads(metadata[METADATA_KEY])
    unet = _save(tmp_path, "diffusion_models", "shapes_unet.safetensors",
                 {k: v for k, v in tensors.items() if k.startswith(UNET)}, config)
    text = _save(tmp_path, "clip", "shapes_clip.safetensors",
                 {k: v for k, v in tensors.items() if k.startswith(TEXT_PREFIXES["sd1"][0])}, config)
    env = _env(tmp_path)
    add_embedded_checkpoint(env)
    ctx = NodeContext("1", "test", env)
    (model,) = UNETLoader.execute(ctx, unet, "default")
    (clip,) = CLIPLoader.execute(ctx, text, "stable_diffusion")
    (vae,) = VAELoader.execute(ctx, EMBEDDED_NAME)
    reference = CheckpointLoaderSimple.execute(ctx, EMBEDDED_NAME)

    def picture(model, clip, vae):
        positive, negative = (encode(clip, "a red circle on a blue background"),), (encode(clip, ""),)
        latent = Latent(torch.zeros(1, 4, 16, 16))
        out = sample(model, seed=3, steps=8, cfg=5.0, sampler_name="euler", scheduler="normal", positive=positive,
                     negative=negative, latent=latent)
        return decode(vae, out.samples)

    image = picture(model, clip, vae)
    torch.testing.assert_close(image, picture(*reference), atol=0, rtol=0)
    red, blue = image[0, 56:72, 56:72].mean((0, 1)), image[0, :6, :6].mean((0, 1))  # centre vs a corner
    assert red[0] > red[2] and blue[2] > blue[0]


def test_a_comfyui_prompt_with_the_part_loaders_runs_in_the_engine(models, tmp_path):
    """Validation takes the part loaders' names from the aliased folders, and a None CLIP_VISION is a result."""
    from nodegraph.formats.api import from_api
    from nodes.models.embedded import EMBEDDED_NAME
    from tiny_models import engine_at

    _, found = models
    _, _, tensors, config = found["sd1"]
    unet = _save(tmp_path, "unet", "u.safetensors", {k: v for k, v in tensors.items() if k.startswith(UNET)}, config)
    text = _save(tmp_path, "clip", "c.safetensors",
                 {k: v for k, v in tensors.items() if k.startswith(TEXT_PREFIXES["sd1"][0])}, config)
    engine = engine_at(tmp_path)
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "fp8_e5m2"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": text, "type": "stable_diffusion"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["2", 0]}},
        "4": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "5": {"class_type": "VAELoader", "inputs": {"vae_name": EMBEDDED_NAME}},
    }
    values = engine.run(from_api(prompt), outputs=["1", "3", "4", "5"]).values
    assert values["1"][0].unet.conv_in.weight.dtype == torch.float8_e5m2
    assert values["3"][0][0].embeds.shape[-1] == 32 and values["4"][3] is None


def test_legacy_folder_names_are_aliases(tmp_path):
    """ComfyUI's folder_paths: `unet` lists and resolves as `diffusion_models`, `clip` as `text_encoders`, files
    of both directories together (the current name's first)."""
    paths = ModelPaths(roots=[tmp_path])
    for folder, name in (("diffusion_models", "a.safetensors"), ("unet", "b.safetensors"),
                         ("text_encoders", "c.safetensors"), ("clip", "d.safetensors")):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_bytes(b"x")
    paths.add_builtin("clip", "shipped.safetensors", tmp_path / "clip" / "d.safetensors")
    assert paths.list("unet") == paths.list("diffusion_models") == ["a.safetensors", "b.safetensors"]
    assert paths.list("clip") == paths.list("text_encoders") == ["shipped.safetensors", "c.safetensors", "d.safetensors"]
    assert paths.resolve("diffusion_models", "b.safetensors") == paths.resolve("unet", "b.safetensors")
    assert paths.resolve("clip", "c.safetensors") == tmp_path / "text_encoders" / "c.safetensors"
