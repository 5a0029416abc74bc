"""The sampler and scheduler choices of the custom-sampling nodes, in ComfyUI's order.

ComfyUI lists its samplers and schedulers in a fixed order, and a COMBO's first option is its default; the
nodes offer ours in that order (those we have), followed by any of ours ComfyUI lacks.
"""

from __future__ import annotations

from ..sd.samplers import SAMPLERS
from ..sd.schedules import SCHEDULERS

COMFY_SAMPLER_ORDER: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)
"""ComfyUI 0.3.64's SAMPLER_NAMES."""

COMFY_SCHEDULER_ORDER: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
)
"""ComfyUI 0.3.64's SCHEDULER_NAMES."""


def in_comfy_order(ours: list[str], comfy: tuple[str, ...]) -> tuple[str, ...]:
    """`ours` ordered as ComfyUI orders them, names ComfyUI does not know last (in our order)."""
    known = [name for name in comfy if name in ours]
    return (*known, *(name for name in ours if name not in comfy))


SAMPLER_NAMES = in_comfy_order(list(SAMPLERS), COMFY_SAMPLER_ORDER)
SCHEDULER_NAMES = in_comfy_order(list(SCHEDULERS), COMFY_SCHEDULER_ORDER)
