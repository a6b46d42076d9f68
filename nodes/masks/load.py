"""Loading one channel of a picture as a mask: ComfyUI's LoadImageMask."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps

from nodegraph import InputField, NodeContext

from ..devices import resolve_device
from ..images.io import LoadImage
from ..values import MASK


def load_channel(path: Path, channel: str) -> torch.Tensor:
    """One channel of the picture at `path` as a (1, H, W) mask in 0..1; alpha inverted (1 where
    transparent), colour channels as they are. Read as ComfyUI reads it: the first frame, EXIF
    rotation applied, 32-bit integer pictures scaled by 1/255, everything else converted to RGBA."""
    with Image.open(path) as opened:
        picture = ImageOps.exif_transpose(opened)
        picture.load()
    if picture.getbands() != ("R", "G", "B", "A"):
        if picture.mode == "I":
            picture = picture.point(lambda value: value * (1 / 255))
        picture = picture.convert("RGBA")
    band = channel[0].upper()
    mask = torch.from_numpy(np.array(picture.getchannel(band)).astype(np.float32) / 255.0)
    return (1.0 - mask if band == "A" else mask).unsqueeze(0)


class LoadImageMask(LoadImage):
    """Load one channel of a picture as a mask: alpha gives 1 where the picture is transparent."""

    category = "mask"
    display_name = "Load Image (as Mask)"
    channel: Literal["alpha", "red", "green", "blue"] = InputField(
        "alpha", description="The channel that becomes the mask."
    )

    def invoke(self, ctx: NodeContext) -> MASK:  # type: ignore[override]
        path = ctx.settings.resolve_input(self.image)
        if not path.is_file():
            raise FileNotFoundError(f"no picture at {path}")
        return load_channel(path, self.channel).to(resolve_device(ctx.settings.options))
