"""Cheap live previews during sampling: latents to colours by a map fitted to the VAE.

ComfyUI ships hand-made linear latent-to-RGB factors per model family; we fit ours once per loaded
checkpoint instead, so they suit any VAE (the shipped model's as well as SD's): encode solid
colours, then solve the least-squares map from quadratic features of the mean latent back to the
colour (a ridge fit). A preview costs a few hundred multiply-adds per latent pixel, no decoder run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from PIL import Image

from ..values import Vae

LEVELS = (0.0, 1 / 3, 2 / 3, 1.0)
RIDGE = 1e-2


def _features(z: torch.Tensor) -> torch.Tensor:
    """(..., channels) -> (..., features): the channels, their pairwise products, a bias."""
    i, j = torch.triu_indices(z.shape[-1], z.shape[-1])
    ones = torch.ones(*z.shape[:-1], 1, dtype=z.dtype)
    return torch.cat([z, z[..., i] * z[..., j], ones], dim=-1)


@torch.no_grad()
def fit_latent_rgb(
    vae: Vae, to_unet: Callable[[torch.Tensor], torch.Tensor] = lambda z: z
) -> torch.Tensor:
    """A (features, 3) float32 CPU matrix: _features(latent) @ matrix ~ RGB in 0..1.

    Fitted on the UNet's latents (`to_unet` of the VAE's: a model's latent_in), which is what
    sampling shows.
    """
    from ..latents.codec import vae_encode

    colours = torch.tensor(list(itertools.product(LEVELS, repeat=3)), dtype=torch.float32)
    side = 4 * vae.downscale
    pixels = colours[:, None, None, :].expand(len(colours), side, side, 3)
    latents, _ = vae_encode(vae, pixels)
    latents = to_unet(latents)
    features = _features(latents.float().mean(dim=(2, 3)).cpu())
    # ridge regression (a little weight decay keeps the quadratic fit well conditioned)
    n = features.shape[1]
    features = torch.cat([features, RIDGE**0.5 * torch.eye(n)])
    colours = torch.cat([colours, torch.zeros(n, 3)])
    return torch.linalg.lstsq(features, colours).solution


def latent_preview(latent: torch.Tensor, factors: torch.Tensor, scale: int = 8) -> Image.Image:
    """The first image of a latent batch as a small RGB picture (scale x the latent size)."""
    z = latent[0].detach().float().cpu().permute(1, 2, 0)  # (h, w, channels)
    rgb = _features(z) @ factors
    array = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(array, "RGB")
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
