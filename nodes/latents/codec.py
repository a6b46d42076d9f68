"""Latents: the empty text-to-image source, and the VAE between pixels and latents."""

from __future__ import annotations

import torch

from nodegraph import InputField, Node, NodeContext

from ..devices import resolve_device
from ..loading.residency import RESIDENCY
from ..values import IMAGE, LATENT, VAE, Latent, Vae

LATENT_CHANNELS = 4


def empty_latent(width: int, height: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """Zeros of shape (batch, 4, height/8, width/8): where text-to-image starts."""
    if width % 8 or height % 8:
        raise ValueError(f"width and height must be multiples of 8, not {width}x{height}")
    return torch.zeros(
        (batch_size, LATENT_CHANNELS, height // 8, width // 8), dtype=torch.float32, device=device
    )


@torch.no_grad()
def vae_encode(vae: Vae, pixels: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Latents of images (batch, H, W, 3) in 0..1: the distribution's mode (unscaled).

    Images whose sides are not multiples of the VAE's downscale are cropped (centred); the
    second value says whether that happened.
    """
    if pixels.ndim != 4 or pixels.shape[-1] < 3:
        raise ValueError(f"expected images of shape (batch, height, width, 3), not {pixels.shape}")
    f = vae.downscale
    h, w = pixels.shape[1], pixels.shape[2]
    nh, nw = h // f * f, w // f * f
    if nh == 0 or nw == 0:
        raise ValueError(f"the image ({w}x{h}) is smaller than the VAE's {f}-pixel grid")
    cropped = (nh, nw) != (h, w)
    if cropped:
        top, left = (h - nh) // 2, (w - nw) // 2
        pixels = pixels[:, top : top + nh, left : left + nw]
    x = pixels[..., :3].permute(0, 3, 1, 2).to(device=vae.device, dtype=vae.dtype) * 2.0 - 1.0
    with RESIDENCY.use([vae.vae], vae.device):
        mode = vae.vae.encode(x).latent_dist.mode()
    return mode, cropped


@torch.no_grad()
def vae_decode(vae: Vae, latent: torch.Tensor) -> torch.Tensor:
    """Images (batch, H, W, 3) in 0..1, float32, on the VAE's device."""
    channels = int(vae.vae.config.latent_channels)
    if latent.ndim != 4 or latent.shape[1] != channels:
        raise ValueError(
            f"the VAE {vae.name} decodes latents of {channels} channels, not of shape "
            f"{tuple(latent.shape)}: the latent comes from another model family"
        )
    z = latent.to(device=vae.device, dtype=vae.dtype)
    with RESIDENCY.use([vae.vae], vae.device):
        decoded = vae.vae.decode(z, return_dict=False)[0]
    return (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float()


class EmptyLatentImage(Node):
    """An empty latent of the given size: the source of text-to-image."""

    category = "latent"
    display_name = "Empty Latent Image"
    width: int = InputField(512, description="Image width in pixels.", ge=16, le=16384, step=8)
    height: int = InputField(512, description="Image height in pixels.", ge=16, le=16384, step=8)
    batch_size: int = InputField(1, description="Images to make at once.", ge=1, le=4096)

    def invoke(self, ctx: NodeContext) -> LATENT:
        device = resolve_device(ctx.settings.options)
        return Latent(empty_latent(self.width, self.height, self.batch_size, device))


class VAEEncode(Node):
    """Encode images into latents (deterministic: the mode of the latent distribution)."""

    category = "latent"
    display_name = "VAE Encode"
    pixels: IMAGE = InputField(description="The images to encode.")
    vae: VAE = InputField(description="The VAE (from CheckpointLoader).")

    def invoke(self, ctx: NodeContext) -> LATENT:
        latent, cropped = vae_encode(self.vae, self.pixels)
        if cropped:
            f = self.vae.downscale
            ctx.warn(f"the image was cropped to a multiple of {f} pixels on each side")
        return Latent(latent)


class VAEDecode(Node):
    """Decode latents into images."""

    category = "latent"
    display_name = "VAE Decode"
    samples: LATENT = InputField(description="The latents to decode.")
    vae: VAE = InputField(description="The VAE (from CheckpointLoader).")

    def invoke(self, ctx: NodeContext) -> IMAGE:
        return vae_decode(self.vae, self.samples.samples)
