"""Building an engine for an application (CLI, server): registry from entry points, environment from options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .environment import Environment, ModelPaths, pick_device
from .executor import Engine
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


def build_environment(config: AppConfig, registry: NodeRegistry) -> Environment:
    for directory in (config.output_dir, config.input_dir, config.temp_dir):
        directory.mkdir(parents=True, exist_ok=True)
    env = Environment(
        output_dir=config.output_dir.resolve(), input_dir=config.input_dir.resolve(),
        temp_dir=config.temp_dir.resolve(),
        models=ModelPaths(roots=[config.models_dir.resolve(), *(p.resolve() for p in config.extra_model_dirs)]),
        device=pick_device(config.device), precision=config.precision,
    )
    return registry.setup_environment(env)


def build_engine(config: AppConfig, registry: NodeRegistry | None = None) -> Engine:
    registry = registry if registry is not None else default_registry()
    return Engine(registry, env=build_environment(config, registry))
