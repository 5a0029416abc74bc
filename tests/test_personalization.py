"""Personalization on the embedded model: the new concept, its check, and the three training methods.

- The heart is drawn by the generator but never by `spec_from_seed`; the template check names all six shapes
  right on renders and on the embedded VAE's reconstructions (what generated images look like).
- Training states equal what prompt encoding gives at inference (`embedding:name` after saving).
- Each method trains a few steps and lowers its loss on a fixed noise draw; its saved file loads back through
  our loaders and changes exactly what the method trains (vectors; the whole UNet; only cross-attention K/V).
- The nodes train, save where the loaders look, and resume from their state instead of training again.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nodegraph.formats.api import from_api
from nodes.models.embedded import EMBEDDED_PATH
from nodes.sd import personalization as P
from nodes.sd.finetune import train
from nodes.sd.finetune.loop import read_state
from nodes.sd.lora import match_lora, read_lora, with_updated_weights
from nodes.sd.loading import load_checkpoint
from nodes.sd.shapes import NEW_SHAPES, SHAPES, concept_caption, concept_spec, render, render_concept, spec_from_seed
from nodes.sd.text import encode, load_embedding
from nodes.sd.vae import decode as vae_decode, encode as vae_encode
from tiny_models import engine_at
from training.concept_check import match_mask, match_shape

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
sys.path.insert(0, str(WORKFLOWS.parent / "scripts"))
import graphs_personalize  # noqa: E402

pytestmark = pytest.mark.skipif(not EMBEDDED_PATH.is_file(), reason="the embedded model is not built yet")


def _pixels(images) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0) for image in images])


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    return load_checkpoint(EMBEDDED_PATH)


@pytest.fixture(scope="module")
def concept(loaded):
    specs = [concept_spec(i) for i in range(5)]
    latents = vae_encode(loaded.vae, _pixels([render_concept(spec)[0] for spec in specs]))
    class_specs = [spec_from_seed(1000 + i) for i in range(4)]
    class_latents = vae_encode(loaded.vae, _pixels([render(spec)[0] for spec in class_specs]))
    from nodes.sd.shapes import caption

    return P.ConceptData(latents, tuple(concept_caption(s) for s in specs), class_latents,
                         tuple(caption(s) for s in class_specs))  # fmt: skip


def test_the_heart_is_new_and_the_check_names_every_shape_on_renders():
    assert set(NEW_SHAPES).isdisjoint(SHAPES)
    assert all(spec_from_seed(seed).shape in SHAPES for seed in range(200))
    for seed in range(15):  # three of each old shape on average
        spec = spec_from_seed(seed)
        assert match_shape(render(spec)[0]).shape == spec.shape, spec
    for index in range(6):
        match = match_shape(render_concept(concept_spec(index))[0])
        assert match.shape == "heart" and match.ious["heart"] > 0.9, match
    assert match_mask(np.zeros((128, 128), dtype=bool)).shape == "none"
    blob = np.zeros((128, 128), dtype=bool)
    blob[20:30, 20:110] = blob[90:100, 20:110] = True  # two bars: no template fits
    assert match_mask(blob).shape == "none"


def test_the_check_reads_hearts_through_the_embedded_vae(loaded):
    """Generated images are VAE decodes: the check must hold on reconstructions, not only on clean renders."""
    hearts = [render_concept(concept_spec(100 + i))[0] for i in range(6)]
    others = [render(spec_from_seed(500 + i))[0] for i in range(6)]
    decoded = vae_decode(loaded.vae, vae_encode(loaded.vae, _pixels(hearts + others)))
    shapes = [match_shape(image.numpy()).shape for image in decoded]
    assert shapes[:6].count("heart") >= 5
    assert sum(s == spec_from_seed(500 + i).shape for i, s in enumerate(shapes[6:])) >= 5


def test_training_states_are_what_the_saved_embedding_encodes_to(loaded, tmp_path):
    vectors = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    P.save_embedding(tmp_path / "mine.safetensors", vectors)
    assert torch.equal(load_embedding("mine", [tmp_path], key="clip_l", width=64), vectors)
    clip = loaded.clip.__class__(**{**loaded.clip.__dict__, "embedding_dirs": (str(tmp_path),)})
    trained = P.encode_captions(loaded.clip, loaded.clip.encoders[0], ["a red heart on a blue background"], "heart", vectors)
    inferred = encode(clip, "a red embedding:mine on a blue background").embeds
    assert torch.allclose(trained, inferred, atol=1e-6)
    plain = P.encode_captions(loaded.clip, loaded.clip.encoders[0], ["a red circle on a blue background"])
    assert torch.allclose(plain, encode(loaded.clip, "a red circle on a blue background").embeds, atol=1e-6)


def _fixed_loss(objective: P.Objective, params: dict[str, torch.Tensor]) -> float:
    """The method's loss with given parameter values on one fixed draw of noise and timesteps."""
    saved = {name: value.detach().clone() for name, value in objective.params.items()}
    with torch.no_grad():
        for name, value in objective.params.items():
            value.copy_(params[name])
        losses = [float(objective.step_fn(0, torch.Generator().manual_seed(seed))) for seed in (11, 12)]
        for name, value in objective.params.items():
            value.copy_(saved[name])
    return sum(losses) / len(losses)


