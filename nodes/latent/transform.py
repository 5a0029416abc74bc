"""Latent compositing and geometry: paste one latent into another (feathered or masked), blend, rotate, flip,
crop. Positions are image pixels; latents move in steps of 8."""

from __future__ import annotations

from dataclasses import replace

import torch

from nodegraph import Boolean, Combo, Float, Int, Node, NodeContext, NodeSchema, Out, Socket

from ..sd.latent_ops import composite_feathered, composite_masked, crop
from ..sd.imageops import resize
from ..sd.types import Latent

MAX_RESOLUTION = 16384
ROTATIONS = ("none", "90 degrees", "180 degrees", "270 degrees")
FLIPS = ("x-axis: vertically", "y-axis: horizontally")


class LatentComposite(Node):
    schema = NodeSchema(
        type_id="LatentComposite", display_name="Latent Composite", category="latent",
        description="Pastes samples_from into samples_to at (x, y), fading its inner edges over feather pixels.",
        inputs=(Socket("samples_to", "LATENT"), Socket("samples_from", "LATENT"),
                Int("x", 0, min=0, max=MAX_RESOLUTION, step=8), Int("y", 0, min=0, max=MAX_RESOLUTION, step=8),
                Int("feather", 0, min=0, max=MAX_RESOLUTION, step=8)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples_to: Latent, samples_from: Latent, x: int, y: int,
                feather: int) -> tuple[Latent]:
        out = composite_feathered(samples_to.samples, samples_from.samples, x, y, feather)
        return (replace(samples_to, samples=out),)


class LatentCompositeMasked(Node):
    schema = NodeSchema(
        type_id="LatentCompositeMasked", display_name="LatentCompositeMasked", category="latent",
        description="Pastes source into destination at (x, y), blended by the mask (1 = source).",
        inputs=(Socket("destination", "LATENT"), Socket("source", "LATENT"),
                Int("x", 0, min=0, max=MAX_RESOLUTION, step=8), Int("y", 0, min=0, max=MAX_RESOLUTION, step=8),
                Boolean("resize_source", False), Socket("mask", "MASK", optional=True)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, destination: Latent, source: Latent, x: int, y: int, resize_source: bool,
                mask: torch.Tensor | None = None) -> tuple[Latent]:
        out = composite_masked(destination.samples, source.samples, x, y, mask, resize_source=resize_source)
        return (replace(destination, samples=out),)


class LatentBlend(Node):
    schema = NodeSchema(
        type_id="LatentBlend", display_name="Latent Blend", category="_for_testing",
        description="samples1 * blend_factor + samples2 * (1 - blend_factor); samples2 is resized to fit.",
        inputs=(Socket("samples1", "LATENT"), Socket("samples2", "LATENT"),
                Float("blend_factor", 0.5, min=0, max=1, step=0.01)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples1: Latent, samples2: Latent, blend_factor: float) -> tuple[Latent]:
        first, second = samples1.samples, samples2.samples
        if first.shape != second.shape:
            second = resize(second, first.shape[-1], first.shape[-2], "bicubic", "center")
        return (replace(samples1, samples=first * blend_factor + second * (1 - blend_factor)),)


class LatentRotate(Node):
    schema = NodeSchema(
        type_id="LatentRotate", display_name="Rotate Latent", category="latent/transform",
        inputs=(Socket("samples", "LATENT"), Combo("rotation", ROTATIONS)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples: Latent, rotation: str) -> tuple[Latent]:
        if rotation not in ROTATIONS:
            raise ValueError(f"LatentRotate: rotation {rotation!r} is not one of {ROTATIONS}")
        turns = ROTATIONS.index(rotation)  # clockwise quarter turns
        return (replace(samples, samples=torch.rot90(samples.samples, k=turns, dims=(3, 2))),)


class LatentFlip(Node):
    schema = NodeSchema(
        type_id="LatentFlip", display_name="Flip Latent", category="latent/transform",
        inputs=(Socket("samples", "LATENT"), Combo("flip_method", FLIPS)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples: Latent, flip_method: str) -> tuple[Latent]:
        if flip_method not in FLIPS:
            raise ValueError(f"LatentFlip: flip_method {flip_method!r} is not one of {FLIPS}")
        axis = 2 if flip_method.startswith("x") else 3
        return (replace(samples, samples=torch.flip(samples.samples, dims=(axis,))),)


class LatentCrop(Node):
    schema = NodeSchema(
        type_id="LatentCrop", display_name="Crop Latent", category="latent/transform",
        inputs=(Socket("samples", "LATENT"),
                Int("width", 512, min=64, max=MAX_RESOLUTION, step=8),
                Int("height", 512, min=64, max=MAX_RESOLUTION, step=8),
                Int("x", 0, min=0, max=MAX_RESOLUTION, step=8), Int("y", 0, min=0, max=MAX_RESOLUTION, step=8)),
        outputs=(Out("LATENT"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, samples: Latent, width: int, height: int, x: int, y: int) -> tuple[Latent]:
        return (replace(samples, samples=crop(samples.samples, width, height, x, y)),)


NODES = (LatentComposite, LatentCompositeMasked, LatentBlend, LatentRotate, LatentFlip, LatentCrop)
