"""Custom sampling as a user meets it: workflows on the embedded model, the SAMPLER payloads of samplers that
other modules provide, and our declarations against ComfyUI 0.3.64's contracts.

On the embedded model (64 px, few steps): a SamplerCustomAdvanced graph draws KSampler's latent bit for bit,
and PerpNegGuider keeps a colour that a plain-CFG negative prompt sharing it would wash out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tiny_models import engine_at

from nodegraph import NodeContext
from nodegraph.formats.api import from_api
from nodes.models.embedded import EMBEDDED_NAME, EMBEDDED_PATH
from nodes.sampling import NODES
from nodes.sampling.samplers import (SamplerDPMAdaptative, SamplerDPMPP_2M_SDE, SamplerDPMPP_3M_SDE,
                                     SamplerDPMPP_SDE, SamplerER_SDE, SamplerEulerAncestralCFGPP, SamplerSASolver)
from nodes.sd.sampler_spec import PowerNoiseScaler, SamplerSpec, TauInterval
from nodes.sd.schedules import model_sigmas, scaled_linear_alphas_cumprod
from nodes.sd.types import ModelHandle
from training.adapter_eval import colour_fraction

CTX = NodeContext("1", "test", SimpleNamespace())
CONTRACTS = Path(__file__).parent / "contracts" / "comfyui" / "custom_sampling.json"


# -- SAMPLER payloads ------------------------------------------------------------------------------------


def test_option_nodes_name_their_sampler_and_options() -> None:
    (three_m,) = SamplerDPMPP_3M_SDE.execute(CTX, eta=0.5, s_noise=0.9, noise_device="gpu")
    assert three_m == SamplerSpec.of("dpmpp_3m_sde_gpu", eta=0.5, s_noise=0.9)
    assert SamplerDPMPP_3M_SDE.execute(CTX, eta=0.5, s_noise=0.9, noise_device="cpu")[0].name == "dpmpp_3m_sde"
    assert SamplerDPMPP_2M_SDE.execute(CTX, solver_type="midpoint", eta=1.0, s_noise=1.0,
                                       noise_device="gpu")[0].name == "dpmpp_2m_sde_gpu"
    assert SamplerDPMPP_SDE.execute(CTX, eta=1.0, s_noise=1.0, r=0.5, noise_device="gpu")[0].name == "dpmpp_sde_gpu"
    (cfg_pp,) = SamplerEulerAncestralCFGPP.execute(CTX, eta=0.7, s_noise=1.1)
    assert cfg_pp == SamplerSpec.of("euler_ancestral_cfg_pp", eta=0.7, s_noise=1.1)
    (adaptive,) = SamplerDPMAdaptative.execute(CTX, order=2, rtol=0.1, atol=0.01, h_init=0.2, pcoeff=0.1, icoeff=0.9,
                                               dcoeff=0.05, accept_safety=0.7, eta=0.3, s_noise=0.8)
    assert adaptive.name == "dpm_adaptive" and adaptive.kwargs == {
        "order": 2, "rtol": 0.1, "atol": 0.01, "h_init": 0.2, "pcoeff": 0.1, "icoeff": 0.9, "dcoeff": 0.05,
        "accept_safety": 0.7, "eta": 0.3, "s_noise": 0.8}


def test_er_sde_solver_types() -> None:
    def options(solver_type: str, eta: float) -> dict[str, Any]:
        (spec,) = SamplerER_SDE.execute(CTX, solver_type=solver_type, max_stage=2, eta=eta, s_noise=0.8)
        assert spec.name == "er_sde"
        return spec.kwargs

    assert options("ER-SDE", 0.5) == {"s_noise": 0.8, "noise_scaler": None, "max_stage": 2}
    reverse = options("Reverse-time SDE", 0.5)
    assert reverse["noise_scaler"] == PowerNoiseScaler(0.5) and reverse["s_noise"] == 0.8
    assert reverse["noise_scaler"](torch.tensor(4.0)) == pytest.approx(4.0**1.5)
    for ode in (options("ODE", 0.5), options("Reverse-time SDE", 0.0)):
        assert ode["s_noise"] == 0.0 and ode["noise_scaler"] == PowerNoiseScaler(0.0)
        assert ode["noise_scaler"](3.0) == 3.0


def test_sa_solver_is_stochastic_between_its_percentages() -> None:
    alphas = scaled_linear_alphas_cumprod()
    model = ModelHandle(unet_ref=torch.nn.Identity(), family="sd1", prediction="epsilon", alphas_cumprod=alphas)
    (spec,) = SamplerSASolver.execute(CTX, model=model, eta=0.7, sde_start_percent=0.2, sde_end_percent=0.8,
                                      s_noise=1.0, predictor_order=3, corrector_order=4, use_pece=True,
                                      simple_order_2=False)
    assert spec.name == "sa_solver"
    options = spec.kwargs
    tau = options.pop("tau_func")
    assert options == {"s_noise": 1.0, "predictor_order": 3, "corrector_order": 4, "use_pece": True,
                       "simple_order_2": False}
    sigmas = model_sigmas(alphas)
    start = math.exp(0.8 * math.log(sigmas[799]) + 0.2 * math.log(sigmas[800]))  # timestep 0.8 * 999 = 799.2
    end = math.exp(0.2 * math.log(sigmas[199]) + 0.8 * math.log(sigmas[200]))  # timestep 0.2 * 999 = 199.8
    assert tau.start_sigma == pytest.approx(start) and tau.end_sigma == pytest.approx(end)
    assert tau(torch.tensor(tau.start_sigma * 1.01)) == 0.0 and tau(1.0) == 0.7 and tau(0.01) == 0.0
    assert TauInterval(10.0, 0.1, 0.0)(1.0) == 0.0


def test_a_sampler_is_resolved_by_name_when_sampling_starts() -> None:
    samplers = {"euler": lambda *args, **kwargs: None}
    assert SamplerSpec("euler").resolve(samplers) is samplers["euler"]
    with pytest.raises(ValueError, match="unknown sampler 'dpmpp_3m_sde_gpu'"):
        SamplerSpec("dpmpp_3m_sde_gpu").resolve(samplers)
    with pytest.raises(ValueError, match="run_inputs need a sampler function"):
        SamplerSpec("x", run_inputs=frozenset({"seed"}))


# -- declarations against ComfyUI's contracts ------------------------------------------------------------


def test_declarations_match_comfyui_contracts() -> None:
    """Names, order, types, defaults, ranges, options and outputs as ComfyUI 0.3.64 declares them. The sampler and
    scheduler lists may lack names no module provides yet, but keep ComfyUI's order."""
    contracts = json.loads(CONTRACTS.read_text())
    ours = {node.schema.type_id: node.schema for node in NODES if node.schema.type_id not in ("KSampler",
                                                                                            "KSamplerAdvanced")}
    assert set(ours) == set(contracts)
    for type_id, contract in contracts.items():
        schema = ours[type_id]
        assert (schema.display_name, schema.category) == (contract["display_name"], contract["category"]), type_id
        assert [(o.type, o.name) for o in schema.outputs] == [(o["type"], o["name"]) for o in contract["outputs"]]
        assert [spec.name for spec in schema.inputs] == [i["name"] for i in contract["inputs"]], type_id
        for spec, expected in zip(schema.inputs, contract["inputs"]):
            assert (spec.type, spec.optional) == (expected["type"], expected["optional"]), (type_id, spec.name)
            for key in ("default", "min", "max", "step"):
                if key in expected:
                    assert getattr(spec, key) == expected[key], (type_id, spec.name, key)
            if "options" in expected:
                options = list(spec.options)
                if spec.name in ("sampler_name", "scheduler"):
                    assert options == [name for name in expected["options"] if name in options], type_id
                else:
                    assert options == expected["options"], (type_id, spec.name)


