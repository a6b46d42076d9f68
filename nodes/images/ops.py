"""Small picture operations: ComfyUI's ImageInvert, ImageCrop and ImageBatch."""

from __future__ import annotations

import torch

from nodegraph import InputField, Node, NodeContext

from ..values import IMAGE
from .channels import with_alpha
from .fields import extent, offset
from .resample import rescale


class ImageInvert(Node):
    """Invert pictures' colours (1 - value)."""

    category = "image"
    display_name = "Invert Image"
    image: IMAGE = InputField(description="The pictures to invert.")

    def invoke(self, ctx: NodeContext) -> IMAGE:
        return 1.0 - self.image


class ImageCrop(Node):
    """Cut a width x height part from (x, y); a start past the edge moves to the last pixel, and
    a part running off the edge comes out smaller."""

    category = "image/transform"
    display_name = "Image Crop"
    image: IMAGE = InputField(description="The pictures to crop.")
    width: int = extent("Crop width.")
    height: int = extent("Crop height.")
    x: int = offset("Left edge.")
    y: int = offset("Top edge.")

    def invoke(self, ctx: NodeContext) -> IMAGE:
        _, h, w, _ = self.image.shape
        x, y = min(self.x, w - 1), min(self.y, h - 1)
        return self.image[:, y : y + self.height, x : x + self.width, :]


class ImageBatch(Node):
    """Join two batches of pictures; image2 is resized (bilinear, centre crop) to image1's size
    and the one with fewer channels gains an opaque alpha."""

    category = "image"
    display_name = "Batch Images"
    image1: IMAGE = InputField(description="The first pictures.")
    image2: IMAGE = InputField(description="The pictures appended after them.")

    def invoke(self, ctx: NodeContext) -> IMAGE:
        image1, image2 = self.image1, self.image2.to(self.image1.device)
        if image1.shape[-1] > image2.shape[-1]:
            image2 = with_alpha(image2)
        elif image1.shape[-1] < image2.shape[-1]:
            image1 = with_alpha(image1)
        if image1.shape[-1] != image2.shape[-1]:
            raise ValueError(
                f"image1 has {self.image1.shape[-1]} channels and image2 "
                f"{self.image2.shape[-1]}: only one alpha channel can be added to match them."
            )
        if image1.shape[1:] != image2.shape[1:]:
            image2 = rescale(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
        return torch.cat((image1, image2), dim=0)
