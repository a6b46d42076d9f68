"""Pasting one picture onto another through a mask: ComfyUI's ImageCompositeMasked."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812

from nodegraph import InputField, Node, NodeContext

from ..values import IMAGE, MASK
from .channels import alpha_fix
from .fields import offset


def repeat_to_batch(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """The first `size` items of `tensor`, tiled as often as needed (ComfyUI's rule)."""
    if tensor.shape[0] < size:
        tensor = tensor.repeat(math.ceil(size / tensor.shape[0]), *[1] * (tensor.ndim - 1))
    return tensor[:size]


def paste(
    destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask: torch.Tensor | None
) -> torch.Tensor:
    """`source` (B, C, h, w) blended by `mask` into a copy of `destination` (B, C, H, W) with its
    top-left corner at (x, y), clipped at the right and bottom edges."""
    out = destination.clone()
    source = repeat_to_batch(source.to(out.device), out.shape[0])
    x, y = min(x, out.shape[-1]), min(y, out.shape[-2])
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = mask.to(out.device).reshape(-1, 1, mask.shape[-2], mask.shape[-1])
        mask = repeat_to_batch(
            F.interpolate(mask, size=source.shape[-2:], mode="bilinear"), len(source)
        )
    visible_h, visible_w = out.shape[-2] - y, out.shape[-1] - x
    mask = mask[:, :, :visible_h, :visible_w]
    region = (..., slice(y, y + source.shape[-2]), slice(x, x + source.shape[-1]))
    kept = (torch.ones_like(mask) - mask) * out[region]
    out[region] = mask * source[..., :visible_h, :visible_w] + kept
    return out


class ImageCompositeMasked(Node):
    """Paste `source` onto `destination` at (x, y), through `mask` where given (resized to the
    source); resize_source stretches the source to the destination's size first."""

    category = "image"
    destination: IMAGE = InputField(description="The pictures pasted onto.")
    source: IMAGE = InputField(
        description="The pictures pasted (tiled to the destination's batch)."
    )
    x: int = offset("Left edge of the paste.")
    y: int = offset("Top edge of the paste.")
    resize_source: bool = InputField(False, description="Stretch the source to the destination.")
    mask: MASK | None = InputField(None, description="Where the source shows (1) or not (0).")

    def invoke(self, ctx: NodeContext) -> IMAGE:
        destination, source = alpha_fix(self.destination, self.source, ("destination", "source"))
        destination, source = destination.movedim(-1, 1), source.movedim(-1, 1)
        if self.resize_source:
            source = F.interpolate(
                source.to(destination.device), size=destination.shape[-2:], mode="bilinear"
            )
        return paste(destination, source, self.x, self.y, self.mask).movedim(1, -1)
