"""ComfyUI's GLIGENTextBoxApply: a phrase placed in a box of the picture, for a GLIGEN model.

Each Cond of the conditioning gets the box appended to its `gligen` boxes (ComfyUI's
("position", model, [(pooled text, height, width, y, x) in latent units])). While sampling, a
prompt with boxes runs the UNet with the GLIGEN layers fused in (nodes.sampling.gligen); a
negative prompt without boxes of its own shares the positive one's, as ComfyUI's samplers do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nodegraph import InputField, Node, NodeContext

from ..values import CLIP, CONDITIONING, GLIGEN, Cond, Conditioning, Gligen
from .clip_nodes import MAX_RESOLUTION, encode, require_clip

GLIGEN_KEY = "gligen"
MAX_BOXES = 30
"""The boxes a GLIGEN model takes at most (ComfyUI's max_objs)."""
LATENT_UNIT = 8


@dataclass(frozen=True)
class Box:
    """One phrase's box in latent units, with the phrase's pooled text (1, width)."""

    pooled: torch.Tensor
    height: int
    width: int
    y: int
    x: int


@dataclass(frozen=True, eq=False)
class GligenBoxes:
    """The GLIGEN model and the boxes a Cond carries (ComfyUI's `gligen` option)."""

    model: Gligen
    boxes: tuple[Box, ...]


def add_box(
    conditioning: Conditioning,
    model: Gligen,
    pooled: torch.Tensor,
    width: int,
    height: int,
    x: int,
    y: int,
) -> Conditioning:
    """Every Cond with the box (pixels, floored to latent units) after its own; the model is
    the given one (the last node's, as ComfyUI's)."""
    box = Box(pooled, height // LATENT_UNIT, width // LATENT_UNIT, y // LATENT_UNIT,
              x // LATENT_UNIT)  # fmt: skip

    def append(cond: Cond) -> Cond:
        before = cond.extras.get(GLIGEN_KEY)
        boxes = () if before is None else before.boxes
        if len(boxes) >= MAX_BOXES:
            raise ValueError(f"a GLIGEN model takes at most {MAX_BOXES} boxes per prompt")
        return cond.with_options(**{GLIGEN_KEY: GligenBoxes(model, (*boxes, box))})

    return conditioning.map(append)


class GLIGENTextBoxApply(Node):
    """Place a phrase in a box of the picture (for a GLIGEN model on an SD 1.x checkpoint)."""

    category = "conditioning/gligen"
    conditioning_to: CONDITIONING = InputField(description="The prompt to add the box to.")
    clip: CLIP = InputField(description="The CLIP that encodes the phrase.")
    gligen_textbox_model: GLIGEN = InputField(description="From GLIGENLoader.")
    text: str = InputField("", description="The phrase to place.", multiline=True)
    width: int = InputField(64, description="Box width (pixels).", ge=8, le=MAX_RESOLUTION, step=8)
    height: int = InputField(
        64, description="Box height (pixels).", ge=8, le=MAX_RESOLUTION, step=8
    )
    x: int = InputField(0, description="Box left edge (pixels).", ge=0, le=MAX_RESOLUTION, step=8)
    y: int = InputField(0, description="Box top edge (pixels).", ge=0, le=MAX_RESOLUTION, step=8)

    def invoke(self, ctx: NodeContext) -> CONDITIONING:
        clip = require_clip(self.clip)
        if any(t.key == "g" for t in clip.towers):
            raise ValueError("GLIGEN models are SD 1.x / 2.x models: this CLIP is an SDXL one")
        pooled = encode(ctx, clip, {t.key: self.text for t in clip.towers}).conds[0].pooled
        return add_box(
            self.conditioning_to, self.gligen_textbox_model, pooled.float(), self.width,
            self.height, self.x, self.y,
        )  # fmt: skip
