"""The shared fine-tuning core (nodes/sd/finetune/): seeded data, the denoising loss, the resumable loop.

Checked against what they compute: the forward diffusion and v target against diffusers' DDPMScheduler, the
loss against its formula, epoch batches as permutations; the loop by what a user relies on: a resumed run ends
bit-identical to an uninterrupted one, a seed reproduces a run, and the loss falls on a tiny problem.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler
from PIL import Image

import pytest
from nodes.sd.finetune import (
    TrainingSet,
    batch_indices,
    caption_for,
    image_files,
    load_images,
    noise_loss,
    noisy_latents,
    regression,
    stack_states,
    step_generator,
    train,
    unet_with,
)
from tiny_models import sd1_modules


class Stop(Exception):
    pass


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is fastest, and the shared CI cores are not fought over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _schedule() -> tuple[DDPMScheduler, torch.Tensor]:
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return scheduler, scheduler.alphas_cumprod.to(torch.float64)


def test_forward_diffusion_and_v_target_match_diffusers():
    scheduler, alphas = _schedule()
    latents = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    noisy, noise, timesteps = noisy_latents(latents, alphas, step_generator(0, 5))
    expected = scheduler.add_noise(latents, noise, timesteps)
    torch.testing.assert_close(noisy, expected, rtol=1e-5, atol=1e-5)
    # same generator, same draws
    again = noisy_latents(latents, alphas, step_generator(0, 5))
    assert torch.equal(again[0], noisy) and torch.equal(again[2], timesteps)

    # a UNet that predicts zeros: the epsilon loss is mean(eps^2), the v loss mean(v^2) with diffusers' v
    def zeros(x, t, c):
        return torch.zeros_like(x)

    states = torch.zeros(3, 2, 8)
    eps_loss = noise_loss(zeros, latents, states, alphas, step_generator(0, 5))
    torch.testing.assert_close(eps_loss, (noise**2).mean())
    v_loss = noise_loss(zeros, latents, states, alphas, step_generator(0, 5), prediction="v_prediction")
    velocity = scheduler.get_velocity(latents, noise, timesteps)
    torch.testing.assert_close(v_loss, (velocity**2).mean(), rtol=1e-5, atol=1e-6)
    weighted = noise_loss(zeros, latents, states, alphas, step_generator(0, 5), weights=torch.tensor([1.0, 0, 0]))
    torch.testing.assert_close(weighted, (noise[0] ** 2).mean() / 3)


def test_regression_losses_are_torchs():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    torch.testing.assert_close(regression(a, b, "L1"), (a - b).abs().flatten(1).mean(1))
    torch.testing.assert_close(regression(a, b, "Huber").mean(), torch.nn.HuberLoss()(a, b))
    torch.testing.assert_close(regression(a, b, "SmoothL1").mean(), torch.nn.SmoothL1Loss()(a, b))
    with pytest.raises(ValueError, match="unknown loss"):
        regression(a, b, "L3")


def test_batches_are_seeded_epoch_permutations():
    batches = [batch_indices(5, 2, seed=7, index=i) for i in range(5)]  # 10 items = two epochs
    flat = [row for batch in batches for row in batch]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:]) == list(range(5))
    assert batches == [batch_indices(5, 2, seed=7, index=i) for i in range(5)]
    assert flat != [row for i in range(5) for row in batch_indices(5, 2, seed=8, index=i)]


def test_image_folder_with_captions(tmp_path):
    for index, size in enumerate([(16, 16), (16, 16), (24, 12)]):
        Image.new("RGB", size, (255, 0, 0) if index else (0, 0, 255)).save(tmp_path / f"img{index}.png")
    (tmp_path / "img1.txt").write_text(" a red square \n")
    (tmp_path / "notes.md").write_text("ignored")
    files = image_files(tmp_path)
    assert [f.name for f in files] == ["img0.png", "img1.png", "img2.png"]
    assert [caption_for(f) for f in files] == ["", "a red square", ""]
    with pytest.raises(ValueError, match="img2.png is 24x12, not 16x16"):
        load_images(files)
    images = load_images(files, resize_method="Pad")
    assert images.shape == (3, 16, 16, 3)
    torch.testing.assert_close(images[0, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    assert images[2, 0, 8].sum() == 0 and images[2, 8, 8, 0] == 1  # 24x12 fits as 16x8, black bands above/below
    assert load_images(files, resize_method="Stretch", width=8, height=4).shape == (3, 4, 8, 3)


def test_states_of_different_lengths_repeat_window_wise():
    short, long = torch.randn(1, 77, 8), torch.randn(1, 154, 8)
    stacked = stack_states([short, long])
    assert stacked.shape == (2, 154, 8)
    assert torch.equal(stacked[0, 77:], short[0]) and torch.equal(stacked[1], long[0])
    with pytest.raises(ValueError, match="tokens"):
        stack_states([torch.randn(1, 77, 8), torch.randn(1, 100, 8)], ["a cat"])


# -- the loop on the tiny UNet with a LoRA-shaped trainable update ------------------------------------


@pytest.fixture(scope="module")
def tiny():
    modules = sd1_modules(seed=3)
    generator = torch.Generator().manual_seed(0)
    data = TrainingSet(torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 5, 32, generator=generator))
    return modules.unet, data


TARGET = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"


def _lora_problem(unet, data, seed=0):
    base = dict(unet.named_parameters())[TARGET]
    generator = torch.Generator().manual_seed(seed)
    params = {"down": (0.1 * torch.randn(4, base.shape[1], generator=generator)).requires_grad_(),
              "up": torch.zeros(base.shape[0], 4).requires_grad_()}
    _, alphas = _schedule()

    def step(index, generator):
        unet_call = unet_with(unet, {TARGET: base.detach() + params["up"] @ params["down"]})
        latents, states = data.batch(batch_indices(len(data), 2, seed, index))
        return noise_loss(unet_call, latents, states, alphas, generator)

    return step, params


def test_resume_is_bit_identical_to_an_uninterrupted_run(tiny, tmp_path):
    unet, data = tiny
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    step, params = _lora_problem(unet, data)
    whole = train(step, params, steps=6, seed=0, lr=1e-2, state_path=tmp_path / "whole.safetensors")

    step, params = _lora_problem(unet, data)
    calls = []

    def stop_at_three():
        calls.append(1)
        if len(calls) == 4:
            raise Stop

    with pytest.raises(Stop):
        train(step, params, steps=6, seed=0, lr=1e-2, state_path=tmp_path / "split.safetensors",
              check_interrupted=stop_at_three)
    step, params = _lora_problem(unet, data)  # a fresh process: new tensors, state from the file
    seen = []
    resumed = train(step, params, steps=6, seed=0, lr=1e-2, state_path=tmp_path / "split.safetensors",
                    progress=lambda done, total, loss: seen.append((done, total)))
    assert resumed.resumed_from == 3 and resumed.step == 6 and seen == [(4, 6), (5, 6), (6, 6)]
    assert resumed.losses == whole.losses
    for name in params:
        assert torch.equal(resumed.params[name], whole.params[name]), name
    assert not torch.equal(whole.params["up"], torch.zeros_like(whole.params["up"]))
    # the UNet itself was never changed nor given gradients
    for name, p in unet.named_parameters():
        assert torch.equal(p, before[name]) and p.grad is None
    # a state saved with other settings is refused, not resumed
    step, params = _lora_problem(unet, data)
    with pytest.raises(ValueError, match="other settings"):
        train(step, params, steps=6, seed=0, lr=1e-2, state_path=tmp_path / "split.safetensors", settings={"x": 1})


def test_a_seed_reproduces_a_run_and_another_seed_differs(tiny):
    unet, data = tiny
    runs = []
    for seed in (0, 0, 1):
        step, params = _lora_problem(unet, data, seed=seed)
        runs.append(train(step, params, steps=3, seed=seed, lr=1e-2, optimizer="Adam", grad_accumulation=2))
    assert runs[0].losses == runs[1].losses and torch.equal(runs[0].params["up"], runs[1].params["up"])
    assert runs[0].losses != runs[2].losses


def test_loss_falls_on_a_tiny_problem(tiny):
    """Fitting the UNet's output convolution (a full-weight update) to four fixed latents: the mean loss over a
    fixed set of held-out draws falls."""
    unet, data = tiny
    names = ("conv_out.weight", "conv_out.bias")
    base = {name: dict(unet.named_parameters())[name] for name in names}
    params = {name: torch.zeros_like(base[name]).requires_grad_() for name in names}
    _, alphas = _schedule()

    def step(index, generator):
        unet_call = unet_with(unet, {name: base[name].detach() + params[name] for name in names})
        latents, states = data.batch(batch_indices(len(data), 4, 0, index))
        return noise_loss(unet_call, latents, states, alphas, generator)

    def held_out_loss() -> float:
        with torch.no_grad():
            return sum(float(step(1000 + i, step_generator(99, i))) for i in range(4)) / 4

    first = held_out_loss()
    result = train(step, params, steps=25, seed=0, lr=1e-2)
    assert held_out_loss() < 0.8 * first, (first, result.losses)


def test_lora_layers_write_kohya_files_our_loader_merges_to_the_same_weights(tiny):
    """W + alpha / rank * up @ down as trained equals what LoraLoader merges from the written file, and a file
    read back as trainable layers (continued training) reproduces it exactly."""
    from nodes.sd.finetune.lora_layers import create_lora_layers, from_lora_file, overrides, to_kohya
    from nodes.sd.lora import match_lora, parse_lora, with_updated_weights

    unet, _ = tiny
    layers = create_lora_layers(unet, 3, torch.Generator().manual_seed(0))
    assert all(torch.equal(v, torch.zeros_like(v)) for k, v in layers.items() if k.endswith("lora_up"))
    with torch.no_grad():
        for key, value in layers.items():
            if key.endswith("lora_up"):
                value.normal_(generator=torch.Generator().manual_seed(1))
    adapted = overrides(unet, layers, alpha=1.5)
    assert len(adapted) == len(layers) // 2 and TARGET in adapted
    tensors = to_kohya(layers, alpha=1.5)
    matched = match_lora(parse_lora(tensors, {}, "t"), unet, ())
    assert matched.not_loaded == ()
    merged = dict(with_updated_weights(unet, matched.unet).named_parameters())
    for name, weight in adapted.items():
        torch.testing.assert_close(merged[name], weight.detach(), rtol=1e-5, atol=1e-6)
    again = overrides(unet, from_lora_file(unet, tensors, "t"), alpha=3.0)  # alpha = rank: scale folded into up
    for name, weight in adapted.items():
        torch.testing.assert_close(again[name], weight, rtol=1e-5, atol=1e-6)


def test_lora_training_with_gradient_checkpointing_equals_without_and_leaves_the_unet_as_it_was(tiny):
    from nodes.sd.finetune.lora_train import LoraSettings, train_lora
    from nodes.sd.types import ModelHandle

    unet, data = tiny
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    _, alphas = _schedule()
    model = ModelHandle(unet, "sd1", "epsilon", alphas)
    runs = []
    for checkpointing in (False, True):
        settings = LoraSettings(steps=2, rank=2, learning_rate=0.01, training_dtype="fp32", lora_dtype="fp32",
                                gradient_checkpointing=checkpointing)
        runs.append(train_lora(model, data, settings))
        assert not unet.is_gradient_checkpointing
    (first, first_losses, _), (second, second_losses, _) = runs
    assert first_losses == second_losses
    assert all(torch.equal(first.tensors[k], second.tensors[k]) for k in first.tensors)
    for name, p in unet.named_parameters():
        assert isinstance(p, torch.nn.Parameter) and torch.equal(p, before[name]) and p.grad is None, name
    with pytest.raises(ValueError, match="algorithm 'LoHa'"):
        train_lora(model, data, LoraSettings(algorithm="LoHa"))
