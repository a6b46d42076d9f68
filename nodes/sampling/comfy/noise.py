"""ComfyUI's noise: the initial noise from a seed, and the Brownian-tree noise of SDE samplers."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...values import Latent
from .sampler_api import NoiseSampler


def initial_noise(
    latent: torch.Tensor, seed: int, batch_index: Sequence[int] | None = None
) -> torch.Tensor:
    """ComfyUI's prepare_noise: one CPU draw for the whole batch from the reseeded global
    generator, in the latent's dtype; with `batch_index`, one [1, C, H, W] draw per index up
    to the largest, so image k gets the noise of a single run at index k."""
    generator = torch.manual_seed(seed)
    shape, dtype = latent.shape, latent.dtype
    if batch_index is None:
        return torch.randn(shape, dtype=dtype, layout=latent.layout, generator=generator)
    wanted = set(batch_index)
    draws: dict[int, torch.Tensor] = {}
    for i in range(max(batch_index) + 1):
        noise = torch.randn((1, *shape[1:]), dtype=dtype, layout=latent.layout, generator=generator)
        if i in wanted:
            draws[i] = noise
    return torch.cat([draws[i] for i in batch_index])


class _Tree:
    """A torchsde BrownianTree over [t0, t1] either way round (sign kept), on CPU or x's device."""

    def __init__(
        self, x: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, seed: int | None, cpu: bool
    ):
        import torchsde

        self.cpu = cpu
        t0, t1, self.sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w0 = torch.zeros_like(x)
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, ()).item())
        if cpu:
            t0, w0, t1 = t0.detach().cpu(), w0.detach().cpu(), t1.detach().cpu()
        self.tree = torchsde.BrownianTree(t0, w0, t1, entropy=seed)

    def __call__(self, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        t0, t1, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        device, dtype = t0.device, t0.dtype
        if self.cpu:
            t0, t1 = t0.detach().cpu().float(), t1.detach().cpu().float()
        with warnings.catch_warnings():  # torchsde warns of float32 rounding at the ends
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
            w = self.tree(t0, t1).to(device=device, dtype=dtype)
        return w * (self.sign * sign)


def brownian_tree_noise(
    x: torch.Tensor,
    sigma_min: torch.Tensor,
    sigma_max: torch.Tensor,
    seed: int | None,
    cpu: bool = True,
) -> NoiseSampler:
    """ComfyUI's BrownianTreeNoiseSampler: the tree's increment between two sigmas, normalised
    to unit variance; the same seed gives the same noise whatever the step sizes."""
    tree = _Tree(x, torch.as_tensor(sigma_min), torch.as_tensor(sigma_max), seed, cpu)

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        return tree(t0, t1) / (t1 - t0).abs().sqrt()

    return sample


@dataclass(frozen=True)
class Noise:
    """NOISE: where a sampling call's initial noise comes from (RandomNoise / DisableNoise).

    `seed` is also the seed of the samplers' own step noise (DisableNoise's is 0, as ComfyUI's).
    """

    seed: int
    enabled: bool = True

    def generate(self, latent: Latent) -> torch.Tensor:
        """The noise for a LATENT (its batch indices pick each image's draw)."""
        samples = latent.samples
        if not self.enabled:
            return torch.zeros(samples.shape, dtype=samples.dtype, layout=samples.layout)
        return initial_noise(samples.cpu(), self.seed, latent.batch_index)