def _train(objective: P.Objective, steps: int, lr: float) -> dict[str, torch.Tensor]:
    before = {name: value.detach().clone() for name, value in objective.params.items()}
    result = train(objective.step_fn, objective.params, steps=steps, seed=3, lr=lr)
    assert _fixed_loss(objective, result.params) < _fixed_loss(objective, before)
    return result.params


def test_textual_inversion_trains_only_its_vectors_and_the_embedding_changes_the_prompt(loaded, concept, tmp_path):
    unet_before = {k: v.clone() for k, v in loaded.model.unet.state_dict().items()}
    objective = P.textual_inversion(loaded.model, loaded.clip, concept, "heart", "circle", 2)
    assert set(objective.params) == {"vectors"} and objective.data.class_latents is None
    trained = _train(objective, 6, 0.05)
    assert not torch.equal(trained["vectors"], P.word_vectors(loaded.clip, "circle", 2))
    assert all(torch.equal(v, unet_before[k]) for k, v in loaded.model.unet.state_dict().items())
    P.save_embedding(tmp_path / "heart.safetensors", trained["vectors"])
    clip = loaded.clip.__class__(**{**loaded.clip.__dict__, "embedding_dirs": (str(tmp_path),)})
    with_heart = encode(clip, "a red embedding:heart on a blue background").embeds
    assert not torch.allclose(with_heart, encode(loaded.clip, "a red circle on a blue background").embeds, atol=1e-3)


def test_dreambooth_trains_the_unet_with_prior_preservation_and_saves_a_checkpoint(loaded, concept, tmp_path):
    objective = P.dreambooth(loaded.model, loaded.clip, concept, prior_weight=1.0)
    assert len(objective.params) == len(list(loaded.model.unet.parameters()))
    losses = []
    with torch.no_grad():  # loss(w) = (concept + w * class) / 2 on one draw: linear in w, class term > 0
        for weight in (1.0, 2.0, 3.0):
            objective.prior_weight = weight
            losses.append(float(objective.step_fn(0, torch.Generator().manual_seed(5))))
    objective.prior_weight = 1.0
    assert losses[1] - losses[0] > 0 and losses[2] - losses[1] == pytest.approx(losses[1] - losses[0], rel=1e-4)
    trained = _train(objective, 3, 1e-4)
    tuned = P.tuned_model(loaded.model, {k.removeprefix("unet."): v for k, v in trained.items()})
    assert tuned.unet is not loaded.model.unet
    from nodes.sd.saving import checkpoint_tensors, write_safetensors

    tensors, config = checkpoint_tensors(tuned, loaded.clip, loaded.vae)
    write_safetensors(tmp_path / "db.safetensors", tensors, {}, config)
    reloaded = load_checkpoint(tmp_path / "db.safetensors")
    for name, value in reloaded.model.unet.named_parameters():
        assert torch.allclose(value.float(), trained[f"unet.{name}"].to(value.dtype).float(), atol=1e-6), name
    changed = sum(not torch.equal(v, loaded.model.unet.get_parameter(n)) for n, v in reloaded.model.unet.named_parameters())
    assert changed > len(trained) // 2


def test_custom_diffusion_changes_only_cross_attention_kv_and_its_patch_loads_as_a_lora(loaded, concept, tmp_path):
    objective = P.custom_diffusion(loaded.model, loaded.clip, concept, "heart", "circle", prior_weight=1.0)
    unet_names = [k.removeprefix("unet.") for k in objective.params if k != "vectors"]
    assert unet_names and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in unet_names)
    trained = _train(objective, 4, 2e-3)
    weights = {k.removeprefix("unet."): v for k, v in trained.items() if k.startswith("unet.")}
    patch = P.save_weight_patch(tmp_path / "cd.safetensors", loaded.model.unet, weights, "custom_diffusion")
    matched = match_lora(read_lora(patch), loaded.model.unet, ())
    assert not matched.not_loaded and len(matched.unet.by_param) == len(weights)
    patched = with_updated_weights(loaded.model.unet, matched.unet)
    for name, value in patched.named_parameters():
        expected = weights.get(name, loaded.model.unet.get_parameter(name))
        assert torch.allclose(value, expected.to(value.dtype), atol=1e-5), name


