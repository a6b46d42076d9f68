"""Euler, Heun and DPM-2 samplers (plain, ancestral and CFG++), with ComfyUI's numerics."""

from __future__ import annotations

import torch

from ..sampler_api import SamplerRun, SamplerSpec, ancestral_step, to_d
from .dpmpp import half_log_snr, schedule_steps

Tensor = torch.Tensor


def euler(run: SamplerRun, x: Tensor, sigmas: Tensor) -> Tensor:
    """First-order steps along the probability-flow ODE."""
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = run.denoise(x, sigma)
        slope = to_d(x, sigma, denoised)
        run.step(i, x, denoised, sigma)
        x = x + slope * (sigma_next - sigma)
    return x


def euler_ancestral(
    run: SamplerRun, x: Tensor, sigmas: Tensor, eta: float = 1.0, s_noise: float = 1.0
) -> Tensor:
    """Euler down to sigma_down, then fresh noise back up to the next sigma."""
    noise = run.default_noise(x)
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = run.denoise(x, sigma)
        down, up = ancestral_step(sigma, sigma_next, eta)
        run.step(i, x, denoised, sigma)
        if down == 0:
            x = denoised
            continue
        slope = to_d(x, sigma, denoised)
        x = x + slope * (down - sigma) + noise(sigma, sigma_next) * s_noise * up
    return x


def euler_ancestral_cfg_pp(
    run: SamplerRun, x: Tensor, sigmas: Tensor, eta: float = 1.0, s_noise: float = 1.0
) -> Tensor:
    """CFG++ Euler: re-noise the guided x0 along the negative prompt's own noise estimate."""
    noise = run.default_noise(x)
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised, uncond = run.denoise_pair(x, sigma)
        run.step(i, x, denoised, sigma)
        if sigma_next == 0:
            x = denoised
            continue
        # alpha is 1 for these (non-flow) models, but ComfyUI computes it, rounding and all
        alpha = sigma * half_log_snr(sigma).exp()
        alpha_next = sigma_next * half_log_snr(sigma_next).exp()
        slope = to_d(x, sigma, alpha * uncond)
        down, up = ancestral_step(sigma / alpha, sigma_next / alpha_next, eta)
        x = alpha_next * denoised + alpha_next * down * slope
        if eta > 0 and s_noise > 0:
            x = x + alpha_next * noise(sigma, sigma_next) * s_noise * up
    return x


def heun(run: SamplerRun, x: Tensor, sigmas: Tensor) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, algorithm 2); Euler into sigma 0."""
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = run.denoise(x, sigma)
        slope = to_d(x, sigma, denoised)
        run.step(i, x, denoised, sigma)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + slope * dt
            continue
        trial = x + slope * dt
        slope_next = to_d(trial, sigma_next, run.denoise(trial, sigma_next))
        x = x + (slope + slope_next) / 2 * dt
    return x


def heunpp2(run: SamplerRun, x: Tensor, sigmas: Tensor) -> Tensor:
    """Heun++: averages the slopes at up to three sigmas, weighted by sigma / sigma_start."""
    last = sigmas[-1]
    first = sigmas[0]
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        slope = to_d(x, sigma, denoised)
        run.step(i, x, denoised, sigma)
        dt = sigma_next - sigma
        if sigma_next == last:
            x = x + slope * dt
            continue
        x_1 = x + slope * dt
        slope_1 = to_d(x_1, sigma_next, run.denoise(x_1, sigma_next))
        sigma_after = sigmas[i + 2]
        if sigma_after == last:
            w_1 = sigma_next / (2 * first)
            x = x + (slope * (1 - w_1) + slope_1 * w_1) * dt
            continue
        x_2 = x_1 + slope_1 * (sigma_after - sigma_next)
        slope_2 = to_d(x_2, sigma_after, run.denoise(x_2, sigma_after))
        scale = 3 * first
        w_1, w_2 = sigma_next / scale, sigma_after / scale
        x = x + ((1 - w_1 - w_2) * slope + w_1 * slope_1 + w_2 * slope_2) * dt
    return x


def _log_midpoint(a: Tensor, b: Tensor) -> Tensor:
    """The geometric mean of two sigmas, as exp(lerp(log a, log b, 1/2))."""
    return a.log().lerp(b.log(), 0.5).exp()


def dpm_2(run: SamplerRun, x: Tensor, sigmas: Tensor) -> Tensor:
    """DPM-Solver-2 style: the slope at the log-midpoint carries the whole step."""
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = run.denoise(x, sigma)
        slope = to_d(x, sigma, denoised)
        run.step(i, x, denoised, sigma)
        if sigma_next == 0:
            x = x + slope * (sigma_next - sigma)
            continue
        mid = _log_midpoint(sigma, sigma_next)
        x_mid = x + slope * (mid - sigma)
        slope_mid = to_d(x_mid, mid, run.denoise(x_mid, mid))
        x = x + slope_mid * (sigma_next - sigma)
    return x


def dpm_2_ancestral(
    run: SamplerRun, x: Tensor, sigmas: Tensor, eta: float = 1.0, s_noise: float = 1.0
) -> Tensor:
    """DPM-2 down to sigma_down, then fresh noise back up to the next sigma."""
    noise = run.default_noise(x)
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = run.denoise(x, sigma)
        down, up = ancestral_step(sigma, sigma_next, eta)
        run.step(i, x, denoised, sigma)
        slope = to_d(x, sigma, denoised)
        if down == 0:
            x = x + slope * (down - sigma)
            continue
        mid = _log_midpoint(sigma, down)
        x_mid = x + slope * (mid - sigma)
        slope_mid = to_d(x_mid, mid, run.denoise(x_mid, mid))
        x = x + slope_mid * (down - sigma)
        x = x + noise(sigma, sigma_next) * s_noise * up
    return x


SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec(euler),
    "euler_cfg_pp": SamplerSpec(euler_ancestral_cfg_pp, options={"eta": 0.0, "s_noise": 0.0}),
    "euler_ancestral": SamplerSpec(euler_ancestral),
    "euler_ancestral_cfg_pp": SamplerSpec(euler_ancestral_cfg_pp),
    "heun": SamplerSpec(heun, evaluations_per_step=2),
    "heunpp2": SamplerSpec(heunpp2, evaluations_per_step=3),
    "dpm_2": SamplerSpec(dpm_2, evaluations_per_step=2, discard_penultimate_sigma=True),
    "dpm_2_ancestral": SamplerSpec(
        dpm_2_ancestral, evaluations_per_step=2, discard_penultimate_sigma=True
    ),
}
