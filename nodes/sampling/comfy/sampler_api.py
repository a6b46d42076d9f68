"""What a sampler function gets: the guided denoiser, the model's sigma table, the seed and the
noise sources ComfyUI gives its k-diffusion samplers, and the per-step report.

A sampler is `fn(run: SamplerRun, x: Tensor, sigmas: Tensor) -> Tensor`: `x` is already noised
for `sigmas[0]` in k-diffusion's sigma space (x = x0 + sigma * eps), `sigmas` ends at the last
sigma to reach (usually 0), and the result is the latent at `sigmas[-1]`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .model_sampling import ModelSampling

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(sigma, sigma_next) -> a standard normal tensor shaped like the latent."""


Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x, sigma of shape [batch]) -> the guided estimate of the clean latent (x0)."""
PairDenoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(x, sigma of shape [batch]) -> (guided x0, the negative prompt's own x0): for cfg_pp."""
StepReport = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]
"""(step index, x, denoised, sigma) after each step: progress, preview, interrupt."""


@dataclass
class SamplerRun:
    """One sampling call as a sampler sees it."""

    denoiser: Denoiser
    model_sampling: ModelSampling
    seed: int | None = None
    report: StepReport | None = None
    pair_denoiser: PairDenoiser | None = None
    options: dict[str, Any] = field(default_factory=dict)
    evaluations: int = 0
    """Model evaluations so far (one per denoise call; bench/samplers.py reads it)."""

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The guided x0 estimate at `sigma` (a scalar, applied to the whole batch)."""
        self.evaluations += 1
        return self.denoiser(x, _per_sample(x, sigma))

    def denoise_pair(
        self, x: torch.Tensor, sigma: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided x0, unguided negative x0): the uncond pass is always run (cfg_pp samplers)."""
        if self.pair_denoiser is None:
            raise ValueError("this guider gives no negative prediction, which cfg_pp samplers need")
        self.evaluations += 1
        return self.pair_denoiser(x, _per_sample(x, sigma))

    def step(self, i: int, x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> None:
        """Report step `i` done (ComfyUI's callback)."""
        if self.report is not None:
            self.report(i, x, denoised, sigma)

    def default_noise(self, x: torch.Tensor) -> NoiseSampler:
        """ComfyUI's default noise sampler: a generator on x's device seeded with the seed,
        plus one on CPU (so the step noise is not the initial noise's stream)."""
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=x.device)
            generator.manual_seed((self.seed + 1 if x.device.type == "cpu" else self.seed) % 2**64)

        def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
            return torch.randn(
                x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator
            )

        return sample

    def brownian_noise(
        self, x: torch.Tensor, sigmas: torch.Tensor, cpu: bool = True
    ) -> NoiseSampler:
        """ComfyUI's Brownian-tree noise over [smallest non-zero sigma, largest sigma]
        (torchsde, entropy = the seed); `cpu` builds the tree on CPU (not for the _gpu names)."""
        from .noise import brownian_tree_noise

        positive = sigmas[sigmas > 0]
        return brownian_tree_noise(x, positive.min(), sigmas.max(), self.seed, cpu=cpu)


def _per_sample(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, device=x.device)
    if sigma.ndim == 0:
        return sigma * x.new_ones([x.shape[0]])
    return sigma


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The Karras ODE derivative dx/dsigma for a denoised estimate."""
    return (x - denoised) / sigma


def ancestral_step(
    sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """(sigma_down, sigma_up): where an ancestral step lands and how much noise it adds back."""
    if not eta:
        return sigma_next, 0.0
    up = min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    down = (sigma_next**2 - up**2) ** 0.5
    return down, up


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler name's function and what the sampling call must know about it."""

    fn: Callable[[SamplerRun, torch.Tensor, torch.Tensor], torch.Tensor]
    evaluations_per_step: float | None = 1
    """Model evaluations per step (None: adaptive); the bench checks no evaluation is wasted."""
    discard_penultimate_sigma: bool = False
    """ComfyUI computes the schedule for steps + 1 and drops the second-to-last sigma."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to fn (e.g. a variant)."""
    random_inpaint_noise: bool = False
    """Re-noise what a noise mask keeps with the seed + 1's noise, not the initial noise
    (ComfyUI's ddim)."""
