"""A standalone VAE's latent format from its metadata, else from how large its latents are."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

import tiny_models as tm
from nodes.sd.loading.configs import METADATA_KEY
from nodes.sd.loading.files import read_weights
from nodes.sd.loading.keymap import to_original, vae_rules
from nodes.sd.loading.vae_family import VaeFormat, detect_vae_latent_format, latent_std, probe_image

EMBEDDED = Path(__file__).resolve().parent.parent / "nodes/models/embedded/nodegraph-tiny-shapes.safetensors"


def scaled_vae(target_std: float, seed: int = 0) -> AutoencoderKL:
    """A tiny real-layout VAE whose posterior mean of the probe image has standard deviation `target_std`:
    the mean half of `quant_conv` (weights and bias) is scaled, as a VAE trained to larger latents would be."""
    vae = tm.tiny_vae(seed)
    factor = target_std / latent_std(vae)
    with torch.no_grad():
        channels = vae.config.latent_channels
        vae.quant_conv.weight[:channels] *= factor
        vae.quant_conv.bias[:channels] *= factor
    return vae


def ldm_tensors(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    return to_original(vae_rules(list(vae.state_dict()), vae.config), vae.state_dict())


def diffusers_tensors(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    return dict(vae.state_dict())


@pytest.fixture(scope="module")
def sd1_like() -> AutoencoderKL:
    return scaled_vae(1 / 0.18215, seed=0)


@pytest.fixture(scope="module")
def sdxl_like() -> AutoencoderKL:
    return scaled_vae(1 / 0.13025, seed=1)


def test_the_probe_image_is_fixed_and_in_range() -> None:
    image = probe_image()
    assert image.shape == (1, 3, 128, 128) and torch.equal(image, probe_image())
    assert image.min() >= -1 and image.max() <= 1 and 0.3 < float(image.std()) < 0.7


@pytest.mark.parametrize("layout", [ldm_tensors, diffusers_tensors])
def test_sd1_sized_latents_are_sd1(sd1_like: AutoencoderKL, layout) -> None:
    found = detect_vae_latent_format(layout(sd1_like), None)
    assert (found.family, found.scaling_factor, found.shift_factor, found.latent_channels) == ("sd1", 0.18215, 0.0, 4)
    assert found.how.startswith("latent statistics: std=5.490 ")


@pytest.mark.parametrize("layout", [ldm_tensors, diffusers_tensors])
def test_sdxl_sized_latents_are_sdxl(sdxl_like: AutoencoderKL, layout) -> None:
    found = detect_vae_latent_format(layout(sdxl_like), {})
    assert (found.family, found.scaling_factor, found.shift_factor, found.latent_channels) == ("sdxl", 0.13025, 0.0, 4)
    assert found.how.startswith("latent statistics: std=7.678 ")


@pytest.mark.parametrize(("std", "family"), [(4.0, "sd1"), (6.4, "sd1"), (6.6, "sdxl"), (11.0, "sdxl")])
def test_the_nearer_family_in_log_space_wins(std: float, family: str) -> None:
    # the geometric midpoint of 5.49 and 7.68 is 6.49: a ratio test, not a difference
    assert detect_vae_latent_format(ldm_tensors(scaled_vae(std)), None).family == family


def test_a_built_module_is_measured_instead_of_building_another(sd1_like, sdxl_like: AutoencoderKL) -> None:
    given = copy.deepcopy(sd1_like).half()  # the caller's module (in its dtype) decides, not the tensors
    found = detect_vae_latent_format(ldm_tensors(sdxl_like), None, vae=given)
    assert found.family == "sd1" and found.how.startswith("latent statistics: std=5.4")


def test_a_half_precision_overflow_is_measured_in_fp32() -> None:
    vae = tm.tiny_vae(0)
    with torch.no_grad():
        vae.encoder.conv_in.weight.mul_(5e4)  # fp16 activations overflow; the weights themselves still fit
    half = copy.deepcopy(vae).half()
    with torch.no_grad():
        assert not torch.isfinite(half.encode(probe_image().half()).latent_dist.mean).all()
    assert latent_std(half) == latent_std(copy.deepcopy(half).float())


def test_our_metadata_wins_over_statistics(sdxl_like: AutoencoderKL) -> None:
    config = {"family": "sd1", "vae": {"scaling_factor": 0.2, "shift_factor": 0.1}}
    found = detect_vae_latent_format(ldm_tensors(sdxl_like), {METADATA_KEY: json.dumps(config)})
    assert found == VaeFormat("sd1", 0.2, 0.1, 4, "metadata: nodegraph_config vae.scaling_factor")
    found = detect_vae_latent_format(ldm_tensors(sdxl_like), {METADATA_KEY: json.dumps({"family": "sd2"})})
    assert found == VaeFormat("sd2", 0.18215, 0.0, 4, "metadata: nodegraph_config family")


@pytest.mark.parametrize(("architecture", "family", "scale"), [
    ("stable-diffusion-v1", "sd1", 0.18215),
    ("stable-diffusion-v2-768-v", "sd2", 0.18215),
    ("stable-diffusion-xl-v1-base", "sdxl", 0.13025),
    ("stable-diffusion-xl-v1-refiner/vae", "sdxl", 0.13025),
])
def test_modelspec_architecture_wins_over_statistics(
    sd1_like: AutoencoderKL, architecture: str, family: str, scale: float
) -> None:
    found = detect_vae_latent_format(ldm_tensors(sd1_like), {"modelspec.architecture": architecture})
    assert found == VaeFormat(family, scale, 0.0, 4, f"metadata: modelspec.architecture {architecture!r}")


def test_unknown_architecture_falls_back_to_statistics(sdxl_like: AutoencoderKL) -> None:
    found = detect_vae_latent_format(ldm_tensors(sdxl_like), {"modelspec.architecture": "my-own-model"})
    assert found.family == "sdxl" and found.how.startswith("latent statistics")


def test_a_bad_family_in_our_metadata_is_named(sd1_like: AutoencoderKL) -> None:
    with pytest.raises(ValueError, match=r"nodegraph_config family 'flux' is not one of sd1, sd2, sdxl"):
        detect_vae_latent_format(ldm_tensors(sd1_like), {METADATA_KEY: json.dumps({"family": "flux"})})


@pytest.mark.parametrize("layout", [ldm_tensors, diffusers_tensors])
def test_sixteen_latent_channels_are_refused_by_name(layout) -> None:
    flux_like = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                              up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=16, norm_num_groups=32,
                              use_quant_conv=False, use_post_quant_conv=False)
    metadata = {"modelspec.architecture": "stable-diffusion-xl-v1-base"}  # channels are checked before metadata
    with pytest.raises(ValueError, match=r"VAE has 16 latent channels, SD1/SD2/SDXL VAEs have 4: 16-channel VAEs "
                                         r"belong to SD3 \(scaling 1\.5305, shift 0\.0609\) and Flux"):
        detect_vae_latent_format(layout(flux_like), metadata)


def test_other_channel_counts_and_non_vaes_are_refused() -> None:
    with pytest.raises(ValueError, match="VAE has 8 latent channels.*another model family"):
        detect_vae_latent_format({"decoder.conv_in.weight": torch.zeros(32, 8, 3, 3)}, None)
    with pytest.raises(ValueError, match="none of encoder.conv_out, .* found; not a VAE"):
        detect_vae_latent_format({"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3)}, None)


def test_the_embedded_model_vae() -> None:
    tensors, metadata = read_weights(EMBEDDED)
    prefix = "first_stage_model."
    vae_part = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    assert detect_vae_latent_format(vae_part, metadata) == VaeFormat(
        "sd1", 0.18215, 0.0, 4, "metadata: nodegraph_config vae.scaling_factor")
    # its card: per-channel statistics were folded into quant_conv so its latents fit SD1's 0.18215;
    # without the metadata its weights alone say so too
    measured = detect_vae_latent_format(vae_part, None)
    assert measured.family == "sd1" and measured.scaling_factor == 0.18215
