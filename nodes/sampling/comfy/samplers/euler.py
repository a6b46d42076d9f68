"""Euler, Heun and DPM-2 samplers (plain, ancestral and CFG++), with ComfyUI's numerics."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..sampler_api import SamplerRun, SamplerSpec, ancestral_step, to_d
from .steps import ancestral_steps, half_log_snr, observe, observe_pair, schedule_steps

Tensor = torch.Tensor

Move = Callable[[SamplerRun, Tensor, Tensor, Tensor, Tensor], Tensor]
"""(run, x, sigma, sigma_to, the x0 estimate at sigma) -> x moved to sigma_to."""


def _slope_at(run: SamplerRun, x: Tensor, sigma: Tensor) -> Tensor:
    """The ODE slope dx/dsigma from a model evaluation at sigma."""
    return to_d(x, sigma, run.denoise(x, sigma))


def _euler(run: SamplerRun, x: Tensor, sigma: Tensor, sigma_to: Tensor, x0: Tensor) -> Tensor:
    """Euler: one step along the slope at sigma."""
    return x + to_d(x, sigma, x0) * (sigma_to - sigma)


def _euler_to_x0(run: SamplerRun, x: Tensor, sigma: Tensor, sigma_to: Tensor, x0: Tensor) -> Tensor:
    """Euler, but straight onto the x0 estimate into sigma 0."""
    return x0 if sigma_to == 0 else _euler(run, x, sigma, sigma_to, x0)


def _heun(run: SamplerRun, x: Tensor, sigma: Tensor, sigma_to: Tensor, x0: Tensor) -> Tensor:
    """Heun (Karras et al. 2022, algorithm 2): the mean slope of both ends; Euler into sigma 0."""
    if sigma_to == 0:
        return _euler(run, x, sigma, sigma_to, x0)
    slope = to_d(x, sigma, x0)
    dt = sigma_to - sigma
    trial = x + slope * dt
    return x + (slope + _slope_at(run, trial, sigma_to)) / 2 * dt


def _log_midpoint(a: Tensor, b: Tensor) -> Tensor:
    """The geometric mean of two sigmas, as exp(lerp(log a, log b, 1/2))."""
    return a.log().lerp(b.log(), 0.5).exp()


def _dpm_2(run: SamplerRun, x: Tensor, sigma: Tensor, sigma_to: Tensor, x0: Tensor) -> Tensor:
    """DPM-Solver-2 style: the slope at the log-midpoint carries the step; Euler into sigma 0."""
    if sigma_to == 0:
        return _euler(run, x, sigma, sigma_to, x0)
    mid = _log_midpoint(sigma, sigma_to)
    x_mid = x + to_d(x, sigma, x0) * (mid - sigma)
    return x + _slope_at(run, x_mid, mid) * (sigma_to - sigma)


MOVES: dict[str, Move] = {
    "euler": _euler,
    "euler_to_x0": _euler_to_x0,
    "heun": _heun,
    "dpm_2": _dpm_2,
}
"""descend's step methods by name."""


def descend(
    run: SamplerRun,
    x: Tensor,
    sigmas: Tensor,
    method: str = "euler",
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> Tensor:
    """A `method` move (MOVES) to each sigma_down, then (eta != 0) noise up to the next sigma."""
    move = MOVES[method]
    noise = run.default_noise(x)
    for i, sigma, sigma_next, down, up in ancestral_steps(sigmas, eta):
        x = move(run, x, sigma, down, observe(run, i, x, sigma))
        if eta and down != 0:
            x = x + noise(sigma, sigma_next) * s_noise * up
    return x


def euler_ancestral_cfg_pp(
    run: SamplerRun, x: Tensor, sigmas: Tensor, eta: float = 1.0, s_noise: float = 1.0
) -> Tensor:
    """CFG++ Euler: re-noise the guided x0 along the negative prompt's own noise estimate."""
    noise = run.default_noise(x)
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised, uncond = observe_pair(run, i, x, sigma, True)
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


def heunpp2(run: SamplerRun, x: Tensor, sigmas: Tensor) -> Tensor:
    """Heun++: averages the slopes at up to three sigmas, weighted by sigma / sigma_start."""
    last = sigmas[-1]
    first = sigmas[0]
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = observe(run, i, x, sigma)
        slope = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == last:
            x = x + slope * dt
            continue
        x_1 = x + slope * dt
        slope_1 = _slope_at(run, x_1, sigma_next)
        sigma_after = sigmas[i + 2]
        if sigma_after == last:
            w_1 = sigma_next / (2 * first)
            x = x + (slope * (1 - w_1) + slope_1 * w_1) * dt
            continue
        x_2 = x_1 + slope_1 * (sigma_after - sigma_next)
        slope_2 = _slope_at(run, x_2, sigma_after)
        scale = 3 * first
        w_1, w_2 = sigma_next / scale, sigma_after / scale
        x = x + ((1 - w_1 - w_2) * slope + w_1 * slope_1 + w_2 * slope_2) * dt
    return x


SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec(descend),
    "euler_cfg_pp": SamplerSpec(euler_ancestral_cfg_pp, options={"eta": 0.0, "s_noise": 0.0}),
    "euler_ancestral": SamplerSpec(descend, options={"method": "euler_to_x0", "eta": 1.0}),
    "euler_ancestral_cfg_pp": SamplerSpec(euler_ancestral_cfg_pp),
    "heun": SamplerSpec(descend, evaluations_per_step=2, options={"method": "heun"}),
    "heunpp2": SamplerSpec(heunpp2, evaluations_per_step=3),
    "dpm_2": SamplerSpec(
        descend, evaluations_per_step=2, discard_penultimate_sigma=True, options={"method": "dpm_2"}
    ),
    "dpm_2_ancestral": SamplerSpec(
        descend,
        evaluations_per_step=2,
        discard_penultimate_sigma=True,
        options={"method": "dpm_2", "eta": 1.0},
    ),
}
