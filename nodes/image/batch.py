"""Image nodes that make, combine and pick pictures: empty images, batches, inversion, noise, sizes."""

from __future__ import annotations

import torch

from nodegraph import Float, Int, Node, NodeContext, NodeSchema, Out, Socket

from .ops import geometry

MAX_RESOLUTION = 16384
MAX_SEED = 0xFFFFFFFFFFFFFFFF


class ImageInvert(Node):
    schema = NodeSchema(
        type_id="ImageInvert", display_name="Invert Image", category="image",
        description="1 - value in every channel.",
        inputs=(Socket("image", "IMAGE"),), outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor) -> tuple[torch.Tensor]:
        return (1.0 - image,)


class ImageBatch(Node):
    schema = NodeSchema(
        type_id="ImageBatch", display_name="Batch Images", category="image",
        description="image2 appended to image1's batch, resized to image1's size when they differ.",
        inputs=(Socket("image1", "IMAGE"), Socket("image2", "IMAGE")), outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor]:
        return (geometry.batch_pair(image1, image2),)


class EmptyImage(Node):
    schema = NodeSchema(
        type_id="EmptyImage", display_name="EmptyImage", category="image",
        description="A batch of pictures filled with one colour (0xRRGGBB).",
        inputs=(Int("width", 512, min=1, max=MAX_RESOLUTION, step=1), Int("height", 512, min=1, max=MAX_RESOLUTION,
                                                                         step=1),
                Int("batch_size", 1, min=1, max=4096), Int("color", 0, min=0, max=0xFFFFFF, step=1)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, width: int, height: int, batch_size: int, color: int) -> tuple[torch.Tensor]:
        return (geometry.solid_image(width, height, batch_size, color),)


class RepeatImageBatch(Node):
    schema = NodeSchema(
        type_id="RepeatImageBatch", display_name="RepeatImageBatch", category="image/batch",
        description="The whole batch repeated `amount` times.",
        inputs=(Socket("image", "IMAGE"), Int("amount", 1, min=1, max=4096)), outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, amount: int) -> tuple[torch.Tensor]:
        return (image.repeat((amount, 1, 1, 1)),)


class ImageFromBatch(Node):
    schema = NodeSchema(
        type_id="ImageFromBatch", display_name="ImageFromBatch", category="image/batch",
        description="`length` pictures from `batch_index`, both clipped to the batch.",
        inputs=(Socket("image", "IMAGE"), Int("batch_index", 0, min=0, max=4095), Int("length", 1, min=1, max=4096)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, batch_index: int, length: int) -> tuple[torch.Tensor]:
        start = min(image.shape[0] - 1, batch_index)
        length = min(image.shape[0] - start, length)
        return (image[start: start + length].clone(),)


class ImageAddNoise(Node):
    schema = NodeSchema(
        type_id="ImageAddNoise", display_name="ImageAddNoise", category="image",
        description="Adds seeded Gaussian noise times strength, clipped to 0..1.",
        inputs=(Socket("image", "IMAGE"),
                Int("seed", 0, min=0, max=MAX_SEED, control_after_generate=True,
                    tooltip="Seed of the noise: the same seed gives the same noise."),
                Float("strength", 0.5, min=0.0, max=1.0, step=0.01)),
        outputs=(Out("IMAGE"),),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor, seed: int, strength: float) -> tuple[torch.Tensor]:
        # A private CPU generator seeded like ComfyUI's torch.manual_seed(seed): the same noise, without touching
        # the process-wide random state.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(image.size(), generator=generator, device="cpu").to(image)
        return (torch.clip(image + strength * noise, 0.0, 1.0),)


class GetImageSize(Node):
    schema = NodeSchema(
        type_id="GetImageSize", display_name="Get Image Size", category="image",
        description="The picture's width and height in pixels and the number of pictures in the batch.",
        inputs=(Socket("image", "IMAGE"),),
        outputs=(Out("INT", "width"), Out("INT", "height"), Out("INT", "batch_size")),
    )

    @classmethod
    def execute(cls, ctx: NodeContext, image: torch.Tensor) -> tuple[int, int, int]:
        return int(image.shape[2]), int(image.shape[1]), int(image.shape[0])


NODES = (ImageInvert, ImageBatch, EmptyImage, RepeatImageBatch, ImageFromBatch, ImageAddNoise, GetImageSize)
