"""HypernetworkLoader: an A1111 hypernetwork file with known weights changes exactly the key and value inputs of
the UNet's attention, by k = c + strength * mlp_k(c), and never the cached UNet."""

from __future__ import annotations

import pytest
import torch

from nodegraph import NodeContext
from nodegraph.environment import Environment, ModelPaths
from nodes.model_loaders.hypernetwork import HypernetworkLoader
from nodes.sd.denoisers import EpsDenoiser, patches_applied
from nodes.sd.hypernetwork import build_hypernetwork, transformer_attention
from nodes.sd.loading.configs import alphas_cumprod
from nodes.sd.types import ModelHandle
from tiny_models import sd1_modules

STRENGTH = 0.7


def _mlp_state(width: int, hidden: int, seed: int, layer_norm: bool) -> dict[str, torch.Tensor]:
    """A1111's `linear.N` keys of Linear(width, hidden) [, LayerNorm], Linear(hidden, width) [, LayerNorm]."""
    g = torch.Generator().manual_seed(seed)
    state, index = {}, 0
    for fan_in, fan_out in ((width, hidden), (hidden, width)):
        state[f"linear.{index}.weight"] = torch.randn(fan_out, fan_in, generator=g) / fan_in**0.5
        state[f"linear.{index}.bias"] = 0.1 * torch.randn(fan_out, generator=g)
        index += 1
        if layer_norm:
            state[f"linear.{index}.weight"] = 1 + 0.1 * torch.randn(fan_out, generator=g)
            state[f"linear.{index}.bias"] = 0.1 * torch.randn(fan_out, generator=g)
            index += 1
    return state


def _file_dict(widths: tuple[int, ...], *, layer_norm: bool = False) -> dict:
    data: dict = {w: [_mlp_state(w, 2 * w, 10 * w, layer_norm), _mlp_state(w, 2 * w, 10 * w + 1, layer_norm)]
                  for w in widths}
    data.update(activation_func="relu", is_layer_norm=layer_norm, use_dropout=True, activate_output=False,
                last_layer_dropout=False, layer_structure=[1, 2, 1], name="test", step=5)
    return data


def _formula(state: dict[str, torch.Tensor], c: torch.Tensor, layer_norm: bool = False) -> torch.Tensor:
    """c + strength * MLP(c), written out: Linear, ReLU, [LN], Linear, [LN] (no activation after the last)."""
    step = 2 if layer_norm else 1
    h = c @ state["linear.0.weight"].T + state["linear.0.bias"]
    h = torch.relu(h)
    if layer_norm:
        h = torch.nn.functional.layer_norm(h, h.shape[-1:], state["linear.1.weight"], state["linear.1.bias"])
    h = h @ state[f"linear.{step}.weight"].T + state[f"linear.{step}.bias"]
    if layer_norm:
        h = torch.nn.functional.layer_norm(h, h.shape[-1:], state["linear.3.weight"], state["linear.3.bias"])
    return c + STRENGTH * h


@pytest.fixture(scope="module")
def tiny():
    return sd1_modules(0)


def _env(tmp_path) -> Environment:
    return Environment(models=ModelPaths(roots=[tmp_path / "models"]))


def _write(tmp_path, data: dict) -> str:
    folder = tmp_path / "models" / "hypernetworks"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(data, folder / "hn.pt")
    return "hn.pt"


def _handle(unet) -> ModelHandle:
    schedule = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    return ModelHandle(unet_ref=unet, family="sd1", prediction="epsilon", alphas_cumprod=alphas_cumprod(schedule))


