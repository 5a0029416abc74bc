"""Block patches on a diffusers UNet2DConditionModel with ComfyUI's block numbering ("unet_block" patches).

ComfyUI's UNet has `input_blocks` 0..N-1 (0 is conv_in; then per level its layers and its downsampler) whose
outputs are pushed as skips, and `output_blocks` 0..N-1 that each pop one skip, concatenate it to the hidden
state and run (ResBlock, attention, upsampler). Its model patches hook in at:
- input_block_patch(h, info): a block's output before it is pushed as skip (both copies change);
- input_block_patch_after_skip(h, info): after it is pushed (the skip keeps the original);
- output_block_patch(h, hsp, info): the hidden state and the skip just before they are concatenated.
diffusers has the same blocks under other names (down_blocks[i].resnets/attentions/downsamplers, up_blocks[i]
.resnets/attentions, the concatenation inside each up block), so this module maps ComfyUI's numbers to
diffusers' modules and installs forward hooks for one UNet call (`BlockHooks`), removed right after: the shared,
cached UNet never keeps one. An output patch is split in two (`OutputPatch`): what it does to the skip, which may
depend on the hidden state's channel count only (known from the config), runs in the up block's forward
pre-hook; what it does to the hidden state runs where that hidden state is produced (the up block's input or
the previous layer's output). All of ComfyUI's SD patches (FreeU, FreeU_V2, PatchModelAddDownscale) fit that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from nodes.sd.denoisers import UNetCall, UNetDenoiser
from nodes.sd.types import ModelPatch


@dataclass(frozen=True)
class BlockInfo:
    """Where a block patch is called: ComfyUI's ("input" | "output", block number) and the rows' sigmas."""

    kind: str
    number: int
    sigma: Tensor | None
    model_channels: int


@dataclass(frozen=True)
class OutputPatch:
    """ComfyUI's output_block_patch(h, hsp) as two parts: `skip(hsp, h_channels, info)` and `hidden(h, hsp, info)`."""

    skip: Callable[[Tensor, int, BlockInfo], Tensor] | None = None
    hidden: Callable[[Tensor, Tensor, BlockInfo], Tensor] | None = None


@dataclass
class BlockPatches:
    """One run's block patches, in the order they were applied (ComfyUI calls each list in order)."""

    input: list[Callable[[Tensor, BlockInfo], Tensor]] = field(default_factory=list)
    input_after_skip: list[Callable[[Tensor, BlockInfo], Tensor]] = field(default_factory=list)
    output: list[OutputPatch] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.input or self.input_after_skip or self.output)


def _layer_output_module(block: torch.nn.Module, layer: int) -> torch.nn.Module:
    attentions = getattr(block, "attentions", None)
    return attentions[layer] if attentions is not None and len(attentions) > layer else block.resnets[layer]


def input_producers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The module whose output is ComfyUI's input block n, for n = 0, 1, ... (conv_in, layers, downsamplers)."""
    modules = [unet.conv_in]
    for block in unet.down_blocks:
        modules += [_layer_output_module(block, j) for j in range(len(block.resnets))]
        if getattr(block, "downsamplers", None):
            modules.append(block.downsamplers[0])
    return modules


def up_layers(unet: torch.nn.Module) -> list[tuple[int, int, int]]:
    """(up block i, layer j, channels of the hidden state entering it) for ComfyUI's output blocks 0, 1, ...

    From diffusers' construction: layer 0 of up block i receives the previous block's output channels (block 0:
    the deepest level's), later layers the block's own."""
    reversed_channels = list(reversed(unet.config.block_out_channels))
    layers, output_channels = [], reversed_channels[0]
    for i, block in enumerate(unet.up_blocks):
        previous, output_channels = output_channels, reversed_channels[i]
        layers += [(i, j, previous if j == 0 else output_channels) for j in range(len(block.resnets))]
    return layers


@dataclass
class _UpState:
    skips: list[Tensor] = field(default_factory=list)
    """Per layer of the up block: the skip after each output patch's skip part (stage k = before patch k)."""


