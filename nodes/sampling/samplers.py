"""SAMPLER nodes: pick a sampler by name (KSamplerSelect) or with its options set (the Sampler* nodes).

Each returns a SamplerSpec naming a sampler of nodes/sd/samplers.py, resolved when sampling starts; options keep
k-diffusion's keyword names. The noise_device choice picks ComfyUI's "_gpu" variant, whose Brownian noise is
drawn on the device.
"""

from __future__ import annotations

from nodegraph import Boolean, Combo, Float, Int, Node, NodeContext, NodeSchema, Out, Socket
from nodegraph.schema import InputSpec

from ..sd.advanced_samplers import LCM_UPSCALE_METHODS, sample_euler_cfg_pp_alternative, sample_lcm_upscale
from ..sd.sampler_spec import SamplerSpec, TauInterval, er_sde_options
from ..sd.sigmas import percent_to_sigma
from ..sd.types import ModelHandle
from .names import SAMPLER_NAMES

CATEGORY = "sampling/custom_sampling/samplers"
NOISE_DEVICES = ("gpu", "cpu")


def _on(name: str, noise_device: str) -> str:
    return name if noise_device == "cpu" else f"{name}_gpu"


def _amount(name: str, default: float = 1.0, maximum: float = 100.0) -> InputSpec:
    return Float(name, default, min=0.0, max=maximum, step=0.01)


def _sampler_node(type_id: str, description: str, inputs: tuple[InputSpec, ...] = (), display_name: str = "",
                  category: str = CATEGORY) -> NodeSchema:
    return NodeSchema(type_id=type_id, display_name=display_name or type_id, category=category,
                      description=description, inputs=inputs, outputs=(Out("SAMPLER"),))


class KSamplerSelect(Node):
    schema = _sampler_node("KSamplerSelect", "A sampler by name, with its default options.",
                           (Combo("sampler_name", SAMPLER_NAMES),))

    @classmethod
    def execute(cls, ctx: NodeContext, sampler_name: str) -> tuple[SamplerSpec]:
        return (SamplerSpec(sampler_name),)


class SamplerEulerAncestral(Node):
    schema = _sampler_node("SamplerEulerAncestral", "Euler ancestral with its noise amount (eta) and scale.",
                           (_amount("eta"), _amount("s_noise")))

    @classmethod
    def execute(cls, ctx: NodeContext, eta: float, s_noise: float) -> tuple[SamplerSpec]:
        return (SamplerSpec.of("euler_ancestral", eta=eta, s_noise=s_noise),)


class SamplerEulerAncestralCFGPP(Node):
    schema = _sampler_node("SamplerEulerAncestralCFGPP", "Euler ancestral with CFG++ (Chung et al. 2024).",
                           (_amount("eta", maximum=1.0), _amount("s_noise", maximum=10.0)),
                           display_name="SamplerEulerAncestralCFG++")

    @classmethod
    def execute(cls, ctx: NodeContext, eta: float, s_noise: float) -> tuple[SamplerSpec]:
        return (SamplerSpec.of("euler_ancestral_cfg_pp", eta=eta, s_noise=s_noise),)


class SamplerLMS(Node):
    schema = _sampler_node("SamplerLMS", "Linear multistep with the given order.",
                           (Int("order", 4, min=1, max=100),))

    @classmethod
    def execute(cls, ctx: NodeContext, order: int) -> tuple[SamplerSpec]:
        return (SamplerSpec.of("lms", order=order),)


class SamplerDPMPP_3M_SDE(Node):
    schema = _sampler_node("SamplerDPMPP_3M_SDE", "DPM-Solver++(3M) SDE with its noise options.",
                           (_amount("eta"), _amount("s_noise"), Combo("noise_device", NOISE_DEVICES)))

    @classmethod
    def execute(cls, ctx: NodeContext, eta: float, s_noise: float, noise_device: str) -> tuple[SamplerSpec]:
        return (SamplerSpec.of(_on("dpmpp_3m_sde", noise_device), eta=eta, s_noise=s_noise),)


class SamplerDPMPP_2M_SDE(Node):
    schema = _sampler_node("SamplerDPMPP_2M_SDE", "DPM-Solver++(2M) SDE, midpoint or Heun, with its noise options.",
                           (Combo("solver_type", ("midpoint", "heun")), _amount("eta"), _amount("s_noise"),
                            Combo("noise_device", NOISE_DEVICES)))

    @classmethod
    def execute(cls, ctx: NodeContext, solver_type: str, eta: float, s_noise: float,
                noise_device: str) -> tuple[SamplerSpec]:
        return (SamplerSpec.of(_on("dpmpp_2m_sde", noise_device), eta=eta, s_noise=s_noise, solver_type=solver_type),)


class SamplerDPMPP_SDE(Node):
    schema = _sampler_node("SamplerDPMPP_SDE", "DPM-Solver++ SDE with its noise options and step ratio r.",
                           (_amount("eta"), _amount("s_noise"), _amount("r", 0.5),
                            Combo("noise_device", NOISE_DEVICES)))

    @classmethod
    def execute(cls, ctx: NodeContext, eta: float, s_noise: float, r: float, noise_device: str) -> tuple[SamplerSpec]:
        return (SamplerSpec.of(_on("dpmpp_sde", noise_device), eta=eta, s_noise=s_noise, r=r),)


class SamplerDPMPP_2S_Ancestral(Node):
    schema = _sampler_node("SamplerDPMPP_2S_Ancestral", "DPM-Solver++(2S) ancestral with its noise options.",
                           (_amount("eta"), _amount("s_noise")))

    @classmethod
    def execute(cls, ctx: NodeContext, eta: float, s_noise: float) -> tuple[SamplerSpec]:
        return (SamplerSpec.of("dpmpp_2s_ancestral", eta=eta, s_noise=s_noise),)


