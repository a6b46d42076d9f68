"""Resizing pictures: ComfyUI's ImageScale (to fit an input picture to the model's size)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

from nodegraph import InputField, Node, NodeContext

from ..values import IMAGE
from .io import to_pil

MAX_RESOLUTION = 16384
UpscaleMethod = Literal["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


def target_size(width: int, height: int, want_w: int, want_h: int) -> tuple[int, int]:
    """The size to resize a width x height picture to; a 0 side keeps the aspect ratio."""
    if want_w == 0 and want_h == 0:
        return width, height
    if want_w == 0:
        want_w = round(width * want_h / height)
    elif want_h == 0:
        want_h = round(height * want_w / width)
    return min(max(want_w, 1), MAX_RESOLUTION), min(max(want_h, 1), MAX_RESOLUTION)


def centre_crop(images: torch.Tensor, aspect: float) -> torch.Tensor:
    """The centred part of images (batch, H, W, C) with width / height = `aspect`."""
    _, h, w, _ = images.shape
    if w / h > aspect:
        keep = max(1, round(h * aspect))
        left = (w - keep) // 2
        return images[:, :, left : left + keep]
    keep = max(1, round(w / aspect))
    top = (h - keep) // 2
    return images[:, top : top + keep]


def resize(images: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    """Images (batch, H, W, C) in 0..1 resized to height x width."""
    if method == "lanczos":  # as ComfyUI: Pillow's filter, through 8-bit pictures
        done = [
            np.asarray(p.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32)
            for p in to_pil(images)
        ]
        out = torch.from_numpy(np.stack(done) / 255.0)
        return out.reshape(len(done), height, width, -1).to(images.device, images.dtype)
    x = images.movedim(-1, 1)
    if method in ("bilinear", "bicubic"):  # antialiased: no aliasing when shrinking
        x = F.interpolate(x, size=(height, width), mode=method, antialias=True)
    else:
        x = F.interpolate(x, size=(height, width), mode=method)
    return x.movedim(1, -1).clamp(0, 1)


class ImageScale(Node):
    """Resize pictures to width x height (a 0 side keeps the aspect ratio); crop "center" first
    cuts them to the target's aspect ratio instead of stretching."""

    category = "image/upscaling"
    display_name = "Upscale Image"
    image: IMAGE = InputField(description="The pictures to resize.")
    upscale_method: UpscaleMethod = InputField("nearest-exact", description="The filter.")
    width: int = InputField(512, ge=0, le=MAX_RESOLUTION, description="0: keep the aspect ratio.")
    height: int = InputField(512, ge=0, le=MAX_RESOLUTION, description="0: keep the aspect ratio.")
    crop: Literal["disabled", "center"] = InputField("disabled", description="Crop or stretch.")

    def invoke(self, ctx: NodeContext) -> IMAGE:
        _, h, w, _ = self.image.shape
        width, height = target_size(w, h, self.width, self.height)
        limit = ctx.settings.options.get("max_image_pixels")
        if limit and width * height > limit:
            raise ValueError(
                f"{width} x {height} is {width * height} pixels; the limit is {limit}."
            )
        images = self.image
        if self.crop == "center":
            images = centre_crop(images, width / height)
        if images.shape[1:3] == (height, width):
            return images
        return resize(images, width, height, self.upscale_method)
