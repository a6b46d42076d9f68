"""ComfyUI's inpainting inside the sampler: a latent's noise mask resized to the latent, the
denoiser that keeps the unmasked latent step by step (KSamplerX0Inpaint), and the extra input
channels of a 9-channel inpainting UNet."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

from ...latents.scaling import common_upscale
from .model_sampling import ModelSampling
from .sampler_api import Denoiser, PairDenoiser


def repeat_to_batch_size(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Cut or tile along the batch to `batch` (ComfyUI's repeat_to_batch_size)."""
    if tensor.shape[0] > batch:
        return tensor[:batch]
    if tensor.shape[0] < batch:
        reps = math.ceil(batch / tensor.shape[0])
        return tensor.repeat(reps, *([1] * (tensor.ndim - 1)))[:batch]
    return tensor


def resize_to_batch_size(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Spread or thin along the batch to `batch` by nearest index (ComfyUI's
    resize_to_batch_size)."""
    given = tensor.shape[0]
    if given == batch:
        return tensor
    if batch <= 1:
        return tensor[:batch]
    if batch < given:
        scale = (given - 1) / (batch - 1)
        picks = [min(round(i * scale), given - 1) for i in range(batch)]
    else:
        scale = given / batch
        picks = [min(math.floor((i + 0.5) * scale), given - 1) for i in range(batch)]
    return tensor[picks]


def latent_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A noise mask (any of (H, W), (B, H, W), (B, 1, H, W)) as (B, C, h, w) for latents of
    `shape` (ComfyUI's reshape_mask: bilinear, channels repeated, batch tiled)."""
    mask = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float()
    mask = F.interpolate(mask, size=tuple(shape[2:]), mode="bilinear")
    if mask.shape[1] < shape[1]:
        mask = mask.repeat(1, shape[1], 1, 1)[:, : shape[1]]
    return repeat_to_batch_size(mask, shape[0])


def concat_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """An inpainting UNet's mask channel: one channel, latent-sized, rounded, batch-fitted."""
    if mask.ndim == like.ndim:
        mask = mask[:, :1]
    mask = mask.reshape((-1, 1, *mask.shape[-2:])).float()
    if mask.shape[-2:] != like.shape[-2:]:
        mask = common_upscale(mask, like.shape[-1], like.shape[-2], "bilinear", "center")
    return resize_to_batch_size(mask.round(), like.shape[0])


@dataclass
class Inpainting:
    """The sampler's inpainting state: the mask (latent-shaped), the latent kept outside it
    (model space) and the noise it is re-noised with."""

    mask: torch.Tensor
    latent: torch.Tensor
    noise: torch.Tensor
    sampling: ModelSampling

    def _keep(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape([sigma.shape[0]] + [1] * (self.noise.ndim - 1))
        renoised = self.sampling.noise_scaling(s, self.noise, self.latent)
        return x * self.mask + renoised * (1.0 - self.mask)

    def _blend(self, out: torch.Tensor) -> torch.Tensor:
        return out * self.mask + self.latent * (1.0 - self.mask)

    def wrap(self, denoiser: Denoiser) -> Denoiser:
        """The denoiser seeing the unmasked latent at the current noise, returning it as is."""
        return lambda x, sigma: self._blend(denoiser(self._keep(x, sigma), sigma))

    def wrap_pair(self, pair: PairDenoiser | None) -> PairDenoiser | None:
        if pair is None:
            return None

        def both(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            guided, uncond = pair(self._keep(x, sigma), sigma)
            return self._blend(guided), uncond

        return both
