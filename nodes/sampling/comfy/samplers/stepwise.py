"""Samplers that redraw noise each step from the x0 estimate: DDPM's posterior and LCM."""

from __future__ import annotations

import torch

from ..sampler_api import NoiseSampler, SamplerRun, SamplerSpec
from .steps import observe, schedule_steps

Tensor = torch.Tensor


def _ddpm_posterior(
    x: Tensor, sigma: Tensor, sigma_next: Tensor, eps: Tensor, noise: NoiseSampler
) -> Tensor:
    """One ancestral DDPM step in variance-preserving space (x scaled by 1/sqrt(1 + sigma^2))."""
    alpha_bar = 1 / ((sigma * sigma) + 1)
    alpha_bar_next = 1 / ((sigma_next * sigma_next) + 1)
    alpha = alpha_bar / alpha_bar_next
    mean = (1.0 / alpha).sqrt() * (x - (1 - alpha) * eps / (1 - alpha_bar).sqrt())
    if sigma_next > 0:
        spread = ((1 - alpha) * (1.0 - alpha_bar_next) / (1.0 - alpha_bar)).sqrt()
        mean = mean + spread * noise(sigma, sigma_next)
    return mean


def ddpm(run: SamplerRun, x: Tensor, sigmas: Tensor) -> Tensor:
    """DDPM ancestral sampling on the given sigmas."""
    noise = run.default_noise(x)
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = observe(run, i, x, sigma)
        scaled = x / torch.sqrt(1.0 + sigma**2.0)
        x = _ddpm_posterior(scaled, sigma, sigma_next, (x - denoised) / sigma, noise)
        if sigma_next != 0:
            x = x * torch.sqrt(1.0 + sigma_next**2.0)
    return x


def lcm(run: SamplerRun, x: Tensor, sigmas: Tensor) -> Tensor:
    """Latent-consistency sampling: jump to the x0 estimate, then noise it to the next sigma."""
    noise = run.default_noise(x)
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = observe(run, i, x, sigma)
        x = denoised
        if sigma_next > 0:
            x = run.model_sampling.noise_scaling(sigma_next, noise(sigma, sigma_next), x)
    return x


SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(ddpm),
    "lcm": SamplerSpec(lcm),
}
