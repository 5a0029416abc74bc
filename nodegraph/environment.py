"""The application's environment handed to nodes: folders, model paths, device, precision, the model manager."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .models import ModelManager
from .paths import list_files, safe_join

MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": (".safetensors", ".ckpt", ".pt", ".pth"),
    "vae": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"),
    "loras": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"),
    "controlnet": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"),
    "embeddings": (".safetensors", ".pt", ".pth", ".bin"),
    "upscale_models": (".safetensors", ".pt", ".pth"),
    "clip_vision": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"),
    "style_models": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"),
    "gligen": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"),
    "photomaker": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"),
    "configs": (".yaml", ".yml"),
    "diffusers": (),  # pipeline folders only: listed by their model_index.json
    "vae_approx": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"),
    "diffusion_models": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"),
    "text_encoders": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"),
    "clip_vision": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"),
    "hypernetworks": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"),
    "inception": (".safetensors", ".pt", ".pth"),  # FID's Inception-v3 (pytorch-fid's pt_inception-*.pth)
    "lpips": (".safetensors", ".pt", ".pth"),  # LPIPS networks (the lpips package's layout)
    "classifiers": (".safetensors",),  # noise-aware latent classifiers (classifier guidance; ours, not ComfyUI's)
}
"""ComfyUI's model folder names and the file types each lists."""

FOLDER_ALIASES: dict[str, str] = {"unet": "diffusion_models", "clip": "text_encoders"}
"""ComfyUI's legacy folder names: each lists (and resolves in) the same folders as the name it maps to."""
FOLDER_DIRS: dict[str, tuple[str, ...]] = {"diffusion_models": ("diffusion_models", "unet"),
                                           "text_encoders": ("text_encoders", "clip")}
"""Directory names under each models root that one folder reads, the current name first (ComfyUI's order)."""


def canonical_folder(folder: str) -> str:
    """The folder a (possibly legacy) folder name stands for: "unet" -> "diffusion_models", "clip" -> "text_encoders"."""
    return FOLDER_ALIASES.get(folder, folder)


class ModelNotFound(FileNotFoundError):
    pass


@dataclass
class ModelPaths:
    """Model folders: a models root with ComfyUI's folder names, extra roots (e.g. an existing ComfyUI
    `models/` tree), and built-in files that node packs ship (listed first)."""

    roots: list[Path] = field(default_factory=list)
    builtin: dict[str, dict[str, Path]] = field(default_factory=dict)

    def add_builtin(self, folder: str, name: str, path: Path) -> None:
        self.builtin.setdefault(canonical_folder(folder), {})[name] = Path(path)

    def folder_dirs(self, folder: str) -> list[Path]:
        folder = canonical_folder(folder)
        return [root / name for root in self.roots for name in FOLDER_DIRS.get(folder, (folder,))]

    def list(self, folder: str) -> list[str]:
        """Names in a model folder: built-ins first, then each root's files, without duplicates.

        Folders holding a `model_index.json` (diffusers-format models) are listed by their name too.
        """
        folder = canonical_folder(folder)
        extensions = MODEL_FOLDERS.get(folder)
        names = list(self.builtin.get(folder, {}))
        for directory in self.folder_dirs(folder):
            found = list_files(directory, extensions)
            found += sorted(p.parent.relative_to(directory).as_posix() for p in directory.glob("*/model_index.json"))
            names.extend(name for name in found if name not in names)
        return names

    def resolve(self, folder: str, name: str) -> Path:
        """The path of a listed model file; refuses names that escape the folder."""
        folder = canonical_folder(folder)
        if name in self.builtin.get(folder, {}):
            return self.builtin[folder][name]
        for directory in self.folder_dirs(folder):
            path = safe_join(directory, name)  # raises UnsafePath for names that escape
            if path.is_file() or (path / "model_index.json").is_file():
                return path
        available = ", ".join(self.list(folder)[:20]) or "none"
        raise ModelNotFound(f"{folder}/{name} not found (available: {available})")


@dataclass
class Environment:
    """Everything a node may need from the application besides its inputs."""

    output_dir: Path = Path("output")
    input_dir: Path = Path("input")
    temp_dir: Path = Path("temp")
    models: ModelPaths = field(default_factory=ModelPaths)
    device: str = "cpu"
    """"cuda" or "cpu"; nodes place models and tensors there."""
    precision: str = "auto"
    """Every model part's precision unless its own setting says otherwise: "auto", "fp32", "bf16", "fp16"."""
    unet_precision: str | None = None
    text_precision: str | None = None
    vae_precision: str | None = None
    prefer_bf16: bool = False
    """auto picks bf16 instead of fp16 for the UNet and text encoders where the device supports it."""
    compile: bool = False
    """Compile the UNet with torch.compile (once per shape, reused across prompts)."""
    preview_interval_s: float = 0.5
    """Least wall time between two step previews (the last step always gets one): a preview reads the latent
    back from the device, which waits for every queued kernel."""
    preview_method: str = "auto"
    """Step previews (ComfyUI's --preview-method): "auto" decodes with TAESD when its decoder for the model's
    family is in `vae_approx`, else projects the latent linearly ("latent2rgb"); "taesd" the same as auto;
    "none" sends progress only."""
    model_manager: ModelManager | None = None
    """The one owner of every loaded model; made for `device` when not given."""

    def __post_init__(self) -> None:
        if self.model_manager is None:
            self.model_manager = ModelManager(self.device)

    @property
    def manager(self) -> ModelManager:
        assert self.model_manager is not None
        return self.model_manager

    def part_precision(self, part: str) -> str:
        """The precision setting of one part ("unet", "text" or "vae"): its own, else `precision`."""
        own = {"unet": self.unet_precision, "text": self.text_precision, "vae": self.vae_precision}[part]
        return own or self.precision

    def input_path(self, name: str) -> Path:
        return safe_join(self.input_dir, name)


def pick_device(requested: str = "auto") -> str:
    """"auto" picks CUDA when torch sees a GPU."""
    if requested != "auto":
        return requested
    try:
        import torch
    except ImportError:  # the engine itself does not need torch
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"
