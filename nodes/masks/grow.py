"""Growing and shrinking masks: ComfyUI's GrowMask (grey dilation / erosion, 3 x 3 steps)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812

from nodegraph import InputField, Node, NodeContext

from ..images.resize import MAX_RESOLUTION
from ..values import MASK
from .solid import as_batch


def dilate(masks: torch.Tensor, tapered: bool) -> torch.Tensor:
    """One step of grey dilation of masks (B, 1, H, W): the largest value among each pixel and
    its 4 neighbours (tapered: a cross) or 8 neighbours (a 3 x 3 square). Pixels outside the
    mask are not neighbours."""
    if not tapered:
        return F.max_pool2d(masks, 3, stride=1, padding=1)
    across = F.max_pool2d(masks, (1, 3), stride=1, padding=(0, 1))
    down = F.max_pool2d(masks, (3, 1), stride=1, padding=(1, 0))
    return torch.maximum(across, down)


def grow(
    masks: torch.Tensor, expand: int, tapered: bool, each_step: Callable[[], None] = lambda: None
) -> torch.Tensor:
    """Masks (B, H, W) dilated `expand` times (eroded -expand times when negative); `each_step`
    runs before every step (an interrupt check)."""
    sign = 1.0 if expand >= 0 else -1.0  # erosion is the dilation of the negated mask
    out = masks.unsqueeze(1) * sign
    for _ in range(abs(expand)):
        each_step()
        step = dilate(out, tapered)
        if torch.equal(step, out):  # settled: further steps change nothing
            break
        out = step
    return (out * sign).squeeze(1)


class GrowMask(Node):
    """Grow a mask by `expand` pixels (shrink it when negative); tapered corners grow it as a
    diamond, square ones as a square."""

    category = "mask"
    display_name = "Grow Mask"
    mask: MASK = InputField(description="The mask to grow or shrink.")
    expand: int = InputField(
        0, ge=-MAX_RESOLUTION, le=MAX_RESOLUTION, step=1, description="Pixels; negative shrinks."
    )
    tapered_corners: bool = InputField(True, description="Round (diamond) rather than square.")

    def invoke(self, ctx: NodeContext) -> MASK:
        return grow(as_batch(self.mask), self.expand, self.tapered_corners, ctx.check_interrupt)
