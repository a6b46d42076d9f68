"""Resizing by a factor or to a pixel count: ComfyUI's ImageScaleBy and ImageScaleToTotalPixels."""

from __future__ import annotations

import math

from nodegraph import InputField, Node, NodeContext

from ..values import IMAGE
from .resample import rescale
from .resize import UpscaleMethod


def check_pixel_limit(ctx: NodeContext, width: int, height: int) -> None:
    """Refuse a picture larger than the host's `max_image_pixels` option (when it sets one)."""
    limit = ctx.settings.options.get("max_image_pixels")
    if limit and width * height > limit:
        raise ValueError(f"{width} x {height} is {width * height} pixels; the limit is {limit}.")


class ImageScaleBy(Node):
    """Resize pictures by a factor (each side rounded to whole pixels)."""

    category = "image/upscaling"
    display_name = "Upscale Image By"
    image: IMAGE = InputField(description="The pictures to resize.")
    upscale_method: UpscaleMethod = InputField("nearest-exact", description="The filter.")
    scale_by: float = InputField(1.0, ge=0.01, le=8.0, step=0.01, description="The factor.")

    def invoke(self, ctx: NodeContext) -> IMAGE:
        _, h, w, _ = self.image.shape
        width, height = round(w * self.scale_by), round(h * self.scale_by)
        if width < 1 or height < 1:
            raise ValueError(
                f"scale_by {self.scale_by} makes the {w} x {h} picture {width} x {height}: "
                "both sides must be at least 1 pixel."
            )
        check_pixel_limit(ctx, width, height)
        return rescale(self.image, width, height, self.upscale_method, "disabled")


class ImageScaleToTotalPixels(Node):
    """Resize pictures to about `megapixels` (x 1024 x 1024) pixels, keeping the aspect ratio;
    each side rounded to a multiple of `resolution_steps`."""

    category = "image/upscaling"
    display_name = "Scale Image to Total Pixels"
    image: IMAGE = InputField(description="The pictures to resize.")
    upscale_method: UpscaleMethod = InputField("nearest-exact", description="The filter.")
    megapixels: float = InputField(
        1.0, ge=0.01, le=16.0, step=0.01, description="The target size in 1024 x 1024 pixels."
    )
    resolution_steps: int = InputField(1, ge=1, le=256, description="Sides are multiples of it.")

    def invoke(self, ctx: NodeContext) -> IMAGE:
        _, h, w, _ = self.image.shape
        factor = math.sqrt(self.megapixels * 1024 * 1024 / (w * h))
        steps = self.resolution_steps
        width, height = round(w * factor / steps) * steps, round(h * factor / steps) * steps
        if width < 1 or height < 1:
            raise ValueError(
                f"resolution_steps {steps} rounds the {w} x {h} picture to {width} x {height} "
                f"at {self.megapixels} megapixels: both sides must be at least 1 pixel."
            )
        check_pixel_limit(ctx, width, height)
        return rescale(self.image, width, height, self.upscale_method, "disabled")