# -- workflows on the embedded model ---------------------------------------------------------------------

needs_embedded = pytest.mark.skipif(not EMBEDDED_PATH.is_file(), reason="the embedded model's weights are not built")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.set_num_threads(1)
    return engine_at(tmp_path_factory.mktemp("custom"))


def prompt_graph(positive: str, negative: str, steps: int = 4, seed: int = 3) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": EMBEDDED_NAME}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 6.0, "sampler_name": "euler_ancestral", "scheduler": "karras",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "10": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "11": {"class_type": "CFGGuider", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                     "cfg": 6.0}},
        "12": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}},
        "13": {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": "karras", "steps": steps,
                                                          "denoise": 1.0}},
        "14": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["10", 0], "guider": ["11", 0], "sampler": ["12", 0], "sigmas": ["13", 0],
            "latent_image": ["5", 0]}},
    }


@needs_embedded
def test_a_custom_sampling_workflow_draws_ksamplers_latent(engine) -> None:
    values = engine.run(from_api(prompt_graph("a red circle on a blue background", "")), outputs=["3", "14"]).values
    assert torch.equal(values["14"][0].samples, values["3"][0].samples)
    assert values["14"][1].samples.shape == values["3"][0].samples.shape


@needs_embedded
def test_perp_neg_keeps_the_colour_a_shared_negative_would_remove(engine) -> None:
    """Negative "a red square" shares "red" with the positive "a red circle": plain CFG steers away from red as well
    as from the square, Perp-Neg removes only what is perpendicular to the positive, so more red survives."""
    red = {"cfg": 0.0, "perp": 0.0}
    for seed in (1, 2):
        graph = prompt_graph("a red circle on a white background", "a red square", steps=6, seed=seed)
        graph["8"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}}
        graph["15"] = {"class_type": "PerpNegGuider", "inputs": {
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "empty_conditioning": ["8", 0],
            "cfg": 6.0, "neg_scale": 1.0}}
        graph["16"] = {**graph["14"], "inputs": {**graph["14"]["inputs"], "guider": ["15", 0]}}
        for name, node in (("cfg", "14"), ("perp", "16")):
            graph[f"2{node}"] = {"class_type": "VAEDecode", "inputs": {"samples": [node, 0], "vae": ["4", 2]}}
        values = engine.run(from_api(graph), outputs=["214", "216"]).values
        red["cfg"] += colour_fraction(values["214"][0], "red")
        red["perp"] += colour_fraction(values["216"][0], "red")
    print(f"red fraction over 2 seeds: {red}")
    assert red["perp"] > red["cfg"] + 0.05, red
