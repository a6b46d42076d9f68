"""ImageUpscaleWithModel: pictures through an upscale model, tiled as ComfyUI tiles."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from nodegraph import InputField, Node, NodeContext

from ..loading.residency import RESIDENCY
from ..values import IMAGE
from .model import UPSCALE_MODEL, UpscaleModel
from .tiles import tile_count, tiled_scale

TILE = 512
OVERLAP = 32
SMALLEST_TILE = 128
"""ComfyUI's: the first tile; halved on out-of-memory, giving up below the smallest."""


def _ticker(ctx: NodeContext | None, total: int) -> Callable[[], None]:
    """Called once per tile: reports `done of total` (and honours an interrupt)."""
    counter = itertools.count(1)

    def tick() -> None:
        done = next(counter)
        if ctx is not None:
            ctx.progress(done, total)

    return tick


def upscale(
    model: UpscaleModel,
    images: torch.Tensor,
    ctx: NodeContext | None = None,
    tile: int = TILE,
    overlap: int = OVERLAP,
) -> torch.Tensor:
    """Pictures (B, H, W, 3) in 0..1 upscaled by the model, progress reported per tile."""
    if model.descriptor.input_channels != images.shape[-1]:
        raise ValueError(
            f"ImageUpscaleWithModel: {model.name} takes pictures of "
            f"{model.descriptor.input_channels} channels, not {images.shape[-1]}"
        )
    pixels = images.movedim(-1, -3).to(model.device, torch.float32)
    while True:
        tick = _ticker(ctx, images.shape[0] * tile_count(*pixels.shape[-2:], tile, overlap))
        try:
            with RESIDENCY.use([model.descriptor.model], model.device), torch.no_grad():
                out = tiled_scale(pixels, model.descriptor, model.scale, tile, overlap, tick)
            break
        except torch.OutOfMemoryError:
            tile //= 2
            if tile < SMALLEST_TILE:
                raise
    return out.movedim(-3, -1).clamp(0, 1).to(images.device)


class ImageUpscaleWithModel(Node):
    """Upscale pictures with an upscale model (ESRGAN, SwinIR, ...), tile by tile."""

    category = "image/upscaling"
    display_name = "Upscale Image (using Model)"
    upscale_model: UPSCALE_MODEL = InputField(description="The model, from UpscaleModelLoader.")
    image: IMAGE = InputField(description="The pictures to upscale.")

    def invoke(self, ctx: NodeContext) -> IMAGE:
        return upscale(self.upscale_model, self.image, ctx, TILE, OVERLAP)
