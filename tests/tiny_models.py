"""Tiny random SD1 / SD2 / SDXL models written in the real checkpoint layouts, for loader and text tests.

Every parameter (norms included) gets a seeded random value, so a swapped or mis-mapped key changes the
outputs and a round trip through a file can be compared exactly. Channel counts are multiples of 32
(GroupNorm 32); the VAE has four levels so it downsamples by 8 like SD's; the text encoders keep CLIP's
full 49,408-token vocabulary so the real tokenizer can feed them.

Builders are deterministic: `sd1_modules(seed)` rebuilds exactly the modules `make_sd1_checkpoint(tmp_path,
seed=seed)` wrote, so tests compare a loaded file with its source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from nodes.sd.loading.configs import METADATA_KEY
from nodes.sd.loading.export import export_config, ldm_state_dict
from nodes.sd.types import Family, Prediction


@dataclass
class TinyModules:
    """The source modules a tiny checkpoint was written from, for comparing what the loader returns."""

    family: Family
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    encoders: list[torch.nn.Module]
    prediction: Prediction = "epsilon"
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    """Keys real checkpoints carry that the loader must ignore (schedule buffers, EMA, OpenCLIP leftovers)."""


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random values for every parameter: weights ~ N(0, 1/fan_in), 1-D tensors ~ 1 + N(0, 0.1) or N(0, 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.dim() >= 2:
                param.copy_(noise / param[0].numel() ** 0.5)
            elif name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)
    return module.eval().requires_grad_(False)


def tiny_vae(seed: int = 0, scaling_factor: float = 0.18215) -> AutoencoderKL:
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=scaling_factor,
    )
    return randomize(vae, seed)


def tiny_text_encoder(
    seed: int, *, hidden: int, heads: int, open_clip: bool, projection_dim: int | None = None
) -> torch.nn.Module:
    """A 2-layer CLIP text encoder; OpenCLIP towers use GELU, OpenAI's QuickGELU."""
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act="gelu" if open_clip else "quick_gelu",
        projection_dim=projection_dim or hidden,
        bos_token_id=49406,
        eos_token_id=49407,
    )
    cls = CLIPTextModelWithProjection if projection_dim else CLIPTextModel
    return randomize(cls(config), seed)


def _unet(seed: int, **config: Any) -> UNet2DConditionModel:
    defaults: dict[str, Any] = {"sample_size": 8, "block_out_channels": (32, 64), "layers_per_block": 1, "norm_num_groups": 32}
    return randomize(UNet2DConditionModel(**{**defaults, **config}), seed)


def sd1_modules(seed: int = 0, *, text_hidden: int = 32) -> TinyModules:
    """SD1: conv attention projections, 8 UNet heads (SD1's rule: no metadata needed), CLIP-L layout."""
    unet = _unet(
        seed,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_hidden,
        attention_head_dim=8,
    )
    # 64-wide heads (CLIP's rule) when the width allows, so such a model needs no metadata at all.
    heads = text_hidden // 64 if text_hidden % 64 == 0 else 2
    encoder = tiny_text_encoder(seed + 1, hidden=text_hidden, heads=heads, open_clip=False)
    extra = {
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
        "alphas_cumprod": torch.linspace(0.99, 0.01, 1000),
        "model_ema.decay": torch.tensor(0.9999),
    }
    return TinyModules("sd1", unet, tiny_vae(seed + 2), [encoder], extra_tensors=extra)


def sd2_modules(seed: int = 0, *, v_prediction: bool = True) -> TinyModules:
    """SD2: linear projections, 2/4 heads (metadata needed), OpenCLIP layout with its unused projection."""
    unet = _unet(
        seed,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
    )
    encoder = tiny_text_encoder(seed + 1, hidden=32, heads=2, open_clip=True)
    generator = torch.Generator().manual_seed(seed + 3)
    extra = {
        "cond_stage_model.model.text_projection": torch.randn(32, 32, generator=generator),
        "cond_stage_model.model.logit_scale": torch.tensor(4.6),
    }
    prediction: Prediction = "v_prediction" if v_prediction else "epsilon"
    return TinyModules("sd2", unet, tiny_vae(seed + 2), [encoder], prediction, extra)


def sdxl_modules(seed: int = 0) -> TinyModules:
    """SDXL: CLIP-L (32) + OpenCLIP-bigG (64, projected) -> cross-attention 96, text_time added embedding."""
    unet = _unet(
        seed,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=96,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=64 + 6 * 8,
    )
    clip_l = tiny_text_encoder(seed + 1, hidden=32, heads=2, open_clip=False)
    clip_g = tiny_text_encoder(seed + 3, hidden=64, heads=4, open_clip=True, projection_dim=64)
    extra = {"conditioner.embedders.1.model.logit_scale": torch.tensor(4.6)}
    return TinyModules("sdxl", unet, tiny_vae(seed + 2, scaling_factor=0.13025), [clip_l, clip_g], extra_tensors=extra)


