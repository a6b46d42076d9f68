"""ComfyUI's ImageScale: pictures resized with common_upscale's numbers (images.resample)."""

from __future__ import annotations

from typing import Literal

from nodegraph import InputField, Node, NodeContext

from ..values import IMAGE
from .resample import rescale

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


class ImageScale(Node):
    """Resize pictures to width x height (a 0 side keeps the aspect ratio); crop "center" first
    cuts them to the target's aspect ratio instead of stretching."""

    category = "image/upscaling"
    display_name = "Upscale Image"
    image: IMAGE = InputField(description="The pictures to resize.")
    upscale_method: UpscaleMethod = InputField("nearest-exact", description="The filter.")
    width: int = InputField(
        512, ge=0, le=MAX_RESOLUTION, step=1, description="0: keep the aspect ratio."
    )
    height: int = InputField(
        512, ge=0, le=MAX_RESOLUTION, step=1, description="0: keep the aspect ratio."
    )
    crop: Literal["disabled", "center"] = InputField("disabled", description="Crop or stretch.")

    def invoke(self, ctx: NodeContext) -> IMAGE:
        _, h, w, _ = self.image.shape
        width, height = target_size(w, h, self.width, self.height)
        limit = ctx.settings.options.get("max_image_pixels")
        if limit and width * height > limit:
            raise ValueError(
                f"{width} x {height} is {width * height} pixels; the limit is {limit}."
            )
        if self.width == 0 and self.height == 0:
            return self.image
        return rescale(self.image, width, height, self.upscale_method, self.crop)
