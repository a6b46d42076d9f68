"""The values that flow between diffusion nodes: socket types and the small classes behind them.

Conventions (as in ComfyUI): IMAGE is a float tensor (batch, height, width, 3) in 0..1; MASK is
(batch, height, width) in 0..1; LATENT is a (batch, channels, height/8, width/8) tensor already
multiplied by the VAE's scaling factor; CONDITIONING is the text encoder's hidden states
(batch, tokens, width). Tensors stay on the device they were made on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nodegraph.types import socket


@dataclass(eq=False)
class Model:
    """MODEL: the denoising network with the scheduler configuration it was trained with."""

    unet: Any
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    name: str
    preview_factors: torch.Tensor | None = None
    """Latent -> RGB map for live previews (nodes.preview), fitted to the checkpoint's VAE."""

    def cache_nbytes(self) -> int:
        return 0  # the weights belong to the model store, not to the run cache


@dataclass(eq=False)
class Clip:
    """CLIP: the tokenizer and text encoder."""

    tokenizer: Any
    text_encoder: Any
    device: torch.device
    dtype: torch.dtype
    name: str

    def cache_nbytes(self) -> int:
        return 0


@dataclass(eq=False)
class Vae:
    """VAE: the autoencoder between pixels and latents."""

    vae: Any
    device: torch.device
    dtype: torch.dtype
    name: str

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", None) or 1.0)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def cache_nbytes(self) -> int:
        return 0


@dataclass(eq=False)
class Noisy:
    """NOISY_LATENT: a noised latent and the part of the schedule that is left to walk.

    `steps` is the length of the whole schedule the scheduler is set to, `keep` how many of its
    steps are left and `start` the index into its timesteps where denoising begins (scheduler
    order included), so Denoise can rebuild the scheduler exactly; `timesteps` are the ones left.
    With no timesteps left, `latent` is the input, unchanged.
    """

    latent: torch.Tensor
    sampler: str
    scheduler: str
    steps: int
    keep: int
    start: int
    timesteps: torch.Tensor
    seed: int
    strength: float

    @property
    def remaining(self) -> int:
        """Scheduler timesteps left (a second-order sampler has about two per step)."""
        return int(self.timesteps.numel())


MODEL = socket("MODEL", Model)
CLIP = socket("CLIP", Clip)
VAE = socket("VAE", Vae)
CONDITIONING = socket("CONDITIONING", torch.Tensor)
LATENT = socket("LATENT", torch.Tensor)
NOISY_LATENT = socket("NOISY_LATENT", Noisy)
IMAGE = socket("IMAGE", torch.Tensor)
MASK = socket("MASK", torch.Tensor)
