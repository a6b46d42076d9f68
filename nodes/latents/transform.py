"""ComfyUI's latent nodes that resize, composite and blend: LatentUpscale, LatentUpscaleBy,
LatentComposite, LatentCompositeMasked, LatentBlend."""

from __future__ import annotations

import dataclasses

import torch

from nodegraph import InputField, Node, NodeContext

from ..sampling.comfy.inpaint import repeat_to_batch_size
from ..values import LATENT, MASK
from .scaling import Crop, LatentUpscaleMethod, common_upscale

MAX_RESOLUTION = 16384


def _size(default: int, what: str, ge: int = 0) -> int:
    return InputField(default, description=what, ge=ge, le=MAX_RESOLUTION, step=8)


class LatentUpscale(Node):
    """Resize latents to a size in pixels (0 on one side keeps the aspect ratio)."""

    category = "latent"
    display_name = "Upscale Latent"
    samples: LATENT = InputField(description="The latents to resize.")
    upscale_method: LatentUpscaleMethod = InputField("nearest-exact", description="How.")
    width: int = _size(512, "Width in pixels (0: from the height and the aspect ratio).")
    height: int = _size(512, "Height in pixels (0: from the width and the aspect ratio).")
    crop: Crop = InputField("disabled", description="Crop to the new aspect ratio first.")

    def invoke(self, ctx: NodeContext) -> LATENT:
        width, height, samples = self.width, self.height, self.samples.samples
        if width == 0 and height == 0:
            return self.samples
        if width == 0:
            height = max(64, height)
            width = max(64, round(samples.shape[-1] * height / samples.shape[-2]))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(samples.shape[-2] * width / samples.shape[-1]))
        else:
            width, height = max(64, width), max(64, height)
        out = common_upscale(samples, width // 8, height // 8, self.upscale_method, self.crop)
        return dataclasses.replace(self.samples, samples=out)


class LatentUpscaleBy(Node):
    """Resize latents by a factor."""

    category = "latent"
    display_name = "Upscale Latent By"
    samples: LATENT = InputField(description="The latents to resize.")
    upscale_method: LatentUpscaleMethod = InputField("nearest-exact", description="How.")
    scale_by: float = InputField(1.5, description="The factor.", ge=0.01, le=8.0, step=0.01)

    def invoke(self, ctx: NodeContext) -> LATENT:
        samples = self.samples.samples
        width = round(samples.shape[-1] * self.scale_by)
        height = round(samples.shape[-2] * self.scale_by)
        out = common_upscale(samples, width, height, self.upscale_method, "disabled")
        return dataclasses.replace(self.samples, samples=out)


def _feather_mask(source: torch.Tensor, dest: torch.Tensor, x: int, y: int, feather: int):
    """LatentComposite's blend weights: ramps of `feather` latent pixels on the inner edges."""
    mask = torch.ones_like(source)
    for t in range(feather):
        weight = (1.0 / feather) * (t + 1)
        if y != 0:
            mask[:, :, t : 1 + t, :] *= weight
        if y + source.shape[2] < dest.shape[2]:
            mask[:, :, mask.shape[2] - 1 - t : mask.shape[2] - t, :] *= weight
        if x != 0:
            mask[:, :, :, t : 1 + t] *= weight
        if x + source.shape[3] < dest.shape[3]:
            mask[:, :, :, mask.shape[3] - 1 - t : mask.shape[3] - t] *= weight
    return mask


class LatentComposite(Node):
    """Paste one latent into another at (x, y) pixels, optionally feathered."""

    category = "latent"
    display_name = "Latent Composite"
    samples_to: LATENT = InputField(description="The latent pasted into.")
    samples_from: LATENT = InputField(description="The latent pasted.")
    x: int = _size(0, "Left edge in pixels.")
    y: int = _size(0, "Top edge in pixels.")
    feather: int = _size(0, "Feathered border in pixels.")

    def invoke(self, ctx: NodeContext) -> LATENT:
        x, y, feather = self.x // 8, self.y // 8, self.feather // 8
        dest, source = self.samples_to.samples, self.samples_from.samples
        if x >= dest.shape[3] or y >= dest.shape[2]:
            raise ValueError(
                f"x={self.x}, y={self.y} lies outside the destination latent "
                f"({dest.shape[3] * 8}x{dest.shape[2] * 8} pixels)"
            )
        out = dest.clone()
        source = source[:, :, : dest.shape[2] - y, : dest.shape[3] - x]
        window = (
            slice(None),
            slice(None),
            slice(y, y + source.shape[2]),
            slice(x, x + source.shape[3]),
        )
        if feather == 0:
            out[window] = source
        else:
            mask = _feather_mask(source, dest, x, y, feather)
            out[window] = source * mask + out[window] * (torch.ones_like(mask) - mask)
        return dataclasses.replace(self.samples_to, samples=out)


def composite(
    destination: torch.Tensor,
    source: torch.Tensor,
    x: int,
    y: int,
    mask: torch.Tensor | None = None,
    multiplier: int = 8,
    resize_source: bool = False,
) -> torch.Tensor:
    """ComfyUI's masked composite of (b, c, h, w) tensors at (x, y) in units of 1/multiplier
    of a pixel of `destination` (8 for latents, 1 for images); changes `destination`."""
    source = source.to(destination.device)
    if resize_source:
        size = (destination.shape[-2], destination.shape[-1])
        source = torch.nn.functional.interpolate(source, size=size, mode="bilinear")
    source = repeat_to_batch_size(source, destination.shape[0])
    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + source.shape[-1], top + source.shape[-2]
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = mask.to(destination.device, copy=True).reshape((-1, 1, *mask.shape[-2:]))
        mask = torch.nn.functional.interpolate(mask, size=source.shape[-2:], mode="bilinear")
        mask = repeat_to_batch_size(mask, source.shape[0])
    visible_w = destination.shape[-1] - left + min(0, x)
    visible_h = destination.shape[-2] - top + min(0, y)
    mask = mask[:, :, :visible_h, :visible_w]
    if mask.ndim < source.ndim:
        mask = mask.unsqueeze(1)
    kept = (torch.ones_like(mask) - mask) * destination[..., top:bottom, left:right]
    destination[..., top:bottom, left:right] = mask * source[..., :visible_h, :visible_w] + kept
    return destination


class LatentCompositeMasked(Node):
    """Paste a latent into another at (x, y) pixels through an optional mask."""

    category = "latent"
    destination: LATENT = InputField(description="The latent pasted into.")
    source: LATENT = InputField(description="The latent pasted.")
    x: int = _size(0, "Left edge in pixels.")
    y: int = _size(0, "Top edge in pixels.")
    resize_source: bool = InputField(False, description="Resize the source to the destination.")
    mask: MASK | None = InputField(None, description="Where to paste (1) and keep (0).")

    def invoke(self, ctx: NodeContext) -> LATENT:
        out = composite(
            self.destination.samples.clone(), self.source.samples, self.x, self.y, self.mask,
            8, self.resize_source,
        )  # fmt: skip
        return dataclasses.replace(self.destination, samples=out)


class LatentBlend(Node):
    """Mix two latents: blend_factor of the first, the rest of the second."""

    category = "_for_testing"
    display_name = "Latent Blend"
    samples1: LATENT = InputField(description="The first latent.")
    samples2: LATENT = InputField(description="The second latent (resized to the first).")
    blend_factor: float = InputField(
        0.5, description="Share of the first.", ge=0.0, le=1.0, step=0.01
    )

    def invoke(self, ctx: NodeContext) -> LATENT:
        first, second = self.samples1.samples, self.samples2.samples
        if first.shape != second.shape:
            second = common_upscale(second, first.shape[3], first.shape[2], "bicubic", "center")
        blended = first * self.blend_factor + second * (1 - self.blend_factor)
        return dataclasses.replace(self.samples1, samples=blended)
