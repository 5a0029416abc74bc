"""The SIGMAS nodes of custom sampling, each checked against ComfyUI's formula on small schedules.

Reference formulas are written out here independently (k-diffusion's and ComfyUI's definitions, float32 where
they compute in float32); published tables are spot-checked against values copied from the papers' releases.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nodegraph import NodeContext
from nodes.sampling.schedulers import (AlignYourStepsScheduler, BasicScheduler, BetaSamplingScheduler,
                                       ExponentialScheduler, GITSScheduler, KarrasScheduler, LaplaceScheduler,
                                       OptimalStepsScheduler, PolyexponentialScheduler, SDTurboScheduler,
                                       VPScheduler)
from nodes.sampling.sigmas import (ExtendIntermediateSigmas, FlipSigmas, SamplingPercentToSigma, SetFirstSigma,
                                   SplitSigmas, SplitSigmasDenoise)
from nodes.sd.schedules import beta, calculate_sigmas, model_sigmas, scaled_linear_alphas_cumprod
from nodes.sd.types import ModelHandle

CTX = NodeContext("1", "test", SimpleNamespace())
ALPHAS = scaled_linear_alphas_cumprod()
SD_SIGMAS = model_sigmas(ALPHAS)
MODEL = ModelHandle(unet_ref=torch.nn.Identity(), family="sd1", prediction="epsilon", alphas_cumprod=ALPHAS)
SIGMA_MAX, SIGMA_MIN = 14.614642, 0.0291675


def run(node, **inputs):
    return node.execute(CTX, **inputs)


def close(actual: torch.Tensor, expected, rtol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.dtype == torch.float32 and actual.shape == expected.shape, (actual, expected)
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=1e-7)


def with_zero(values) -> torch.Tensor:
    return torch.cat([torch.as_tensor(values, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])


# -- parametric schedules --------------------------------------------------------------------------------


def test_karras_is_evenly_spaced_in_sigma_to_the_one_over_rho() -> None:
    (sigmas,) = run(KarrasScheduler, steps=5, sigma_max=10.0, sigma_min=0.1, rho=3.0)
    ramp = np.linspace(0, 1, 5)
    close(sigmas, with_zero((10.0 ** (1 / 3) + ramp * (0.1 ** (1 / 3) - 10.0 ** (1 / 3))) ** 3))
    assert float(sigmas[0]) == pytest.approx(10.0) and float(sigmas[4]) == pytest.approx(0.1)


def test_exponential_is_evenly_spaced_in_log_sigma() -> None:
    (sigmas,) = run(ExponentialScheduler, steps=4, sigma_max=8.0, sigma_min=0.5)
    close(sigmas, with_zero(np.exp(np.linspace(math.log(8.0), math.log(0.5), 4))))
    ratios = sigmas[:-2] / sigmas[1:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, float(ratios[0])))


def test_polyexponential_follows_a_polynomial_ramp_in_log_sigma() -> None:
    (sigmas,) = run(PolyexponentialScheduler, steps=4, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, rho=2.0)
    ramp = np.linspace(1, 0, 4) ** 2
    close(sigmas, with_zero(np.exp(ramp * (math.log(SIGMA_MAX) - math.log(SIGMA_MIN)) + math.log(SIGMA_MIN))))
    (rho_one,) = run(PolyexponentialScheduler, steps=4, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, rho=1.0)
    (exponential,) = run(ExponentialScheduler, steps=4, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN)
    torch.testing.assert_close(rho_one, exponential)


def test_laplace_quantiles_are_clamped_and_have_no_final_zero() -> None:
    (sigmas,) = run(LaplaceScheduler, steps=5, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, mu=0.5, beta=0.7)
    x = np.linspace(0, 1, 5)
    lmb = 0.5 - 0.7 * np.sign(0.5 - x) * np.log(1 - 2 * np.abs(0.5 - x) + 1e-5)
    close(sigmas, np.clip(np.exp(lmb), SIGMA_MIN, SIGMA_MAX))
    assert float(sigmas[-1]) > 0 and float(sigmas[2]) == pytest.approx(math.exp(0.5), rel=1e-6)  # the median is mu


def test_vp_schedule_is_the_continuous_vp_sde() -> None:
    (sigmas,) = run(VPScheduler, steps=3, beta_d=19.9, beta_min=0.1, eps_s=0.001)
    t = np.linspace(1, 0.001, 3)
    close(sigmas, with_zero(np.sqrt(np.exp(19.9 * t**2 / 2 + 0.1 * t) - 1)))


# -- schedules of the model ------------------------------------------------------------------------------


def test_basic_scheduler_takes_the_tail_of_a_longer_schedule_below_denoise_one() -> None:
    (full,) = run(BasicScheduler, model=MODEL, scheduler="karras", steps=4, denoise=1.0)
    torch.testing.assert_close(full, calculate_sigmas(ALPHAS, "karras", 4))
    (half,) = run(BasicScheduler, model=MODEL, scheduler="normal", steps=3, denoise=0.45)
    torch.testing.assert_close(half, calculate_sigmas(ALPHAS, "normal", int(3 / 0.45))[-4:])
    (nothing,) = run(BasicScheduler, model=MODEL, scheduler="normal", steps=3, denoise=0.0)
    assert nothing.shape == (0,)


def test_beta_sampling_scheduler_uses_the_given_shape() -> None:
    (default,) = run(BetaSamplingScheduler, model=MODEL, steps=6, alpha=0.6, beta=0.6)
    torch.testing.assert_close(default, calculate_sigmas(ALPHAS, "beta", 6))
    (skewed,) = run(BetaSamplingScheduler, model=MODEL, steps=6, alpha=2.0, beta=0.5)
    torch.testing.assert_close(skewed, beta(SD_SIGMAS, 6, 2.0, 0.5))
    assert not torch.equal(default, skewed)


def test_sd_turbo_uses_every_hundredth_timestep_from_999() -> None:
    (two,) = run(SDTurboScheduler, model=MODEL, steps=2, denoise=1.0)
    close(two, [float(SD_SIGMAS[999]), float(SD_SIGMAS[899]), 0.0])
    (img2img,) = run(SDTurboScheduler, model=MODEL, steps=3, denoise=0.5)  # starts 10 - int(5) = 5 entries in
    close(img2img, [float(SD_SIGMAS[499]), float(SD_SIGMAS[399]), float(SD_SIGMAS[299]), 0.0])


def test_sampling_percent_to_sigma() -> None:
    def sigma(percent: float, actual: bool = False) -> float:
        return run(SamplingPercentToSigma, model=MODEL, sampling_percent=percent, return_actual_sigma=actual)[0]

    assert sigma(0.0) == 999999999.9 and sigma(1.0) == 0.0
    assert sigma(0.0, True) == pytest.approx(float(SD_SIGMAS[-1]))
    assert sigma(1.0, True) == pytest.approx(float(SD_SIGMAS[0]))
    assert sigma(0.5) == pytest.approx(math.exp(0.5 * math.log(SD_SIGMAS[499]) + 0.5 * math.log(SD_SIGMAS[500])))
    assert sigma(0.5, True) == sigma(0.5)


# -- published tables and their log-linear interpolation ------------------------------------------------


def loglinear(values, n: int) -> np.ndarray:
    """The reference: log of the ascending values interpolated at n even positions, reversed back."""
    ys = np.log(np.asarray(values)[::-1])
    return np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(values)), ys))[::-1]


AYS_SD1 = [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
           0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582]


def test_align_your_steps_table_interpolation_and_denoise() -> None:
    (ten,) = run(AlignYourStepsScheduler, model_type="SD1", steps=10, denoise=1.0)
    close(ten, [*AYS_SD1[:-1], 0.0])
    (twenty,) = run(AlignYourStepsScheduler, model_type="SD1", steps=20, denoise=1.0)
    close(twenty, [*loglinear(AYS_SD1, 21)[:-1], 0.0])
    assert float(twenty[10]) == pytest.approx(AYS_SD1[5], rel=1e-6)  # every other one is a table value
    (half,) = run(AlignYourStepsScheduler, model_type="SD1", steps=20, denoise=0.5)
    close(half, [*loglinear(AYS_SD1, 21)[-11:-1], 0.0])
    assert run(AlignYourStepsScheduler, model_type="SVD", steps=10, denoise=0.0)[0].shape == (0,)
    (sdxl,) = run(AlignYourStepsScheduler, model_type="SDXL", steps=10, denoise=1.0)
    assert float(sdxl[1]) == pytest.approx(6.3184485287)


def test_gits_table_rows_interpolation_and_denoise() -> None:
    (three,) = run(GITSScheduler, coeff=1.0, steps=3, denoise=1.0)
    close(three, [14.61464119, 6.77309084, 0.95350921, 0.0])
    (two,) = run(GITSScheduler, coeff=0.8, steps=2, denoise=1.0)
    close(two, [14.61464119, 7.49001646, 0.0])
    (ten,) = run(GITSScheduler, coeff=1.2, steps=10, denoise=1.0)
    assert ten.shape == (11,) and bool((ten[:-1] > ten[1:]).all()) and float(ten[0]) == pytest.approx(14.61464119)
    (half,) = run(GITSScheduler, coeff=1.2, steps=10, denoise=0.5)
    torch.testing.assert_close(half[:-1], ten[-6:-1])
    assert float(half[-1]) == 0.0
    (long,) = run(GITSScheduler, coeff=1.0, steps=25, denoise=1.0)
    (twenty,) = run(GITSScheduler, coeff=1.0, steps=20, denoise=1.0)
    row_20 = [*twenty[:-1].tolist(), 0.02916753]
    close(long, [*loglinear(row_20, 26)[:-1], 0.0], rtol=1e-5)
    (stepped,) = run(GITSScheduler, coeff=1.05 + 1e-9, steps=2, denoise=1.0)  # the widget's step is rounded
    close(stepped, [14.61464119, 0.95350921, 0.0])


def test_optimal_steps_tables() -> None:
    (flux,) = run(OptimalStepsScheduler, model_type="FLUX", steps=10, denoise=1.0)
    close(flux, [0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808, 0.0])
    (wan,) = run(OptimalStepsScheduler, model_type="Wan", steps=5, denoise=1.0)
    wan_table = [1.0, 0.997, 0.995, 0.993, 0.991, 0.989, 0.987, 0.985, 0.98, 0.975, 0.973, 0.968, 0.96, 0.946,
                 0.927, 0.902, 0.864, 0.776, 0.539, 0.208, 0.001]
    close(wan, [*loglinear(wan_table, 6)[:-1], 0.0])


# -- sigma tools -----------------------------------------------------------------------------------------

SIGMAS = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0])


def test_split_sigmas_share_the_split_step() -> None:
    high, low = run(SplitSigmas, sigmas=SIGMAS, step=2)
    assert high.tolist() == [10.0, 5.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]
    high, low = run(SplitSigmasDenoise, sigmas=SIGMAS, denoise=0.5)  # round(4 * 0.5) = 2 low steps
    assert high.tolist() == [10.0, 5.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]
    high, low = run(SplitSigmasDenoise, sigmas=SIGMAS, denoise=0.0)  # ComfyUI: sigmas[:-0] is empty
    assert high.tolist() == [] and low.tolist() == [0.0]


def test_flip_and_set_first_sigma() -> None:
    (flipped,) = run(FlipSigmas, sigmas=SIGMAS)
    assert flipped.tolist() == pytest.approx([0.0001, 1.0, 2.0, 5.0, 10.0])
    assert SIGMAS.tolist() == [10.0, 5.0, 2.0, 1.0, 0.0]
    assert run(FlipSigmas, sigmas=torch.zeros(0))[0].shape == (0,)
    (first,) = run(SetFirstSigma, sigmas=SIGMAS, sigma=136.0)
    assert first.tolist() == [136.0, 5.0, 2.0, 1.0, 0.0] and float(SIGMAS[0]) == 10.0


@pytest.mark.parametrize("spacing, fractions", [
    ("linear", [1 / 3, 2 / 3]),
    ("cosine", [math.sin(math.pi / 6), math.sin(math.pi / 3)]),
    ("sine", [1 - math.cos(math.pi / 6), 1 - math.cos(math.pi / 3)]),
])
def test_extend_intermediate_sigmas_splits_steps_in_range(spacing: str, fractions: list[float]) -> None:
    (out,) = run(ExtendIntermediateSigmas, sigmas=SIGMAS, steps=3, start_at_sigma=5.0, end_at_sigma=2.0,
                 spacing=spacing)
    expected = [10.0, 5.0, *(5.0 + f * (2.0 - 5.0) for f in fractions),
                2.0, *(2.0 + f * (1.0 - 2.0) for f in fractions), 1.0, 0.0]
    close(out, expected)
    (everywhere,) = run(ExtendIntermediateSigmas, sigmas=SIGMAS, steps=2, start_at_sigma=-1.0, end_at_sigma=0.0,
                        spacing="linear")
    close(everywhere, [10.0, 7.5, 5.0, 3.5, 2.0, 1.5, 1.0, 0.5, 0.0])
