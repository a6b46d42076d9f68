"""Growing the canvas for outpainting: ComfyUI's ImagePadForOutpaint."""

from __future__ import annotations

import torch

from nodegraph import InputField, Node, NodeContext, Outputs

from ..values import IMAGE, MASK
from .fields import offset
from .resize import MAX_RESOLUTION
from .scale import check_pixel_limit


def feathered_edges(
    height: int, width: int, feathering: int, padded: tuple[bool, bool, bool, bool]
) -> torch.Tensor:
    """The mask over the original picture (H, W): ((f - d) / f)^2 within distance d < f of a
    padded side (top, bottom, left, right), else 0. As ComfyUI: the top and left rows count
    from 0, the bottom and right from 1."""
    top, bottom, left, right = padded
    rows = torch.arange(height).unsqueeze(1).expand(height, width)
    cols = torch.arange(width).unsqueeze(0).expand(height, width)
    far_rows, far_cols = torch.full_like(rows, height), torch.full_like(cols, width)
    distance = torch.stack(
        [
            rows if top else far_rows,
            height - rows if bottom else far_rows,
            cols if left else far_cols,
            width - cols if right else far_cols,
        ]
    ).amin(dim=0)
    ramp = (feathering - distance).double() / feathering
    return torch.where(distance < feathering, ramp * ramp, 0.0).float()


class Padded(Outputs):
    image: IMAGE
    mask: MASK


class ImagePadForOutpaint(Node):
    """Add a grey border (0.5) to pictures and a mask of it (1 on the border; the picture's own
    pixels near a padded side fade in over `feathering` pixels)."""

    category = "image"
    display_name = "Pad Image for Outpainting"
    image: IMAGE = InputField(description="The pictures to extend.")
    left: int = offset("Pixels added left.", step=8)
    top: int = offset("Pixels added on top.", step=8)
    right: int = offset("Pixels added right.", step=8)
    bottom: int = offset("Pixels added below.", step=8)
    feathering: int = InputField(
        40, ge=0, le=MAX_RESOLUTION, step=1, description="Fade of the mask into the picture."
    )

    def invoke(self, ctx: NodeContext) -> Padded:
        batch, h, w, channels = self.image.shape
        height, width = h + self.top + self.bottom, w + self.left + self.right
        check_pixel_limit(ctx, width, height)
        device = self.image.device
        image = torch.full((batch, height, width, channels), 0.5, device=device)
        image[:, self.top : self.top + h, self.left : self.left + w] = self.image
        mask = torch.ones(height, width, device=device)
        inner = torch.zeros(h, w)
        f = self.feathering
        if f > 0 and 2 * f < h and 2 * f < w:
            padded = (self.top != 0, self.bottom != 0, self.left != 0, self.right != 0)
            inner = feathered_edges(h, w, f, padded)
        mask[self.top : self.top + h, self.left : self.left + w] = inner.to(device)
        return Padded(image=image, mask=mask.unsqueeze(0))