class SamplerDPMAdaptative(Node):
    schema = _sampler_node(
        "SamplerDPMAdaptative", "Adaptive-step DPM-Solver with its error control settings.",
        (Int("order", 3, min=2, max=3), _amount("rtol", 0.05), _amount("atol", 0.0078), _amount("h_init", 0.05),
         _amount("pcoeff", 0.0), _amount("icoeff", 1.0), _amount("dcoeff", 0.0), _amount("accept_safety", 0.81),
         _amount("eta", 0.0), _amount("s_noise")))

    @classmethod
    def execute(cls, ctx: NodeContext, order: int, rtol: float, atol: float, h_init: float, pcoeff: float,
                icoeff: float, dcoeff: float, accept_safety: float, eta: float, s_noise: float) -> tuple[SamplerSpec]:
        return (SamplerSpec.of("dpm_adaptive", order=order, rtol=rtol, atol=atol, h_init=h_init, pcoeff=pcoeff,
                               icoeff=icoeff, dcoeff=dcoeff, accept_safety=accept_safety, eta=eta, s_noise=s_noise),)


class SamplerER_SDE(Node):
    schema = _sampler_node(
        "SamplerER_SDE", "ER-SDE solver (Cui et al. 2023): its own noise scaler, the reverse-time SDE's, or the ODE.",
        (Combo("solver_type", ("ER-SDE", "Reverse-time SDE", "ODE")),
         Int("max_stage", 3, min=1, max=3),
         Float("eta", 1.0, min=0.0, max=100.0, step=0.01,
               tooltip="Noise strength of the reverse-time SDE; 0 makes it the ODE. The ER-SDE type ignores it."),
         _amount("s_noise")))

    @classmethod
    def execute(cls, ctx: NodeContext, solver_type: str, max_stage: int, eta: float,
                s_noise: float) -> tuple[SamplerSpec]:
        return (SamplerSpec.of("er_sde", **er_sde_options(solver_type, max_stage, eta, s_noise)),)


class SamplerSASolver(Node):
    schema = _sampler_node(
        "SamplerSASolver", "SA-Solver (Xue et al. 2023), stochastic between two sampling percentages.",
        (Socket("model", "MODEL"),
         Float("eta", 1.0, min=0.0, max=10.0, step=0.01),
         Float("sde_start_percent", 0.2, min=0.0, max=1.0, step=0.001),
         Float("sde_end_percent", 0.8, min=0.0, max=1.0, step=0.001),
         _amount("s_noise"),
         Int("predictor_order", 3, min=1, max=6),
         Int("corrector_order", 4, min=0, max=6),
         Boolean("use_pece"), Boolean("simple_order_2")))

    @classmethod
    def execute(cls, ctx: NodeContext, model: ModelHandle, eta: float, sde_start_percent: float,
                sde_end_percent: float, s_noise: float, predictor_order: int, corrector_order: int, use_pece: bool,
                simple_order_2: bool) -> tuple[SamplerSpec]:
        tau = TauInterval(percent_to_sigma(model.alphas_cumprod, sde_start_percent),
                          percent_to_sigma(model.alphas_cumprod, sde_end_percent), eta)
        return (SamplerSpec.of("sa_solver", tau_func=tau, s_noise=s_noise, predictor_order=predictor_order,
                               corrector_order=corrector_order, use_pece=use_pece, simple_order_2=simple_order_2),)


class SamplerLCMUpscale(Node):
    schema = _sampler_node(
        "SamplerLCMUpscale", "LCM sampling that enlarges the latent over the first steps (scale_steps -1: half).",
        (Float("scale_ratio", 1.0, min=0.1, max=20.0, step=0.01),
         Int("scale_steps", -1, min=-1, max=1000, step=1),
         Combo("upscale_method", LCM_UPSCALE_METHODS)))

    @classmethod
    def execute(cls, ctx: NodeContext, scale_ratio: float, scale_steps: int, upscale_method: str) -> tuple[SamplerSpec]:
        options = (("total_upscale", scale_ratio), ("upscale_steps", None if scale_steps < 0 else scale_steps),
                   ("upscale_method", upscale_method))
        return (SamplerSpec("lcm_upscale", options, function=sample_lcm_upscale, run_inputs=frozenset({"seed"})),)


class SamplerEulerCFGpp(Node):
    schema = _sampler_node(
        "SamplerEulerCFGpp", "Euler with CFG++ (Chung et al. 2024): the sampler, or the alternative formulation.",
        (Combo("version", ("regular", "alternative")),), display_name="SamplerEulerCFG++", category="_for_testing")

    @classmethod
    def execute(cls, ctx: NodeContext, version: str) -> tuple[SamplerSpec]:
        if version == "alternative":
            return (SamplerSpec("euler_cfg_pp_alternative", function=sample_euler_cfg_pp_alternative,
                                run_inputs=frozenset({"cfg_denoiser"})),)
        return (SamplerSpec("euler_cfg_pp"),)


NODES = (KSamplerSelect, SamplerEulerAncestral, SamplerEulerAncestralCFGPP, SamplerLMS, SamplerDPMPP_3M_SDE,
         SamplerDPMPP_2M_SDE, SamplerDPMPP_SDE, SamplerDPMPP_2S_Ancestral, SamplerDPMAdaptative, SamplerER_SDE,
         SamplerSASolver, SamplerLCMUpscale, SamplerEulerCFGpp)
