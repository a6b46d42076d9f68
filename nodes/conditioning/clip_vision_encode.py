"""ComfyUI's CLIPVisionEncode: a picture through a CLIP image encoder.

The picture is prepared as ComfyUI prepares it: alpha dropped; unless it already has the
encoder's square size, resized (bicubic, antialiased) so its shorter side fits (`crop`
"center") or squashed to the square ("none"), then the middle square cut out; quantised to
8 bits; normalised by CLIP's mean and std.
"""

from __future__ import annotations

import torch

from nodegraph import InputField, Node, NodeContext

from ..loading.residency import RESIDENCY
from ..values import CLIP_VISION, CLIP_VISION_OUTPUT, IMAGE, ClipVision, ClipVisionOutput

CROPS = ("center", "none")


def clip_preprocess(
    image: torch.Tensor,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop: bool = True,
) -> torch.Tensor:
    """IMAGE (batch, height, width, channels) in 0..1 -> normalised (batch, 3, size, size)."""
    pixels = image[..., :3].movedim(-1, 1)
    height, width = pixels.shape[-2:]
    if (height, width) != (size, size):
        if crop:
            scale = size / min(height, width)
            target = (round(scale * height), round(scale * width))
        else:
            target = (size, size)
        pixels = torch.nn.functional.interpolate(
            pixels, size=target, mode="bicubic", antialias=True
        )
        top, left = (pixels.shape[-2] - size) // 2, (pixels.shape[-1] - size) // 2
        pixels = pixels[..., top : top + size, left : left + size]
    pixels = (pixels * 255.0).clamp(0, 255).round() / 255.0
    m = torch.tensor(mean, device=pixels.device, dtype=pixels.dtype).view(3, 1, 1)
    s = torch.tensor(std, device=pixels.device, dtype=pixels.dtype).view(3, 1, 1)
    return (pixels - m) / s


def encode_image(
    clip_vision: ClipVision, image: torch.Tensor, crop: bool = True
) -> ClipVisionOutput:
    """The encoder's outputs for a batch of pictures (float32, on the encoder's device)."""
    pixels = clip_preprocess(
        image.to(clip_vision.device, torch.float32),
        clip_vision.image_size,
        clip_vision.mean,
        clip_vision.std,
        crop,
    )
    model = clip_vision.model
    with RESIDENCY.use([model], clip_vision.device), torch.no_grad():
        out = model(pixel_values=pixels.to(clip_vision.dtype), output_hidden_states=True)
    return ClipVisionOutput(
        last_hidden_state=out.last_hidden_state.float(),
        penultimate_hidden_states=out.hidden_states[-2].float(),
        image_embeds=out.image_embeds.float(),
    )


class CLIPVisionEncode(Node):
    """Encode pictures with a CLIP vision model (for unCLIP, style models, IP-adapters...)."""

    category = "conditioning"
    display_name = "CLIP Vision Encode"
    clip_vision: CLIP_VISION = InputField(description="The encoder, from CLIPVisionLoader.")
    image: IMAGE = InputField(description="The pictures to encode.")
    crop: str = InputField(
        "center",
        description="center: fit the shorter side and cut the middle square; none: squash.",
        choices=list(CROPS),
    )

    def invoke(self, ctx: NodeContext) -> CLIP_VISION_OUTPUT:
        return encode_image(self.clip_vision, self.image, crop=self.crop == "center")
