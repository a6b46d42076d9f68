"""Fading a mask's edges: ComfyUI's FeatherMask."""

from __future__ import annotations

import torch

from nodegraph import InputField, Node, NodeContext

from ..images.fields import offset
from ..values import MASK
from .solid import as_batch


def ramp(size: int, n: int, from_end: bool) -> torch.Tensor:
    """Factors over `size` pixels: the i-th of the first n is (i + 1) / n, the rest 1. From the
    end, as ComfyUI indexes it: i = 0 is pixel 0 and i = k > 0 is pixel size - k."""
    factors = torch.ones(size, dtype=torch.float64)
    i = torch.arange(n)
    factors[(-i) % size if from_end else i] = (i + 1).double() / n
    return factors.float()


class FeatherMask(Node):
    """Fade a mask linearly to its edges over the given number of pixels per side."""

    category = "mask"
    mask: MASK = InputField(description="The mask to feather.")
    left: int = offset("Pixels from the left.")
    top: int = offset("Pixels from the top.")
    right: int = offset("Pixels from the right.")
    bottom: int = offset("Pixels from the bottom.")

    def invoke(self, ctx: NodeContext) -> MASK:
        out = as_batch(self.mask)
        height, width = out.shape[-2:]

        def factors(size: int, n: int, from_end: bool) -> torch.Tensor:
            return ramp(size, min(n, size), from_end).to(out.device, out.dtype)

        out = out * factors(width, self.left, False)
        out = out * factors(width, self.right, True)
        out = out * factors(height, self.top, False).unsqueeze(1)
        return out * factors(height, self.bottom, True).unsqueeze(1)
