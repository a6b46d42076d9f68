"""ComfyUI's inpainting nodes: SetLatentNoiseMask, VAEEncodeForInpaint and
InpaintModelConditioning (the sampler then changes only the masked region; a 9-channel
inpainting UNet also sees the mask and the masked picture)."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F  # noqa: N812

from nodegraph import InputField, Node, NodeContext, Outputs

from ..values import CONDITIONING, IMAGE, LATENT, MASK, VAE, Latent, Vae
from .codec import vae_encode


def _pixel_mask(mask: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """The mask as (B, 1, H, W) at the pictures' size (bilinear, as ComfyUI)."""
    mask = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float()
    return F.interpolate(mask, size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")


def _crop_to(pixels: torch.Tensor, mask: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pictures and mask cropped (centred) to multiples of the VAE's downscale."""
    h, w = (pixels.shape[1] // f) * f, (pixels.shape[2] // f) * f
    if (h, w) == tuple(pixels.shape[1:3]):
        return pixels, mask
    top, left = (pixels.shape[1] % f) // 2, (pixels.shape[2] % f) // 2
    return pixels[:, top : top + h, left : left + w, :], mask[:, :, top : top + h, left : left + w]


def _grey_out(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The pictures with the masked pixels set to mid grey."""
    keep = (1.0 - mask.round()).squeeze(1)[..., None]
    return (pixels - 0.5) * keep + 0.5


def _encode(vae: Vae, pixels: torch.Tensor) -> torch.Tensor:
    return vae_encode(vae, pixels)[0]


class SetLatentNoiseMask(Node):
    """Let the sampler change the latent only where the mask is 1."""

    category = "latent/inpaint"
    display_name = "Set Latent Noise Mask"
    samples: LATENT = InputField(description="The latent.")
    mask: MASK = InputField(description="Where the sampler may change it.")

    def invoke(self, ctx: NodeContext) -> LATENT:
        mask = self.mask.reshape((-1, 1, self.mask.shape[-2], self.mask.shape[-1]))
        return dataclasses.replace(self.samples, noise_mask=mask)


class VAEEncodeForInpaint(Node):
    """Encode pictures with the masked region greyed out, the mask (grown a little) as the
    latent's noise mask: for inpainting models at full denoise."""

    category = "latent/inpaint"
    display_name = "VAE Encode (for Inpainting)"
    pixels: IMAGE = InputField(description="The pictures.")
    vae: VAE = InputField(description="The VAE.")
    mask: MASK = InputField(description="What to repaint (1).")
    grow_mask_by: int = InputField(
        6, description="Grow the mask by these pixels.", ge=0, le=64, step=1
    )

    def invoke(self, ctx: NodeContext) -> LATENT:
        f = self.vae.downscale
        pixels, mask = _crop_to(self.pixels.clone(), _pixel_mask(self.mask, self.pixels), f)
        grown = mask
        if self.grow_mask_by:
            kernel = torch.ones((1, 1, self.grow_mask_by, self.grow_mask_by), device=mask.device)
            padding = math.ceil((self.grow_mask_by - 1) / 2)
            grown = torch.clamp(F.conv2d(mask.round(), kernel, padding=padding), 0, 1)
        samples = _encode(self.vae, _grey_out(pixels, mask))
        h, w = pixels.shape[1], pixels.shape[2]
        return Latent(samples, grown[:, :, :h, :w].round())


class InpaintOutputs(Outputs):
    shown_names = True  # ComfyUI's RETURN_NAMES
    positive: CONDITIONING
    negative: CONDITIONING
    latent: LATENT


class InpaintModelConditioning(Node):
    """Give both conditionings the mask and the masked picture's latent (an inpainting UNet's
    extra input), and the latent of the whole picture, with the mask as its noise mask."""

    category = "conditioning/inpaint"
    positive: CONDITIONING = InputField(description="What the image should show.")
    negative: CONDITIONING = InputField(description="What it should not.")
    vae: VAE = InputField(description="The VAE.")
    pixels: IMAGE = InputField(description="The pictures.")
    mask: MASK = InputField(description="What to repaint (1).")
    noise_mask: bool = InputField(
        True, description="Also let the sampler change only the masked region."
    )

    def invoke(self, ctx: NodeContext) -> InpaintOutputs:
        pixels, mask = _crop_to(self.pixels.clone(), _pixel_mask(self.mask, self.pixels), 8)
        masked = _encode(self.vae, _grey_out(pixels, mask))
        whole = _encode(self.vae, self.pixels)
        positive, negative = (
            c.with_options(concat_latent_image=masked, concat_mask=mask)
            for c in (self.positive, self.negative)
        )
        latent = Latent(whole, mask if self.noise_mask else None)
        return InpaintOutputs(positive=positive, negative=negative, latent=latent)
