"""Masks to pictures and back: ComfyUI's MaskToImage and ImageToMask."""

from __future__ import annotations

from typing import Literal, get_args

from nodegraph import InputField, Node, NodeContext

from ..values import IMAGE, MASK

Channel = Literal["red", "green", "blue", "alpha"]
CHANNELS = get_args(Channel)


class MaskToImage(Node):
    """A grey picture of a mask (the mask in all three channels)."""

    category = "mask"
    display_name = "Convert Mask to Image"
    mask: MASK = InputField(description="The mask to show as a picture.")

    def invoke(self, ctx: NodeContext) -> IMAGE:
        grey = self.mask.reshape(-1, 1, self.mask.shape[-2], self.mask.shape[-1]).movedim(1, -1)
        return grey.expand(-1, -1, -1, 3)


class ImageToMask(Node):
    """One channel of pictures as a mask."""

    category = "mask"
    display_name = "Convert Image to Mask"
    image: IMAGE = InputField(description="The pictures to read.")
    channel: Channel = InputField("red", description="The channel that becomes the mask.")

    def invoke(self, ctx: NodeContext) -> MASK:
        index = CHANNELS.index(self.channel)
        if index >= self.image.shape[-1]:
            raise ValueError(
                f"channel {self.channel!r}: the image has {self.image.shape[-1]} channels, so no "
                f"{self.channel} channel."
            )
        return self.image[..., index]