def _record_kv(unet, run):
    """Inputs of every attention layer's to_q/to_k/to_v during `run()`, by layer name."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in unet.named_modules():
        if name.endswith((".attn1", ".attn2")):
            for proj in ("to_q", "to_k", "to_v"):
                hooks.append(getattr(module, proj).register_forward_pre_hook(
                    lambda _m, args, key=f"{name}.{proj}": (seen.setdefault(key, args[0].detach().clone()), None)[1]))
    try:
        out = run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen, out


def _run(model: ModelHandle, x, sigma, text):
    denoiser = EpsDenoiser(model.unet, model.alphas_cumprod)
    with torch.no_grad(), patches_applied(model.patches, unet_denoiser=denoiser, cfg_denoiser=None):
        return denoiser(x, sigma, encoder_hidden_states=text)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_patched_attention_keys_and_values_follow_the_formula(tmp_path, tiny, layer_norm):
    data = _file_dict((32, 64), layer_norm=layer_norm)
    name = _write(tmp_path, data)
    base = _handle(tiny.unet)
    ctx = NodeContext("1", "HypernetworkLoader", _env(tmp_path))
    (patched,) = HypernetworkLoader.execute(ctx, base, name, STRENGTH)
    assert base.patches == () and len(patched.patches) == 1  # a new handle; the input is unchanged
    g = torch.Generator().manual_seed(1)
    x, text, sigma = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g), torch.tensor([3.0])
    plain_inputs, plain_out = _record_kv(tiny.unet, lambda: _run(base, x, sigma, text))
    patched_inputs, patched_out = _record_kv(tiny.unet, lambda: _run(patched, x, sigma, text))
    assert not torch.allclose(plain_out, patched_out, atol=1e-4)
    widths_seen = set()
    for layer in sorted(k.removesuffix(".to_q") for k in patched_inputs if k.endswith(".to_q")):
        query = patched_inputs[f"{layer}.to_q"]
        context = text if layer.endswith("attn2") else query  # self-attention's context is its own input
        width = context.shape[-1]
        widths_seen.add((layer[-5:], width))
        expected_k = _formula(data[width][0], context, layer_norm)
        expected_v = _formula(data[width][1], context, layer_norm)
        torch.testing.assert_close(patched_inputs[f"{layer}.to_k"], expected_k, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(patched_inputs[f"{layer}.to_v"], expected_v, atol=1e-5, rtol=1e-5)
    assert {("attn1", 32), ("attn2", 32), ("attn1", 64)} <= widths_seen
    # the first layer sees the same input either way: its query is untouched and its output is plain attention
    first = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    torch.testing.assert_close(patched_inputs[f"{first}.to_q"], plain_inputs[f"{first}.to_q"])


def test_strength_zero_and_the_cached_unet_stay_exact(tmp_path, tiny):
    name = _write(tmp_path, _file_dict((32, 64)))
    base = _handle(tiny.unet)
    ctx = NodeContext("1", "HypernetworkLoader", _env(tmp_path))
    processors = [layer.processor for layer in transformer_attention(tiny.unet)]
    g = torch.Generator().manual_seed(2)
    x, text, sigma = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g), torch.tensor([2.0])
    before = _run(base, x, sigma, text)
    (zero,) = HypernetworkLoader.execute(ctx, base, name, 0.0)
    torch.testing.assert_close(_run(zero, x, sigma, text), before, atol=0, rtol=0)
    (patched,) = HypernetworkLoader.execute(ctx, base, name, STRENGTH)
    _run(patched, x, sigma, text)
    assert [layer.processor for layer in transformer_attention(tiny.unet)] == processors
    torch.testing.assert_close(_run(base, x, sigma, text), before, atol=0, rtol=0)


def test_a_width_the_model_lacks_changes_nothing_and_bad_files_are_named(tmp_path, tiny):
    name = _write(tmp_path, _file_dict((768,)))
    base = _handle(tiny.unet)
    (patched,) = HypernetworkLoader.execute(NodeContext("1", "HypernetworkLoader", _env(tmp_path)), base, name, 1.0)
    g = torch.Generator().manual_seed(3)
    x, text, sigma = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g), torch.tensor([2.0])
    torch.testing.assert_close(_run(patched, x, sigma, text), _run(base, x, sigma, text), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="activation_func 'gelu2'"):
        build_hypernetwork({**_file_dict((32,)), "activation_func": "gelu2"}, "bad.pt")
    with pytest.raises(ValueError, match="no integer width keys"):
        build_hypernetwork({"activation_func": "relu"}, "empty.pt")
