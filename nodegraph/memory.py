"""Memory of the machine and of models, for the model manager: how much there is, how much a model holds,
moving models between devices, streaming their blocks, and giving freed memory back to the OS.

Nothing here imports torch: it is used only if a node pack already imported it.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import os
import sys
from pathlib import Path
from typing import Any


def host_memory() -> tuple[int, int]:
    """(total, available) RAM in bytes (Linux' MemAvailable; sysconf elsewhere)."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        return int(fields["MemTotal"].split()[0]) * 1024, int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page


def device_memory(device: str) -> tuple[int, int] | None:
    """(total, free) bytes of a CUDA device, or None for the CPU (or when torch was never imported)."""
    torch = sys.modules.get("torch")
    if torch is None or not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return int(total), int(free)


def model_nbytes(value: Any) -> int:
    """Bytes a model holds: torch parameters and buffers counted once each, else its `nbytes` attribute."""
    parameters = getattr(value, "parameters", None)
    if callable(parameters):
        seen: set[int] = set()
        total = 0
        buffers = value.buffers() if callable(getattr(value, "buffers", None)) else ()
        for tensor in itertools.chain(parameters(), buffers):
            if tensor.data_ptr() in seen or tensor.device.type == "meta":
                continue
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
        return total
    nbytes = getattr(value, "nbytes", None)
    return int(nbytes) if isinstance(nbytes, int) else 0


def release_memory() -> None:
    """Give freed memory back: collect garbage, empty CUDA's caching allocator, and trim glibc's heap so the
    process' RSS really falls (freed large tensors otherwise stay mapped in malloc's arenas)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def return_large_frees_to_the_os(threshold: int = 1 << 20) -> None:
    """Serve every allocation of `threshold` bytes or more with its own mmap (glibc's M_MMAP_THRESHOLD).

    glibc otherwise raises that threshold up to 32 MiB as large blocks are freed, after which tensors of a
    few MiB come from the heap, where one live block pins everything below it: memory freed by unloading a
    model then never leaves the process. An application-wide policy, so applications call it (the CLI and
    server do at start); a library import never does.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD
        except (OSError, AttributeError):
            pass


def move(value: Any, device: str) -> Any:
    to = getattr(value, "to", None)
    return to(device) if callable(to) else value


def stream_blocks(module: Any, device: str) -> None:
    """lowvram: weights stay in CPU RAM; each submodule that owns weights (or buffers) is moved to `device`
    just before it runs and back right after (what accelerate's sequential CPU offload does), so only one
    block's weights occupy the device at a time."""
    modules = getattr(module, "modules", None)
    if not callable(modules):
        return
    for sub in modules():
        if not any(True for _ in itertools.chain(sub.parameters(recurse=False), sub.buffers(recurse=False))):
            continue  # buffers too: CLIP's position_ids must sit beside the input it indexes

        def before(mod: Any, args: Any) -> None:
            mod.to(device)

        def after(mod: Any, args: Any, output: Any) -> None:
            mod.to("cpu")

        sub.register_forward_pre_hook(before)
        sub.register_forward_hook(after)
