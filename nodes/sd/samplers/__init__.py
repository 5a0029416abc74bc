"""Samplers: one function per algorithm, k-diffusion's calling convention, listed in SAMPLERS in ComfyUI's order.

Every sampler is `sample_x(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None,
noise_sampler=None, **options) -> x`: it integrates from x at sigmas[0] down the given sigmas (usually ending
at 0) calling only the denoiser D(x, sigma, **extra_args) -> x0. Option keywords are those of ComfyUI's
k-diffusion functions (eta, s_noise, r, solver_type, order, rtol, ..., max_order, deis_mode, tau_func, ...),
so option nodes pass them through unchanged. Samplers know nothing about CFG, conditioning or model types;
those wrap the denoiser (denoisers.py). The CFG++ family asks the CFG denoiser for the unconditional
prediction through an extra-args hook (cfg_pp.py).

Modules: karras.py (Euler, Heun, Heun++, DPM2, LMS, DDIM, LCM), ../samplers_multistep.py (DPM-Solver++,
UniPC and the shared noise helpers), cfg_pp.py (CFG++, RES, gradient estimation), dpm_solver.py (dpm_fast,
dpm_adaptive), sde.py (DDPM, 3M SDE, ER-SDE, SEEDS), adams.py (iPNDM, DEIS, SA-Solver), brownian.py (the
Brownian-tree noise KSampler gives SDE samplers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from nodes.sd.samplers.adams import (
    sample_deis,
    sample_ipndm,
    sample_ipndm_v,
    sample_sa_solver,
    sample_sa_solver_pece,
)
from nodes.sd.samplers.cfg_pp import (
    UNCOND_HOOK,
    sample_dpmpp_2m_cfg_pp,
    sample_dpmpp_2s_ancestral_cfg_pp,
    sample_euler_ancestral_cfg_pp,
    sample_euler_cfg_pp,
    sample_gradient_estimation,
    sample_gradient_estimation_cfg_pp,
    sample_res_multistep,
    sample_res_multistep_ancestral,
    sample_res_multistep_ancestral_cfg_pp,
    sample_res_multistep_cfg_pp,
)
from nodes.sd.samplers.dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from nodes.sd.samplers.karras import (
    churn_gamma,
    churned,
    lms_coefficient,
    sample_ddim,
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_heunpp2,
    sample_lcm,
    sample_lms,
    to_d,
)
from nodes.sd.samplers.sde import sample_ddpm, sample_dpmpp_3m_sde, sample_er_sde, sample_seeds_2, sample_seeds_3
from nodes.sd.samplers_multistep import (
    Denoiser,
    NoiseSampler,
    StepCallback,
    get_ancestral_step,
    host_schedule,
    report,
    resolve_noise,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_sde,
    sample_uni_pc,
    sample_uni_pc_bh2,
)

Sampler = Callable[..., Tensor]
"""sample_x(denoiser, x, sigmas, *, extra_args, callback, generator, noise_sampler, **options) -> x"""


def sample_dpmpp_2m_sde_heun(
    denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, solver_type: str = "heun", **kw: Any
) -> Tensor:
    """DPM-Solver++(2M) SDE with the Heun-type correction (Lu et al. 2022), ComfyUI's dpmpp_2m_sde_heun."""
    return sample_dpmpp_2m_sde(denoiser, x, sigmas, solver_type=solver_type, **kw)


SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,
    "euler_cfg_pp": sample_euler_cfg_pp,
    "euler_ancestral": sample_euler_ancestral,
    "euler_ancestral_cfg_pp": sample_euler_ancestral_cfg_pp,
    "heun": sample_heun,
    "heunpp2": sample_heunpp2,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpm_fast": sample_dpm_fast,
    "dpm_adaptive": sample_dpm_adaptive,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_sde_gpu": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_cfg_pp": sample_dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": sample_dpmpp_2m_sde_heun,
    "dpmpp_2m_sde_heun_gpu": sample_dpmpp_2m_sde_heun,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": sample_dpmpp_3m_sde,
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "ipndm": sample_ipndm,
    "ipndm_v": sample_ipndm_v,
    "deis": sample_deis,
    "res_multistep": sample_res_multistep,
    "res_multistep_cfg_pp": sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": sample_res_multistep_ancestral,
    "res_multistep_ancestral_cfg_pp": sample_res_multistep_ancestral_cfg_pp,
    "gradient_estimation": sample_gradient_estimation,
    "gradient_estimation_cfg_pp": sample_gradient_estimation_cfg_pp,
    "er_sde": sample_er_sde,
    "seeds_2": sample_seeds_2,
    "seeds_3": sample_seeds_3,
    "sa_solver": sample_sa_solver,
    "sa_solver_pece": sample_sa_solver_pece,
    "ddim": sample_ddim,
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}
"""ComfyUI 0.3.64's sampler names (KSampler.SAMPLERS, in its order) -> functions. The `_gpu` entries differ in
ComfyUI only by building their Brownian tree on the GPU; ours is always on the CPU, so they are the same."""

STOCHASTIC_SAMPLERS: frozenset[str] = frozenset(
    {
        "euler_ancestral", "euler_ancestral_cfg_pp", "dpm_2_ancestral", "dpmpp_2s_ancestral",
        "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
        "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
        "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
        "sa_solver_pece",
    }
)
"""Samplers that draw noise at every step with their default options (they use `generator` / `noise_sampler`)."""

DISCARD_PENULTIMATE_SIGMA: frozenset[str] = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})
"""ComfyUI computes one extra sigma for these and drops the second-to-last: their final step would
otherwise be a wasted tiny step near sigma_min."""

__all__ = [
    "DISCARD_PENULTIMATE_SIGMA", "SAMPLERS", "STOCHASTIC_SAMPLERS", "UNCOND_HOOK", "Denoiser", "NoiseSampler",
    "Sampler", "StepCallback", "churn_gamma", "churned", "get_ancestral_step", "host_schedule", "lms_coefficient",
    "report", "resolve_noise", "to_d", *sorted(name for name in globals() if name.startswith("sample_")),
]
"""What `nodes.sd.samplers` offered as a module (the helpers too), kept importable from the package."""
