"""Building an engine for an application (CLI, server): registry from entry points, environment from options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .environment import Environment, ModelPaths, pick_device
from .executor import Engine
from .models import ModelManager, return_large_frees_to_the_os
from .registry import NodeRegistry, default_registry


@dataclass
class AppConfig:
    output_dir: Path = Path("output")
    input_dir: Path = Path("input")
    temp_dir: Path = Path("temp")
    models_dir: Path = Path("models")
    extra_model_dirs: list[Path] = field(default_factory=list)
    """More model roots with ComfyUI's folder names, e.g. an existing ComfyUI `models/` tree."""
    device: str = "auto"
    precision: str = "auto"
    """Every part's precision unless its own option is given."""
    unet_precision: str | None = None
    text_precision: str | None = None
    vae_precision: str | None = None
    prefer_bf16: bool = False
    vram_mode: str = "normalvram"
    """ComfyUI's memory modes: highvram, normalvram, lowvram, cpu (cpu also computes on the CPU)."""
    reserve_vram_gb: float | None = None
    ram_budget_gb: float | None = None
    compile: bool = False
    preview_method: str = "auto"
    """Step previews, as ComfyUI's --preview-method: auto (TAESD where installed, else latent2rgb), taesd,
    latent2rgb, none."""


def build_model_manager(config: AppConfig, device: str) -> ModelManager:
    gib = 1024**3
    return ModelManager(
        device, mode=config.vram_mode,
        reserve_vram=None if config.reserve_vram_gb is None else int(config.reserve_vram_gb * gib),
        ram_budget=None if config.ram_budget_gb is None else int(config.ram_budget_gb * gib),
    )


def build_environment(config: AppConfig, registry: NodeRegistry) -> Environment:
    for directory in (config.output_dir, config.input_dir, config.temp_dir):
        directory.mkdir(parents=True, exist_ok=True)
    device = "cpu" if config.vram_mode == "cpu" else pick_device(config.device)
    env = Environment(
        output_dir=config.output_dir.resolve(), input_dir=config.input_dir.resolve(),
        temp_dir=config.temp_dir.resolve(),
        models=ModelPaths(roots=[config.models_dir.resolve(), *(p.resolve() for p in config.extra_model_dirs)]),
        device=device, precision=config.precision, unet_precision=config.unet_precision,
        text_precision=config.text_precision, vae_precision=config.vae_precision, prefer_bf16=config.prefer_bf16,
        compile=config.compile, preview_method=config.preview_method, model_manager=build_model_manager(config, device),
    )
    return registry.setup_environment(env)


def build_engine(config: AppConfig, registry: NodeRegistry | None = None) -> Engine:
    return_large_frees_to_the_os()
    registry = registry if registry is not None else default_registry()
    return Engine(registry, env=build_environment(config, registry))
