"""What the sampler modules share: the step loop, the model call with its step report, Euler
and CFG++ moves, and the exponential-integrator math in half-log-SNR time."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..sampler_api import SamplerRun, ancestral_step, to_d

Tensor = torch.Tensor


def half_log_snr(sigma: Tensor) -> Tensor:
    """lambda = log(alpha / sigma) = -log(sigma) for a variance-exploding sigma."""
    return sigma.log().neg()


def sigma_at(lam: Tensor) -> Tensor:
    """The sigma of a half-log-SNR (the inverse of half_log_snr)."""
    return lam.neg().exp()


def h_phi_1(h: Tensor) -> Tensor:
    """h * phi_1(h) = e^h - 1."""
    return torch.expm1(h)


def h_phi_2(h: Tensor) -> Tensor:
    """h * phi_2(h) = (e^h - 1 - h) / h."""
    return (torch.expm1(h) - h) / h


def schedule_steps(sigmas: Tensor) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(step index, sigma, next sigma) for each step of a schedule."""
    return zip(range(len(sigmas) - 1), sigmas[:-1], sigmas[1:], strict=True)


def ancestral_steps(
    sigmas: Tensor, eta: float
) -> Iterator[tuple[int, Tensor, Tensor, Tensor, Tensor | float]]:
    """(step index, sigma, next sigma, sigma_down, sigma_up) for each step: its ancestral split."""
    for i, sigma, sigma_next in schedule_steps(sigmas):
        yield i, sigma, sigma_next, *ancestral_step(sigma, sigma_next, eta)


def observe(run: SamplerRun, i: int, x: Tensor, sigma: Tensor) -> Tensor:
    """The model's x0 estimate at sigma, reported as step i's."""
    denoised = run.denoise(x, sigma)
    run.step(i, x, denoised, sigma)
    return denoised


def guided_pair(run: SamplerRun, x: Tensor, sigma: Tensor, cfg_pp: bool) -> tuple[Tensor, Tensor]:
    """(guided x0, the x0 a step moves along: the negative prompt's for CFG++, else the guided)."""
    if cfg_pp:
        return run.denoise_pair(x, sigma)
    denoised = run.denoise(x, sigma)
    return denoised, denoised


def observe_pair(
    run: SamplerRun, i: int, x: Tensor, sigma: Tensor, cfg_pp: bool
) -> tuple[Tensor, Tensor]:
    """guided_pair at sigma, reported as step i's."""
    denoised, uncond = guided_pair(run, x, sigma, cfg_pp)
    run.step(i, x, denoised, sigma)
    return denoised, uncond


def euler_to(
    x: Tensor, sigma: Tensor, sigma_to: Tensor, denoised: Tensor, uncond: Tensor, cfg_pp: bool
) -> Tensor:
    """An Euler step to sigma_to; CFG++'s starts from the guided x0 along the negative's slope."""
    slope = to_d(x, sigma, uncond)
    return denoised + slope * sigma_to if cfg_pp else x + slope * (sigma_to - sigma)


def cfg_pp_shifted(x: Tensor, denoised: Tensor, uncond: Tensor, cfg_pp: bool) -> Tensor:
    """Where a CFG++ update starts: x moved by (guided - negative) x0; x itself without CFG++."""
    return x + (denoised - uncond) if cfg_pp else x


# -- DPM-Solver++(2S) ancestral ----------------------------------------------------------------
