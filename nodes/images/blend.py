"""Blending two pictures: ComfyUI's ImageBlend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from nodegraph import InputField, Node, NodeContext

from ..values import IMAGE
from .channels import alpha_fix
from .resample import rescale

BlendMode = Literal["normal", "multiply", "screen", "overlay", "soft_light", "difference"]


def soft_light_lift(x: torch.Tensor) -> torch.Tensor:
    """The soft-light curve that brightens (the W3C formula's D(x))."""
    return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


def soft_light(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    darker = a - (1 - 2 * b) * a * (1 - a)
    return torch.where(b <= 0.5, darker, a + (2 * b - 1) * (soft_light_lift(a) - a))


MODES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "normal": lambda a, b: b,
    "multiply": lambda a, b: a * b,
    "screen": lambda a, b: 1 - (1 - a) * (1 - b),
    "overlay": lambda a, b: torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b)),
    "soft_light": soft_light,
    "difference": lambda a, b: a - b,  # signed, then clamped: not |a - b|
}


def batch_of_both(first: torch.Tensor, second: torch.Tensor, names: tuple[str, str]) -> None:
    """Refuse batch sizes that do not broadcast (equal, or one of them 1)."""
    a, b = first.shape[0], second.shape[0]
    if a != b and 1 not in (a, b):
        raise ValueError(
            f"{names[0]} is a batch of {a} and {names[1]} of {b}: they must be equal or one of "
            "them 1."
        )


class ImageBlend(Node):
    """Blend image2 over image1: image1 x (1 - factor) + mode(image1, image2) x factor; image2
    is resized (bicubic, centre crop) to image1's size first."""

    category = "image/postprocessing"
    display_name = "Image Blend"
    image1: IMAGE = InputField(description="The base pictures.")
    image2: IMAGE = InputField(description="The pictures blended over them.")
    blend_factor: float = InputField(
        0.5, ge=0.0, le=1.0, step=0.01, description="0: image1 alone, 1: the blend alone."
    )
    blend_mode: BlendMode = InputField("normal", description="How the two combine.")

    def invoke(self, ctx: NodeContext) -> IMAGE:
        names = ("image1", "image2")
        image1, image2 = alpha_fix(self.image1, self.image2.to(self.image1.device), names)
        batch_of_both(image1, image2, names)
        if image1.shape != image2.shape:
            image2 = rescale(image2, image1.shape[2], image1.shape[1], "bicubic", "center")
        blended = MODES[self.blend_mode](image1, image2)
        return torch.clamp(image1 * (1 - self.blend_factor) + blended * self.blend_factor, 0, 1)