def test_lora_with_prior_preservation_starts_at_the_base_and_saves_what_lora_loader_applies(loaded, concept, tmp_path):
    """DreamBooth-LoRA: rank-4 layers (up = 0, so step 0 is the base model) trained with the class term; the kohya
    file it saves puts exactly the trained W + up @ down into the UNet through our LoRA loader."""
    from nodes.sd.finetune.lora_layers import to_kohya

    objective = P.lora(loaded.model, loaded.clip, concept, rank=4, prior_weight=1.0)
    assert objective.params and all(k.startswith("lora.") for k in objective.params)
    start = objective.unet_overrides()
    assert all(torch.equal(v, loaded.model.unet.get_parameter(n)) for n, v in start.items())
    with torch.no_grad():  # the prior term is in the loss: a different class weight changes it
        objective.prior_weight = 2.0
        doubled = float(objective.step_fn(0, torch.Generator().manual_seed(5)))
        objective.prior_weight = 1.0
        assert doubled > float(objective.step_fn(0, torch.Generator().manual_seed(5)))
    _train(objective, 4, 2e-3)
    path = tmp_path / "heart_lora.safetensors"
    from safetensors.torch import save_file

    save_file(to_kohya(objective.lora_layers(), objective.lora_alpha), str(path))
    matched = match_lora(read_lora(path), loaded.model.unet, ())
    assert not matched.not_loaded
    patched = with_updated_weights(loaded.model.unet, matched.unet)
    trained = {n: v.detach() for n, v in objective.unet_overrides().items()}
    assert any(not torch.equal(v, loaded.model.unet.get_parameter(n)) for n, v in trained.items())
    for name, value in patched.named_parameters():
        expected = trained.get(name, loaded.model.unet.get_parameter(name))
        assert torch.allclose(value, expected.to(value.dtype), atol=1e-5), name


def test_the_distillation_prior_is_zero_while_the_model_is_the_base_and_grows_as_it_moves(loaded, concept):
    """prior='distill': class items regress on the base UNet's own output, so at step 0 (LoRA up = 0) their term
    is exactly zero whatever its weight; after training it is positive (the model moved on class prompts)."""
    objective = P.lora(loaded.model, loaded.clip, concept, rank=4, prior_weight=1.0, prior="distill")

    def loss_at(weight: float) -> float:
        objective.prior_weight = weight
        with torch.no_grad():
            return float(objective.step_fn(0, torch.Generator().manual_seed(5)))

    assert loss_at(1.0) == pytest.approx(loss_at(3.0), rel=1e-6)
    objective.prior_weight = 1.0
    train(objective.step_fn, objective.params, steps=3, seed=3, lr=5e-3)
    assert loss_at(3.0) > loss_at(1.0)
    with pytest.raises(ValueError, match="prior 'teacher' is not one of images, distill"):
        P.dreambooth(loaded.model, loaded.clip, concept, prior_weight=1.0, prior="teacher")


def test_captions_that_do_not_fit_one_window_are_refused(loaded):
    with pytest.raises(ValueError, match="longer than one"):
        P.caption_windows(loaded.clip.tokenizers[0], [" ".join(["red"] * 80)], "", 0)
    rng = random.Random(0)
    words = [rng.choice(["red", "heart"]) for _ in range(10)]
    ids, slots = P.caption_windows(loaded.clip.tokenizers[0], [" ".join(words)], "heart", 3)
    assert int((slots >= 0).sum()) == 3 * words.count("heart")


def test_custom_diffusion_resumes_bit_exactly_after_an_interruption(loaded, concept, tmp_path):
    """Every random draw of a step (noise, timesteps, the class batch) comes from the step's generator."""
    def run(state, interrupt_at=None):
        objective = P.custom_diffusion(loaded.model, loaded.clip, concept, "heart", "circle", prior_weight=1.0)
        calls = []

        def check():
            calls.append(1)
            if interrupt_at is not None and len(calls) > interrupt_at:
                raise KeyboardInterrupt

        return train(objective.step_fn, objective.params, steps=3, seed=4, lr=1e-3, check_interrupted=check,
                     state_path=state)

    whole = run(None)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "state.safetensors", interrupt_at=1)
    resumed = run(tmp_path / "state.safetensors")
    assert resumed.resumed_from == 1
    assert all(torch.equal(whole.params[k], resumed.params[k]) for k in whole.params)


