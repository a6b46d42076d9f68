"""Where, how much and when a conditioning guides (ComfyUI's ConditioningSetArea,
ConditioningSetAreaPercentage, ConditioningSetAreaStrength, ConditioningSetMask,
ConditioningSetTimestepRange): options on each Cond that the samplers read
(nodes.sampling.comfy.conds)."""

from __future__ import annotations

from typing import Literal

from nodegraph import InputField, Node, NodeContext

from ..latents.transform import MAX_RESOLUTION
from ..values import CONDITIONING, MASK


def _pixels(default: int, what: str, least: int) -> int:
    return InputField(default, description=what, ge=least, le=MAX_RESOLUTION, step=8)


def _share(default: float, what: str) -> float:
    return InputField(default, description=what, ge=0.0, le=1.0, step=0.01)


def _strength() -> float:
    return InputField(1.0, description="Weight of this conditioning.", ge=0.0, le=10.0, step=0.01)


class ConditioningSetArea(Node):
    """Let the conditioning guide only a rectangle of the picture (in pixels, 8 to a latent
    pixel), its weight fading in over 64 pixels from the rectangle's inner edges."""

    category = "conditioning"
    display_name = "Conditioning (Set Area)"
    conditioning: CONDITIONING = InputField(description="The conditioning.")
    width: int = _pixels(64, "The area's width.", 64)
    height: int = _pixels(64, "The area's height.", 64)
    x: int = _pixels(0, "The area's left edge.", 0)
    y: int = _pixels(0, "The area's top edge.", 0)
    strength: float = _strength()

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        area = (self.height // 8, self.width // 8, self.y // 8, self.x // 8)
        return self.conditioning.with_options(
            area=area, strength=self.strength, set_area_to_bounds=False
        )


class ConditioningSetAreaPercentage(Node):
    """ConditioningSetArea in shares of the picture's width and height."""

    category = "conditioning"
    display_name = "Conditioning (Set Area with Percentage)"
    conditioning: CONDITIONING = InputField(description="The conditioning.")
    width: float = _share(1.0, "The area's width, a share of the picture's.")
    height: float = _share(1.0, "The area's height, a share of the picture's.")
    x: float = _share(0.0, "The area's left edge, a share of the width.")
    y: float = _share(0.0, "The area's top edge, a share of the height.")
    strength: float = _strength()

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        area = ("percentage", self.height, self.width, self.y, self.x)
        return self.conditioning.with_options(
            area=area, strength=self.strength, set_area_to_bounds=False
        )


class ConditioningSetAreaStrength(Node):
    """Set the conditioning's weight against the others it is combined with."""

    category = "conditioning"
    conditioning: CONDITIONING = InputField(description="The conditioning.")
    strength: float = _strength()

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        return self.conditioning.with_options(strength=self.strength)


class ConditioningSetMask(Node):
    """Let the conditioning guide where a mask says, weighted by it (and, with "mask bounds",
    evaluate it only over the mask's bounding box)."""

    category = "conditioning"
    display_name = "Conditioning (Set Mask)"
    conditioning: CONDITIONING = InputField(description="The conditioning.")
    mask: MASK = InputField(description="Where it guides (1) and where not (0).")
    strength: float = _strength()
    set_cond_area: Literal["default", "mask bounds"] = InputField(
        "default", description="Evaluate it over the whole picture or the mask's bounds."
    )

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        mask = self.mask if self.mask.ndim >= 3 else self.mask.unsqueeze(0)
        return self.conditioning.with_options(
            mask=mask,
            set_area_to_bounds=self.set_cond_area != "default",
            mask_strength=self.strength,
        )


class ConditioningSetTimestepRange(Node):
    """Let the conditioning guide only part of the schedule (0: its start, 1: its end)."""

    category = "advanced/conditioning"
    conditioning: CONDITIONING = InputField(description="The conditioning.")
    start: float = InputField(0.0, description="Where it starts.", ge=0.0, le=1.0, step=0.001)
    end: float = InputField(1.0, description="Where it ends.", ge=0.0, le=1.0, step=0.001)

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        return self.conditioning.with_options(start_percent=self.start, end_percent=self.end)
