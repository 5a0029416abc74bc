"""PhotoMaker (Li et al. 2023, arXiv:2312.04461): a tiny ID encoder file in the released layout against the
paper's equations written out here and (when TencentARC's repository has been fetched) against its own
PhotoMakerIDEncoder; PhotoMakerEncode's prompt handling on the embedded CLIP; ComfyUI's no-trigger behaviour and
the loader's errors; the nodes through the engine."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from nodegraph.models import ModelManager
from nodes.models.embedded import EMBEDDED_PATH
from nodes.sd import photomaker as pm
from nodes.sd import text
from nodes.sd.clip_vision import preprocess
from nodes.sd.loading import load_checkpoint
from tiny_models import engine_at

TENCENT_MIRROR = Path("/work/.mirror/TencentARC+PhotoMaker/repo")
HIDDEN, PROJ_1, PROJ_2 = 32, 24, 40
HEADS = 1
"""What a 32-wide tower gets without metadata (64-wide heads, at least one); files with metadata may say more."""
WIDTH = PROJ_1 + PROJ_2  # the fuse module's width = the text states' width (64: the embedded CLIP's)


def tiny_state(seed: int = 0, heads: int = HEADS, proj: tuple[int, int] = (PROJ_1, PROJ_2)) -> dict[str, torch.Tensor]:
    """A random ID encoder in the released key layout (bare names), norms and biases away from their defaults."""
    torch.manual_seed(seed)
    tower = CLIPVisionModelWithProjection(tiny_config(heads, proj[0]))
    width = sum(proj)
    state = {k: v for k, v in tower.state_dict().items() if not k.endswith("position_ids")}
    state["visual_projection_2.weight"] = torch.randn(proj[1], HIDDEN) * 0.2
    for mlp, inner in (("mlp1", 2 * width), ("mlp2", width)):
        state[f"fuse_module.{mlp}.layernorm.weight"] = 1 + 0.1 * torch.randn(inner)
        state[f"fuse_module.{mlp}.layernorm.bias"] = 0.1 * torch.randn(inner)
        state[f"fuse_module.{mlp}.fc1.weight"] = torch.randn(width, inner) / inner**0.5
        state[f"fuse_module.{mlp}.fc1.bias"] = 0.1 * torch.randn(width)
        state[f"fuse_module.{mlp}.fc2.weight"] = torch.randn(width, width) / width**0.5
        state[f"fuse_module.{mlp}.fc2.bias"] = 0.1 * torch.randn(width)
    state["fuse_module.layer_norm.weight"] = 1 + 0.1 * torch.randn(width)
    state["fuse_module.layer_norm.bias"] = 0.1 * torch.randn(width)
    for key in ("vision_model.post_layernorm.weight", "vision_model.pre_layrnorm.bias"):
        state[key] = state[key] + 0.1 * torch.randn_like(state[key])
    return state


def write_bin(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """photomaker-v1.bin's layout: a pickle of {"id_encoder": ..., "lora_weights": ...}."""
    torch.save({"id_encoder": state, "lora_weights": {"unet.down.lora_A.weight": torch.zeros(4, 4)}}, path)
    return path


def tiny_config(heads: int, projection: int = PROJ_1) -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=heads,
                            image_size=32, patch_size=8, projection_dim=projection, hidden_act="quick_gelu")


def hand_forward(state: dict[str, torch.Tensor], pixels: torch.Tensor, class_states: torch.Tensor,
                 heads: int = HEADS) -> torch.Tensor:
    """The paper's ID encoder written out: pooled class token (transformers' tower), both projections, fuse."""
    tower = CLIPVisionModelWithProjection(tiny_config(heads, state["visual_projection.weight"].shape[0]))
    tower.load_state_dict({k: v for k, v in state.items() if k.startswith(("vision_model.", "visual_projection."))},
                          strict=False)
    pooled = tower.vision_model(pixel_values=pixels).pooler_output
    ids = torch.cat([pooled @ state["visual_projection.weight"].t(),
                     pooled @ state["visual_projection_2.weight"].t()], -1)
    s = lambda name: state[f"fuse_module.{name}"]  # noqa: E731

    def mlp(x, name):
        h = F.layer_norm(x, x.shape[-1:], s(f"{name}.layernorm.weight"), s(f"{name}.layernorm.bias"))
        h = F.linear(F.gelu(F.linear(h, s(f"{name}.fc1.weight"), s(f"{name}.fc1.bias"))), s(f"{name}.fc2.weight"),
                     s(f"{name}.fc2.bias"))
        return h

    h = mlp(torch.cat([class_states, ids], -1), "mlp1") + class_states  # Eq. 1: MLP1 on [t; e] plus t
    h = mlp(h, "mlp2") + h  # MLP2 is residual
    return F.layer_norm(h, h.shape[-1:], s("layer_norm.weight"), s("layer_norm.bias"))


@pytest.fixture(scope="module")
def loaded():
    return load_checkpoint(EMBEDDED_PATH)