def test_custom_diffusion_node_saves_where_the_loaders_look(tmp_path):
    engine = engine_at(tmp_path, input_dir=WORKFLOWS / "input")
    graph = graphs_personalize.textual_inversion()
    graph["22"] = {"class_type": "CustomDiffusionTrain", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "latents": ["21", 0], "captions": graphs_personalize.captions(),
        "token": "heart", "init_word": "circle", "steps": 2, "learning_rate": 0.001, "seed": 0, "name": "heart_cd",
        "prior_loss_weight": 1.0}}  # fmt: skip
    graph["6"]["inputs"].update(text="a red embedding:heart_cd on a blue background", clip=["22", 1])
    graph["3"]["inputs"].update(model=["22", 0], steps=2)
    result = engine.run(from_api(graph))
    assert [m["filename"] for m in result.ui["22"]["models"]] == ["heart_cd.safetensors"] * 2
    patch = engine.env.models.folder_dirs("loras")[0] / "heart_cd.safetensors"
    assert (engine.env.models.folder_dirs("embeddings")[0] / "heart_cd.safetensors").is_file()
    layers = read_lora(patch).layers
    assert layers and all(".attn2.to_k" in key or ".attn2.to_v" in key for key in layers)
    info, _ = read_state(next((tmp_path / "temp" / "training").glob("custom_diffusion-heart_cd*")))
    assert info["step"] == 2 and len(info["losses"]) == 2


def test_dreambooth_lora_node_saves_a_lora_that_loraloader_applies_as_the_returned_model(loaded, tmp_path):
    engine = engine_at(tmp_path, input_dir=WORKFLOWS / "input")
    graph = graphs_personalize.textual_inversion()
    graph["22"] = {"class_type": "DreamBoothLoraTrain", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "latents": ["21", 0], "captions": graphs_personalize.captions(),
        "rank": 2, "steps": 2, "learning_rate": 0.005, "seed": 0, "lora_name": "heart_db_lora",
        "prior_loss_weight": 1.0, "class_latents": ["21", 0], "class_captions": "a red circle on a blue background",
        "prior": "distill"}}  # fmt: skip
    graph["6"]["inputs"].update(text="a red heart on a blue background", clip=["4", 1])
    graph["3"]["inputs"].update(model=["22", 0], steps=2)
    result = engine.run(from_api(graph))
    assert [m["filename"] for m in result.ui["22"]["models"]] == ["heart_db_lora.safetensors"]
    path = engine.env.models.folder_dirs("loras")[0] / "heart_db_lora.safetensors"
    matched = match_lora(read_lora(path), loaded.model.unet, ())
    assert not matched.not_loaded and matched.unet.by_param
    applied = with_updated_weights(loaded.model.unet, matched.unet)
    returned = result.values["22"][0].unet
    changed = 0
    for name, value in applied.named_parameters():
        base = loaded.model.unet.get_parameter(name)
        changed += not torch.equal(value, base)
        assert torch.allclose(value, returned.get_parameter(name), atol=1e-6), name
    assert changed == len(matched.unet.by_param)
    info, _ = read_state(next((tmp_path / "temp" / "training").glob("lora-heart_db_lora*")))
    assert info["step"] == 2 and info["settings"]["prior"] == "distill"


def test_dreambooth_node_output_saves_as_a_checkpoint_that_differs_from_the_base(loaded, tmp_path):
    engine = engine_at(tmp_path, input_dir=WORKFLOWS / "input")
    graph = graphs_personalize.textual_inversion()
    graph["22"] = {"class_type": "DreamBoothTrain", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "latents": ["21", 0], "captions": graphs_personalize.captions(),
        "steps": 1, "learning_rate": 0.0001, "seed": 0, "run_name": "heart_db", "prior_loss_weight": 1.0}}
    graph["6"]["inputs"].update(text="a red heart on a blue background", clip=["4", 1])
    graph["3"]["inputs"].update(model=["22", 0], steps=2)
    graph["30"] = {"class_type": "CheckpointSave", "inputs": {
        "model": ["22", 0], "clip": ["4", 1], "vae": ["4", 2], "filename_prefix": "checkpoints/heart_db"}}  # fmt: skip
    result = engine.run(from_api(graph))
    saved = result.ui["30"]["models"][0]
    tuned = load_checkpoint(engine.env.output_dir / saved["subfolder"] / saved["filename"])
    changed = [n for n, v in tuned.model.unet.named_parameters()
               if not torch.equal(v.float(), loaded.model.unet.get_parameter(n).float())]  # fmt: skip
    assert len(changed) > 100  # one AdamW step moves (nearly) every weight
    assert torch.equal(tuned.clip.encoders[0].get_input_embeddings().weight.float(),
                       loaded.clip.encoders[0].get_input_embeddings().weight.float())  # fmt: skip
