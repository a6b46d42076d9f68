"""Canny: an edge map of pictures (ComfyUI's preprocessor, through kornia's detector)."""

from __future__ import annotations

import torch

from nodegraph import InputField, Node, NodeContext

from ..values import IMAGE


def canny_edges(images: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Pictures (B, H, W, 3) in 0..1 -> their Canny edges, white on black, as (B, H, W, 3)."""
    from kornia.filters import canny

    if low > high:
        raise ValueError(f"Canny: low_threshold ({low}) is above high_threshold ({high})")
    _, edges = canny(images.movedim(-1, 1), low, high)
    return edges.repeat(1, 3, 1, 1).movedim(1, -1)


class Canny(Node):
    """Detect edges (kornia's Canny detector): white lines on black, for a ControlNet."""

    category = "image/preprocessors"
    image: IMAGE = InputField(description="The pictures.")
    low_threshold: float = InputField(
        0.4, ge=0.01, le=0.99, step=0.01, description="Weaker gradients are no edge."
    )
    high_threshold: float = InputField(
        0.8, ge=0.01, le=0.99, step=0.01, description="Stronger gradients are edges for sure."
    )

    def invoke(self, ctx: NodeContext) -> IMAGE:
        return canny_edges(self.image, self.low_threshold, self.high_threshold)