def pixels_of(count: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, 40, 48, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", ["bin", "safetensors_prefixed", "safetensors_bare"])
def test_file_layouts_load_and_equal_the_papers_equations(tmp_path, layout):
    heads = 1 if layout == "bin" else 2  # a pickle has no metadata: heads from the width
    state = tiny_state(heads=heads)
    if layout == "bin":
        path = write_bin(tmp_path / "photomaker-v1.bin", state)
    else:
        prefix = "id_encoder." if layout == "safetensors_prefixed" else ""
        path = tmp_path / "pm.safetensors"
        save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(path),
                  metadata={"nodegraph_config": '{"clip_vision": {"num_attention_heads": 2}}'})
    model = pm.load_photomaker(path, manager=ModelManager("cpu")).model
    assert (model.image_size, model.width, len(model.vision_model.encoder.layers)) == (32, WIDTH, 2)
    images = pixels_of(3)
    pixels = preprocess(images, 32)
    class_states = torch.randn(3, WIDTH)
    states = torch.randn(1, 77, WIDTH)
    states[0, [5, 6, 7]] = class_states
    with torch.no_grad():
        out = model.fuse(states, [5, 6, 7], model.id_embeds(pixels))
        expected = hand_forward(state, pixels, class_states, heads)
    torch.testing.assert_close(out[0, 5:8], expected, atol=2e-5, rtol=1e-5)
    keep = [i for i in range(77) if i not in (5, 6, 7)]
    assert torch.equal(out[0, keep], states[0, keep])