def write_checkpoint(modules: TinyModules, path: Path, *, with_metadata: bool = True) -> Path:
    """Write `modules` as one original-layout `.safetensors` file (with extra real-world keys)."""
    tensors = ldm_state_dict(modules.family, modules.unet, modules.vae, modules.encoders)
    tensors.update(modules.extra_tensors)
    metadata = None
    if with_metadata:
        config = export_config(modules.family, modules.unet, modules.vae, modules.encoders, prediction=modules.prediction)
        metadata = {METADATA_KEY: json.dumps(config)}
    if modules.prediction == "v_prediction":
        tensors["v_pred"] = torch.zeros(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def make_sd1_checkpoint(tmp_path: Path, *, seed: int = 0) -> Path:
    return write_checkpoint(sd1_modules(seed), Path(tmp_path) / "tiny_sd1.safetensors")


def make_sd2_checkpoint(tmp_path: Path, *, seed: int = 0, v_prediction: bool = True) -> Path:
    return write_checkpoint(sd2_modules(seed, v_prediction=v_prediction), Path(tmp_path) / "tiny_sd2.safetensors")


def make_sdxl_checkpoint(tmp_path: Path, *, seed: int = 0) -> Path:
    return write_checkpoint(sdxl_modules(seed), Path(tmp_path) / "tiny_sdxl.safetensors")


def write_diffusers_folder(modules: TinyModules, root: Path) -> Path:
    """A diffusers pipeline folder (model_index.json, component folders, scheduler config), written offline."""
    root.mkdir(parents=True, exist_ok=True)
    modules.unet.save_pretrained(root / "unet")
    modules.vae.save_pretrained(root / "vae")
    names = ["text_encoder", "text_encoder_2"][: len(modules.encoders)]
    for name, encoder in zip(names, modules.encoders):
        encoder.save_pretrained(root / name)
    (root / "scheduler").mkdir(exist_ok=True)
    scheduler = {
        "_class_name": "EulerDiscreteScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": modules.prediction,
    }
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    pipeline = "StableDiffusionXLPipeline" if modules.family == "sdxl" else "StableDiffusionPipeline"
    index = {"_class_name": pipeline, "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    for name in names:
        index[name] = ["transformers", type(modules.encoders[names.index(name)]).__name__]
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def make_diffusers_folder(tmp_path: Path, *, family: Family = "sd1", seed: int = 0) -> Path:
    builder = {"sd1": sd1_modules, "sd2": sd2_modules, "sdxl": sdxl_modules}[family]
    return write_diffusers_folder(builder(seed), Path(tmp_path) / f"tiny_{family}_diffusers")


# -- tiny LoRA files (kohya and diffusers/PEFT layouts) ----------------------------------------------------

LORA_UNET_LINEAR = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                    "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
LORA_UNET_CONV = ("resnets.0.conv1", "resnets.0.conv2")
LORA_TEXT = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def tiny_lora_layers(
    module: torch.nn.Module, suffixes: tuple[str, ...], *, rank: int, seed: int, size: float = 0.3
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(up, down) per adapted module name: Linear -> [out, r] @ [r, in]; Conv2d -> 1x1 up over a k x k down."""
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for name, sub in module.named_modules():
        if not name.endswith(suffixes) or not isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        weight = sub.weight
        down_shape = (rank, *weight.shape[1:])
        up_shape = (weight.shape[0], rank) + ((1, 1) if weight.dim() == 4 else ())
        down = torch.randn(down_shape, generator=generator) / weight[0].numel() ** 0.5
        up = torch.randn(up_shape, generator=generator) * size / rank**0.5
        layers[name] = (up, down)
    return layers


def _text_layer_name(name: str) -> str:
    """Text encoder module names as LoRA files spell them: with transformers' `text_model.` level."""
    return name if name.startswith(("text_model.", "text_projection")) else f"text_model.{name}"


def write_kohya_lora(
    modules: TinyModules, path: Path, *, rank: int = 4, alpha: float = 2.0, seed: int = 0, ldm_names: bool = True,
    conv: bool = True, text: bool = True,
) -> Path:
    """A kohya-ss LoRA: `lora_unet_*` with LDM (`input_blocks_1_1_...`) or diffusers UNet names, `lora_te_*`
    (`lora_te1_`/`lora_te2_` for SDXL), `.lora_up/.lora_down.weight` and `.alpha`; conv LoRA on resnets."""
    from nodes.sd.loading.keymap import unet_rules

    suffixes = LORA_UNET_LINEAR + (LORA_UNET_CONV if conv else ())
    unet_layers = tiny_lora_layers(modules.unet, suffixes, rank=rank, seed=seed)
    ldm = {r.target.removesuffix(".weight"): r.source.removesuffix(".weight")
           for r in unet_rules(list(modules.unet.state_dict()), modules.unet.config)}
    named = {"lora_unet_" + (ldm[n] if ldm_names else n).replace(".", "_"): v for n, v in unet_layers.items()}
    if text:
        prefixes = ["lora_te1_", "lora_te2_"] if len(modules.encoders) == 2 else ["lora_te_"]
        for index, (prefix, encoder) in enumerate(zip(prefixes, modules.encoders)):
            for name, value in tiny_lora_layers(encoder, LORA_TEXT, rank=rank, seed=seed + 100 + index).items():
                named[prefix + _text_layer_name(name).replace(".", "_")] = value
    tensors = {}
    for name, (up, down) in named.items():
        tensors[f"{name}.lora_up.weight"], tensors[f"{name}.lora_down.weight"] = up, down
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora"})
    return path


def write_peft_lora(
    modules: TinyModules, path: Path, *, rank: int = 4, alpha: float | None = 8.0, seed: int = 0, conv: bool = True,
) -> Path:
    """A diffusers/PEFT LoRA as `save_lora_weights` writes it: `unet.*`, `text_encoder.*` (and `text_encoder_2.*`)
    with `.lora_A/.lora_B.weight`, each component's LoraConfig in the `lora_adapter_metadata` (None: no metadata,
    PEFT's alpha = rank)."""
    tensors: dict[str, torch.Tensor] = {}
    config: dict[str, Any] = {}
    suffixes = LORA_UNET_LINEAR + (LORA_UNET_CONV if conv else ())
    parts = [("unet", modules.unet, suffixes, seed, lambda n: n)]
    for index, encoder in enumerate(modules.encoders):
        parts.append(("text_encoder" + ("_2" if index else ""), encoder, LORA_TEXT, seed + 100 + index, _text_layer_name))
    for prefix, module, wanted, part_seed, rename in parts:
        layers = tiny_lora_layers(module, wanted, rank=rank, seed=part_seed)
        for name, (up, down) in layers.items():
            tensors[f"{prefix}.{rename(name)}.lora_A.weight"] = down
            tensors[f"{prefix}.{rename(name)}.lora_B.weight"] = up
        config.update({f"{prefix}.r": rank, f"{prefix}.lora_alpha": alpha, f"{prefix}.target_modules": sorted(layers)})
    metadata = {"format": "pt"}
    if alpha is not None:
        metadata["lora_adapter_metadata"] = json.dumps(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


# -- tiny ControlNets (original and diffusers layouts) -------------------------------------------------------


def tiny_controlnet(modules: TinyModules, seed: int = 0, residual_size: float = 0.3) -> torch.nn.Module:
    """A ControlNet shaped for `modules.unet` (its encoder copied, then all random); the zero convolutions get
    small random weights (`residual_size` of the usual scale) so the control visibly steers without swamping."""
    from diffusers import ControlNetModel

    controlnet = randomize(ControlNetModel.from_unet(modules.unet, conditioning_embedding_out_channels=(16, 16, 32, 32)), seed)
    with torch.no_grad():
        for name, param in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                param.mul_(residual_size)
    return controlnet


def write_controlnet_ldm(
    controlnet: torch.nn.Module, path: Path, *, prefix: str = "control_model.", with_metadata: bool = False
) -> Path:
    """The original ControlNet layout through the package's exporter; `with_metadata` records what shapes
    cannot tell (heads, SDXL's time-id width) as our exporter does by default."""
    from nodes.sd.loading.export import save_controlnet_ldm

    return save_controlnet_ldm(controlnet, path, prefix=prefix, record_config=with_metadata)


def write_controlnet_diffusers_file(controlnet: torch.nn.Module, path: Path) -> Path:
    """diffusers' ControlNetModel keys in one file, without its config.json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.detach().cpu().contiguous() for key, value in controlnet.state_dict().items()}, str(path))
    return path


SD_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon",
                   steps_offset=1)
"""SD's training schedule for diffusers' reference schedulers (steps_offset is only read by "leading" spacing)."""


def engine_at(root: Path, *, models_dir: Path | None = None, input_dir: Path | None = None, registry: Any = None):
    """An engine on the CPU whose output/input/temp folders live under `root` and models in `root/models`."""
    from nodegraph.app import AppConfig, build_engine

    config = AppConfig(output_dir=root / "output", input_dir=input_dir or root / "input", temp_dir=root / "temp",
                       models_dir=models_dir or root / "models", device="cpu")
    return build_engine(config, registry)