class BlockHooks:
    """Installs `patches` on `unet` for one call (see the module docstring); `remove()` takes every hook off."""

    def __init__(self, unet: torch.nn.Module, patches: BlockPatches, sigma: Tensor | None) -> None:
        self.patches, self.sigma = patches, sigma
        self.model_channels = int(unet.config.block_out_channels[0])
        self.handles: list[Any] = []
        self.original_skips: dict[int, tuple[Tensor, Tensor]] = {}
        """Input block number -> (its output as pushed, what the chain continued with) for after-skip patches."""
        producers = input_producers(unet)
        for number, module in enumerate(producers):
            if patches.input or patches.input_after_skip:
                self.handles.append(module.register_forward_hook(self._input_hook(number)))
        if not patches.output and not patches.input_after_skip:
            return
        layers = up_layers(unet)
        total = len(layers)
        by_block: dict[int, list[tuple[int, int, int]]] = {}
        for number, (i, j, channels) in enumerate(layers):
            by_block.setdefault(i, []).append((number, j, channels))
        for i, block in enumerate(unet.up_blocks):
            state = _UpState()
            entries = by_block[i]
            pre_hook = self._up_pre_hook(state, entries, total)
            self.handles.append(block.register_forward_pre_hook(pre_hook, with_kwargs=True))
            for number, j, _ in entries[1:]:
                producer = _layer_output_module(block, j - 1)
                self.handles.append(producer.register_forward_hook(self._hidden_hook(state, number, j)))

    def info(self, kind: str, number: int) -> BlockInfo:
        return BlockInfo(kind, number, self.sigma, self.model_channels)

    def _input_hook(self, number: int) -> Callable[..., Any]:
        def hook(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
            h = output[0] if isinstance(output, tuple) else output
            info = self.info("input", number)
            for patch in self.patches.input:
                h = patch(h, info)
            if self.patches.input_after_skip:
                pushed = h
                for patch in self.patches.input_after_skip:
                    h = patch(h, info)
                if h is not pushed:
                    self.original_skips[number] = (pushed, h)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return hook

    def _skip_for(self, received: Tensor, skip_number: int) -> Tensor:
        """The skip ComfyUI's after-skip patches leave: the block's output as pushed, plus whatever was added to
        the skip since (ControlNet residuals) when the shapes allow."""
        original = self.original_skips.get(skip_number)
        if original is None:
            return received
        pushed, continued = original
        return pushed + (received - continued) if received.shape == pushed.shape else pushed

    def _apply_hidden(self, state: _UpState, number: int, j: int, h: Tensor) -> Tensor:
        info = self.info("output", number)
        for k, patch in enumerate(self.patches.output):
            if patch.hidden is not None:
                h = patch.hidden(h, state.skips[j][k], info)
        return h

    def _up_pre_hook(self, state: _UpState, entries: list[tuple[int, int, int]], total: int) -> Callable[..., Any]:
        def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            skips = list(kwargs["res_hidden_states_tuple"])
            state.skips = []
            new_skips = list(skips)
            for number, j, channels in entries:
                position = len(skips) - 1 - j  # layer j pops the tuple from its end
                skip = self._skip_for(skips[position], total - 1 - number)
                stages, info = [skip], self.info("output", number)
                for patch in self.patches.output:
                    if patch.skip is not None:
                        skip = patch.skip(skip, channels, info)
                    stages.append(skip)
                state.skips.append(stages)
                new_skips[position] = skip
            kwargs = dict(kwargs, res_hidden_states_tuple=tuple(new_skips))
            kwargs["hidden_states"] = self._apply_hidden(state, entries[0][0], 0, kwargs["hidden_states"])
            return args, kwargs

        return hook

    def _hidden_hook(self, state: _UpState, number: int, j: int) -> Callable[..., Any]:
        def hook(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (self._apply_hidden(state, number, j, output[0]), *output[1:])
            return self._apply_hidden(state, number, j, output)

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _run_patches(unet_denoiser: UNetDenoiser) -> BlockPatches:
    """This run's BlockPatches, created (with the UNet wrapper that installs them per call) on first use."""
    existing = getattr(unet_denoiser, "_block_patches", None)
    if existing is not None:
        return existing
    patches = BlockPatches()

    def wrapper(call: UNetCall, sample: Tensor, timestep: Tensor, kwargs: dict[str, Any]) -> Tensor:
        if not patches:
            return call(sample, timestep, kwargs)
        hooks = BlockHooks(unet_denoiser.unet, patches, unet_denoiser.current_sigma)
        try:
            return call(sample, timestep, kwargs)
        finally:
            hooks.remove()

    unet_denoiser.wrappers.append(wrapper)
    unet_denoiser._block_wrapper = wrapper  # type: ignore[attr-defined]
    unet_denoiser._block_patches = patches  # type: ignore[attr-defined]  # lives as long as this run's denoiser
    return patches


def block_patch(name: str, options: dict[str, Any], *, input: Callable[[Tensor, BlockInfo], Tensor] | None = None,
                input_after_skip: Callable[[Tensor, BlockInfo], Tensor] | None = None,
                output: OutputPatch | None = None) -> ModelPatch:
    """A "unet_block" ModelPatch adding these block patches to the run (removed again when it ends)."""

    def apply(unet_denoiser: UNetDenoiser) -> Callable[[], None]:
        patches = _run_patches(unet_denoiser)
        added = [(lst, item) for lst, item in ((patches.input, input), (patches.input_after_skip, input_after_skip),
                                               (patches.output, output)) if item is not None]
        for lst, item in added:
            lst.append(item)  # type: ignore[arg-type]

        def undo() -> None:
            for lst, item in added:
                lst.remove(item)  # type: ignore[arg-type]
            if not patches:  # the last block patch of the run takes the wrapper with it
                unet_denoiser.wrappers.remove(unet_denoiser._block_wrapper)  # type: ignore[attr-defined]
                unet_denoiser._block_patches = None  # type: ignore[attr-defined]

        return undo

    return ModelPatch(kind="unet_block", name=name, apply=apply, options=options)
