"""Running a ComfyUI sampling call inside a node: progress, previews and interrupt per step."""

from __future__ import annotations

import torch

from nodegraph import NodeContext

from ..values import Latent
from .comfy.guidance import Guider
from .comfy.run import Sampler, sample
from .preview import latent_preview


def sample_latent(
    ctx: NodeContext,
    guider: Guider,
    sampler: Sampler,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    latent: Latent,
    seed: int,
) -> tuple[Latent, Latent]:
    """nodes.sampling.comfy.run.sample on a LATENT (its noise mask honoured), reporting each
    step to the node's context: (the sampled latent, the last step's clean estimate)."""
    total = max(len(sigmas) - 1, 1)
    factors = guider.model.preview_factors

    def report(i: int, x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> None:
        preview = None if factors is None else latent_preview(denoised, factors)
        ctx.progress(min(i + 1, total), total, preview=preview)

    result = sample(guider, sampler, sigmas, noise, latent.samples, seed, report, latent.noise_mask)
    return latent.like(result.latent), latent.like(result.denoised)