def tencent_model_module(tmp_path):
    """TencentARC's photomaker/model.py from the fetched mirror, imported from a temp dir (never shipped)."""
    if not (TENCENT_MIRROR / "HEAD").exists() and not (TENCENT_MIRROR / ".git").exists():
        pytest.skip("TencentARC/PhotoMaker is not fetched on this machine")
    source = subprocess.run(["git", "-C", str(TENCENT_MIRROR), "show", "HEAD:photomaker/model.py"],
                            capture_output=True, text=True)
    if source.returncode != 0:
        pytest.skip("TencentARC/PhotoMaker's photomaker/model.py is not readable")
    file = tmp_path / "tencent_photomaker_model.py"
    file.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("tencent_photomaker_model", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_matches_tencentarcs_photomaker_id_encoder(tmp_path):
    """Their class (ViT-L sizes hard-coded) built at our tiny sizes: the config dict patched, projection_2 and the
    fuse module replaced by their own classes at these widths; their forward with a stacked class-token mask."""
    module = tencent_model_module(tmp_path)
    module.VISION_CONFIG_DICT = dict(hidden_size=HIDDEN, intermediate_size=64, num_attention_heads=HEADS,
                                     num_hidden_layers=2, patch_size=8, projection_dim=PROJ_1, image_size=32)
    reference = module.PhotoMakerIDEncoder()
    reference.visual_projection_2 = torch.nn.Linear(HIDDEN, PROJ_2, bias=False)
    reference.fuse_module = module.FuseModule(WIDTH)
    state = tiny_state(3)
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    reference.eval()
    path = write_bin(tmp_path / "photomaker-v1.bin", state)
    model = pm.load_photomaker(path, manager=ModelManager("cpu")).model
    pixels = preprocess(pixels_of(2, seed=4), 32)
    prompt = torch.randn(1, 77, WIDTH)
    mask = torch.zeros(1, 77, dtype=torch.bool)
    mask[0, [9, 10]] = True
    with torch.no_grad():
        expected = reference(pixels[None], prompt.clone(), mask)
        out = model.fuse(prompt, [9, 10], model.id_embeds(pixels))
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


def test_encode_writes_fused_embeddings_only_at_the_class_word_copies(tmp_path, loaded):
    state = tiny_state(5)
    model = pm.load_photomaker(write_bin(tmp_path / "pm.bin", state), manager=ModelManager("cpu")).model
    images = pixels_of(3, seed=7)
    prompt = "a photograph of shape photomaker on a red background"
    out = pm.photomaker_encode(model, loaded.clip, images, prompt)
    # the trigger word gone, "shape" (one token) repeated once per image: bos a photograph of shape shape shape ...
    plain = text.encode(loaded.clip, "a photograph of shape shape shape on a red background").embeds
    positions = [4, 5, 6]
    assert loaded.clip.tokenizers[0].word_ids("shape") == [6448]
    keep = [i for i in range(77) if i not in positions]
    assert torch.equal(out.embeds[0, keep], plain[0, keep])
    expected = hand_forward(state, preprocess(images, 32), plain[0, positions])
    torch.testing.assert_close(out.embeds[0, positions], expected, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(out.embeds[0, positions], plain[0, positions], atol=1e-2)
    # one image, one-token words: the position ComfyUI writes (the class word's 1-based word index)
    _, (single,) = pm.class_token_states(loaded.clip, prompt, 1)
    assert single == prompt.split(" ").index(pm.TRIGGER_WORD) + 1 - 1


def test_prompt_without_trigger_is_the_plain_text_encoding_as_in_comfyui(tmp_path, loaded):
    model = pm.load_photomaker(write_bin(tmp_path / "pm.bin", tiny_state()), manager=ModelManager("cpu")).model
    prompt = "a red triangle on a blue background"
    out = pm.photomaker_encode(model, loaded.clip, pixels_of(1), prompt)
    assert torch.equal(out.embeds, text.encode(loaded.clip, prompt).embeds)


def test_errors_name_what_is_wrong(tmp_path, loaded):
    model = pm.load_photomaker(write_bin(tmp_path / "pm.bin", tiny_state()), manager=ModelManager("cpu")).model
    with pytest.raises(ValueError, match="must follow a class word"):
        pm.photomaker_encode(model, loaded.clip, pixels_of(1), "photomaker on a red background")
    save_file({"vision_model.embeddings.class_embedding": torch.zeros(8)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a PhotoMaker file.*visual_projection_2"):
        pm.load_photomaker(tmp_path / "other.safetensors", manager=ModelManager("cpu"))
    narrow = {k: v for k, v in tiny_state().items()}
    narrow["visual_projection_2.weight"] = narrow["visual_projection_2.weight"][:8]
    with pytest.raises(ValueError, match="ID embeddings but the fuse module"):
        pm.load_photomaker(write_bin(tmp_path / "narrow.bin", narrow), manager=ModelManager("cpu"))
    wide = pm.build_id_encoder(pm.id_encoder_tensors(_resized(tiny_state(), 2), "x"), "x", {"num_attention_heads": 2})
    with pytest.raises(ValueError, match="fuses 128-wide text states but this CLIP gives 64-wide"):
        pm.photomaker_encode(wide, loaded.clip, pixels_of(1), "a shape photomaker")


def _resized(state: dict[str, torch.Tensor], factor: int) -> dict[str, torch.Tensor]:
    """The same file with a fuse module `factor` times wider (projection 2 widened to match)."""
    out = {k: v for k, v in state.items() if not k.startswith("fuse_module.")}
    width = WIDTH * factor
    out["visual_projection_2.weight"] = torch.randn(width - PROJ_1, HIDDEN)
    fuse = pm.FuseModule(width)
    out.update({f"fuse_module.{k}": v for k, v in fuse.state_dict().items()})
    return out


def test_nodes_through_the_engine(tmp_path, loaded):
    folder = tmp_path / "models" / "photomaker"
    folder.mkdir(parents=True)
    state = tiny_state(2)
    write_bin(folder / "photomaker-v1.bin", state)
    engine = engine_at(tmp_path)
    assert "photomaker-v1.bin" in engine.env.models.list("photomaker")
    graph = {"1": {"class_type": "PhotoMakerLoader", "inputs": {"photomaker_model_name": "photomaker-v1.bin"}},
             "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_PATH.name}},
             "3": {"class_type": "EmptyImage",
                   "inputs": {"width": 48, "height": 40, "batch_size": 1, "color": 0x00FF00}},
             "4": {"class_type": "PhotoMakerEncode",
                   "inputs": {"photomaker": ["1", 0], "image": ["3", 0], "clip": ["2", 1],
                              "text": "a photo of shape photomaker"}}}
    from nodegraph.formats.api import from_api

    (cond,) = engine.run(from_api(graph, engine.registry), outputs=["4"]).values["4"][0]
    green = torch.zeros(1, 40, 48, 3)
    green[..., 1] = 1.0
    plain = text.encode(loaded.clip, "a photo of shape").embeds
    expected = hand_forward(state, preprocess(green, 32), plain[0, [4]])
    torch.testing.assert_close(cond.embeds[0, [4]], expected, atol=2e-5, rtol=1e-5)
    assert torch.equal(cond.embeds[0, :4], plain[0, :4])


def test_sdxl_clip_fuses_the_concatenated_states_of_both_encoders(tmp_path):
    """PhotoMaker v1's own setting: CLIP-L and bigG states side by side (here 32 + 64 wide, as 768 + 1280), the
    projections as wide as each, two reference images stacked on the class word; the pooled output is the
    trigger-free prompt's."""
    from tiny_models import make_sdxl_checkpoint

    clip = load_checkpoint(make_sdxl_checkpoint(tmp_path)).clip
    state = tiny_state(6, proj=(32, 64))
    model = pm.load_photomaker(write_bin(tmp_path / "pm.bin", state), manager=ModelManager("cpu")).model
    images = pixels_of(2, seed=8)
    out = pm.photomaker_encode(model, clip, images, "a photo of a man photomaker smiling")
    plain = text.encode(clip, "a photo of a man man smiling")
    assert out.embeds.shape == (1, 77, 96)
    positions = [5, 6]  # bos a photo of a man man
    keep = [i for i in range(77) if i not in positions]
    assert torch.equal(out.embeds[0, keep], plain.embeds[0, keep])
    assert torch.equal(out.pooled, plain.pooled)
    expected = hand_forward(state, preprocess(images, 32), plain.embeds[0, positions])
    torch.testing.assert_close(out.embeds[0, positions], expected, atol=2e-5, rtol=1e-5)
