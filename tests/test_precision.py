"""Per-part precision rules, swept over every device kind, VAE config and bf16 flag."""

from __future__ import annotations

import itertools

import pytest
import torch

import tiny_models as tm
from nodes.sd.loading.configs import template
from nodes.sd.precision import PartDtypes, choose_dtypes, force_upcast_from_config, parse_precision

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# (device, force_upcast, bf16_supported, prefer_bf16) -> (unet, text, vae) when every part is "auto".
AUTO_TABLE = {
    # CPU: fp32 for everything, whatever the VAE or the bf16 flags say.
    **{("cpu", fu, sup, pref): (F32, F32, F32)
       for fu, sup, pref in itertools.product((None, True, False), (False, True), (False, True))},
    # CUDA, VAE must upcast (or does not say): fp16 models, fp32 VAE.
    ("cuda", None, False, False): (F16, F16, F32),
    ("cuda", True, False, False): (F16, F16, F32),
    ("cuda", None, True, False): (F16, F16, F32),   # bf16 available but not preferred
    ("cuda", True, True, False): (F16, F16, F32),
    ("cuda", None, False, True): (F16, F16, F32),   # bf16 preferred but not available
    ("cuda", True, False, True): (F16, F16, F32),
    ("cuda", None, True, True): (BF16, BF16, F32),
    ("cuda", True, True, True): (BF16, BF16, F32),
    # CUDA, VAE config says force_upcast: false: the VAE goes half too.
    ("cuda", False, False, False): (F16, F16, F16),
    ("cuda", False, True, False): (F16, F16, F16),
    ("cuda", False, False, True): (F16, F16, F16),
    ("cuda", False, True, True): (BF16, BF16, BF16),
}


def test_the_auto_table_covers_every_case() -> None:
    assert len(AUTO_TABLE) == 2 * 3 * 2 * 2


@pytest.mark.parametrize(("case", "expected"), AUTO_TABLE.items(), ids=str)
def test_auto(case: tuple, expected: tuple[torch.dtype, ...]) -> None:
    device, force_upcast, bf16_supported, prefer_bf16 = case
    got = choose_dtypes(device, force_upcast=force_upcast, bf16_supported=bf16_supported, prefer_bf16=prefer_bf16)
    assert got == PartDtypes(*expected)


@pytest.mark.parametrize("device", ["cuda:1", "cuda"])
def test_any_cuda_index_is_cuda(device: str) -> None:
    assert choose_dtypes(device, force_upcast=False) == PartDtypes(F16, F16, F16)


def test_devices_other_than_cuda_stay_fp32() -> None:
    assert choose_dtypes("mps", force_upcast=False, bf16_supported=True, prefer_bf16=True) == PartDtypes(F32, F32, F32)


@pytest.mark.parametrize(("setting", "dtype"), [("fp32", F32), ("fp16", F16), ("bf16", BF16)])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("part", ["unet", "text", "vae"])
def test_explicit_settings_are_honoured_everywhere(part: str, device: str, setting: str, dtype: torch.dtype) -> None:
    for force_upcast, supported, prefer in itertools.product((None, True, False), (False, True), (False, True)):
        auto = choose_dtypes(device, force_upcast=force_upcast, bf16_supported=supported, prefer_bf16=prefer)
        got = choose_dtypes(device, **{part: setting}, force_upcast=force_upcast, bf16_supported=supported,
                            prefer_bf16=prefer)
        assert getattr(got, part) == dtype  # even fp16 on the CPU, or an upcasting VAE in fp16: the user's call
        others = {name for name in ("unet", "text", "vae") if name != part}
        assert all(getattr(got, name) == getattr(auto, name) for name in others)  # the others stay "auto"


@pytest.mark.parametrize(("name", "dtype"), [("fp32", F32), ("fp16", F16), ("bf16", BF16)])
def test_parse_precision(name: str, dtype: torch.dtype) -> None:
    assert parse_precision(name) is dtype


@pytest.mark.parametrize("name", ["auto", "float16", "FP16", "half", ""])
def test_parse_precision_names_the_bad_value(name: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown precision {name!r}; expected one of fp32, fp16, bf16"):
        parse_precision(name)


def test_bad_settings_and_devices_are_named() -> None:
    with pytest.raises(ValueError, match=r"vae precision 'half' is not one of auto, fp32, fp16, bf16"):
        choose_dtypes("cuda", vae="half")
    with pytest.raises(ValueError, match=r"unet precision 'FP16'"):
        choose_dtypes("cpu", unet="FP16")
    with pytest.raises(ValueError, match=r"device 'gpu0' is not a torch device"):
        choose_dtypes("gpu0")


def test_force_upcast_as_the_shipped_configs_and_diffusers_say_it() -> None:
    assert force_upcast_from_config(template("sdxl_vae.json")) is True
    assert force_upcast_from_config(template("sd15_vae.json")) is None  # not said: "auto" keeps fp32
    assert force_upcast_from_config(tm.tiny_vae(0).config) is True  # diffusers' AutoencoderKL default
    assert force_upcast_from_config({"force_upcast": False}) is False
    fixed = choose_dtypes("cuda", force_upcast=force_upcast_from_config({"force_upcast": False}))
    assert fixed.vae == F16
