"""Making and reshaping masks: ComfyUI's SolidMask, InvertMask and CropMask."""

from __future__ import annotations

import torch

from nodegraph import InputField, Node, NodeContext

from ..devices import resolve_device
from ..images.fields import extent, offset
from ..values import MASK


def as_batch(mask: torch.Tensor) -> torch.Tensor:
    """A mask as (B, H, W), whatever leading dimensions it came with."""
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1])


class SolidMask(Node):
    """A mask of one value everywhere."""

    category = "mask"
    value: float = InputField(1.0, ge=0.0, le=1.0, step=0.01, description="The mask's value.")
    width: int = extent("Width in pixels.")
    height: int = extent("Height in pixels.")

    def invoke(self, ctx: NodeContext) -> MASK:
        device = resolve_device(ctx.settings.options)
        return torch.full(
            (1, self.height, self.width), self.value, dtype=torch.float32, device=device
        )


class InvertMask(Node):
    """Invert a mask (1 - value)."""

    category = "mask"
    mask: MASK = InputField(description="The mask to invert.")

    def invoke(self, ctx: NodeContext) -> MASK:
        return 1.0 - self.mask


class CropMask(Node):
    """Cut a width x height part of a mask from (x, y); a part running off the edge comes out
    smaller."""

    category = "mask"
    mask: MASK = InputField(description="The mask to crop.")
    x: int = offset("Left edge.")
    y: int = offset("Top edge.")
    width: int = extent("Crop width.")
    height: int = extent("Crop height.")

    def invoke(self, ctx: NodeContext) -> MASK:
        mask = as_batch(self.mask)
        for name, start, size in (("x", self.x, mask.shape[-1]), ("y", self.y, mask.shape[-2])):
            if start >= size:
                side = "width" if name == "x" else "height"
                raise ValueError(
                    f"{name} = {start} is outside the mask ({side} {size}): the crop would be "
                    "empty."
                )
        return mask[:, self.y : self.y + self.height, self.x : self.x + self.width]
