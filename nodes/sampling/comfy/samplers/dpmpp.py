"""DPM-Solver++ (single- and multistep, ancestral and SDE), SEEDS, exp-Heun and ER-SDE samplers.

They step in half-log-SNR time lambda = log(alpha / sigma), which for these (non-flow) models is
-log(sigma); ComfyUI keeps the alpha = sigma * exp(lambda) factors even though they are 1 up to
rounding, so they are kept here too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ..sampler_api import NoiseSampler, SamplerRun, SamplerSpec, ancestral_step
from .steps import (
    ancestral_steps,
    cfg_pp_shifted,
    euler_to,
    guided_pair,
    h_phi_1,
    h_phi_2,
    half_log_snr,
    observe,
    observe_pair,
    schedule_steps,
    sigma_at,
)

Tensor = torch.Tensor


def dpmpp_2s_ancestral(
    run: SamplerRun,
    x: Tensor,
    sigmas: Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    cfg_pp: bool = False,
) -> Tensor:
    """Two-stage DPM-Solver++ to sigma_down (midpoint in lambda), then ancestral noise.

    With `cfg_pp`, as in ComfyUI, the final update pairs the first evaluation's guided x0 with the
    second evaluation's negative x0 (its post-cfg hook keeps only the latest one).
    """
    noise = run.default_noise(x)
    for i, sigma, sigma_next, down, up in ancestral_steps(sigmas, eta):
        denoised, uncond = observe_pair(run, i, x, sigma, cfg_pp)
        if down == 0:
            x = euler_to(x, sigma, down, denoised, uncond, cfg_pp)
        else:
            lam, lam_down = half_log_snr(sigma), half_log_snr(down)
            h = lam_down - lam
            lam_mid = lam + 0.5 * h
            shifted = cfg_pp_shifted(x, denoised, uncond, cfg_pp)
            x_mid = (sigma_at(lam_mid) / sigma_at(lam)) * shifted - (-h * 0.5).expm1() * denoised
            denoised_mid, uncond = guided_pair(run, x_mid, sigma_at(lam_mid), cfg_pp)
            shifted = cfg_pp_shifted(x, denoised, uncond, cfg_pp)
            x = (sigma_at(lam_down) / sigma_at(lam)) * shifted - (-h).expm1() * denoised_mid
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * s_noise * up
    return x


# -- the single-step SDE solvers: DPM-Solver++ SDE, SEEDS-2 / exponential Heun, SEEDS-3 -----------


class _Point(NamedTuple):
    """A point of an SDE step: its fraction r of the step, its lambda, sigma and alpha."""

    r: float
    lam: Tensor
    sigma: Tensor
    alpha: Tensor


def _point(r: float, lam: Tensor) -> _Point:
    """The point at lambda `lam`, fraction r of its step."""
    sigma = sigma_at(lam)
    return _Point(r, lam, sigma, sigma * lam.exp())


class _SdeStep:
    """One lambda step of the data-prediction SDE solvers: its points, moves and noise source."""

    def __init__(
        self,
        sigma: Tensor,
        sigma_next: Tensor,
        eta: float,
        noise: NoiseSampler | None,
        s_noise: float,
    ) -> None:
        self.sigma, self.eta, self.noise, self.s_noise = sigma, eta, noise, s_noise
        self.lam, lam_next = half_log_snr(sigma), half_log_snr(sigma_next)
        self.h = lam_next - self.lam
        self.h_eta = self.h * (eta + 1)
        self.end = _Point(1.0, lam_next, sigma_next, sigma_next * lam_next.exp())

    def point(self, r: float) -> _Point:
        """The point at fraction r of the step (a lerp in lambda)."""
        return _point(r, torch.lerp(self.lam, self.end.lam, r))

    def decay(self, x: Tensor, to: _Point) -> Tensor:
        """What is left of x at `to`: (its sigma / sigma) * e^(-r h eta) * x."""
        return to.sigma / self.sigma * (-to.r * self.h * self.eta).exp() * x

    def first_order(self, x: Tensor, x0: Tensor, to: _Point) -> Tensor:
        """The first-order (phi_1) move to `to` on one x0 estimate."""
        return self.decay(x, to) - to.alpha * h_phi_1(-to.r * self.h_eta) * x0

    def weighted(self, x: Tensor, x0_terms: Tensor, to: _Point) -> Tensor:
        """The move to `to` on a weighted sum of x0 estimates."""
        return self.decay(x, to) - to.alpha * x0_terms


class _CarriedNoise:
    """SEEDS's noise over a step's stages: fresh at the first, then carried, decayed, topped up."""

    def __init__(self, step: _SdeStep) -> None:
        self.step = step
        self.carried: Tensor | None = None
        self.r, self.sigma = 0.0, step.sigma

    def add(self, x: Tensor, to: _Point) -> Tensor:
        """x at `to` plus the noise carried there."""
        step, noise = self.step, self.step.noise
        if noise is None:
            return x
        if self.carried is None:
            fresh = (-2 * to.r * step.h * step.eta).expm1().neg().sqrt()
            self.carried = fresh * noise(self.sigma, to.sigma)
        else:
            segment = (self.r - to.r) * step.h * step.eta
            fresh = segment.mul(2).expm1().neg().sqrt() * noise(self.sigma, to.sigma)
            self.carried = self.carried * segment.exp() + fresh
        self.r, self.sigma = to.r, to.sigma
        return x + self.carried * to.sigma * step.s_noise


def _noisy(noise: NoiseSampler, eta: float, s_noise: float) -> NoiseSampler | None:
    """The noise an SDE solver adds, or None where eta or s_noise turns it off."""
    return noise if eta > 0 and s_noise > 0 else None


SdeMove = Callable[[Tensor, Tensor, _SdeStep], Tensor]
"""(x, its x0 estimate, the step) -> x at the step's end."""


def _sde_walk(
    run: SamplerRun,
    x: Tensor,
    sigmas: Tensor,
    move: SdeMove,
    eta: float,
    noise: NoiseSampler,
    s_noise: float,
) -> Tensor:
    """Each step: the model's x0 estimate, straight onto it into sigma 0, else `move` there."""
    added = _noisy(noise, eta, s_noise)
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = observe(run, i, x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            x = move(x, denoised, _SdeStep(sigma, sigma_next, eta, added, s_noise))
    return x


def _ancestral_stage(x: Tensor, x0: Tensor, step: _SdeStep, to: _Point) -> Tensor:
    """A first-order move towards `to`, ancestral: to where its sigma_down lands, noise up."""
    down, up = ancestral_step(sigma_at(step.lam), sigma_at(to.lam), step.eta)
    h_eff = half_log_snr(down) - step.lam
    alpha = step.sigma * step.lam.exp()
    x = (to.alpha / alpha) * (-h_eff).exp() * x - to.alpha * (-h_eff).expm1() * x0
    if step.noise is not None:
        x = x + to.alpha * step.noise(step.sigma, to.sigma) * step.s_noise * up
    return x


def dpmpp_sde(
    run: SamplerRun,
    x: Tensor,
    sigmas: Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
    cpu_tree: bool = True,
) -> Tensor:
    """DPM-Solver++ stochastic: an intermediate stage at lambda + r*h, Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    blend = 1 / (2 * r)

    def move(x: Tensor, denoised: Tensor, step: _SdeStep) -> Tensor:
        mid = _point(r, step.lam + r * step.h)
        denoised_mid = run.denoise(_ancestral_stage(x, denoised, step, mid), mid.sigma)
        mixed = (1 - blend) * denoised + blend * denoised_mid
        return _ancestral_stage(x, mixed, step, step.end)

    noise = run.brownian_noise(x, sigmas, cpu=cpu_tree)
    return _sde_walk(run, x, sigmas, move, eta, noise, s_noise)


def _seeds_stage_1(
    run: SamplerRun, x: Tensor, denoised: Tensor, step: _SdeStep, r: float
) -> tuple[_CarriedNoise, Tensor]:
    """SEEDS's first stage, a first-order move to fraction r: (its noise, the model's x0 there)."""
    carry, to = _CarriedNoise(step), step.point(r)
    return carry, run.denoise(carry.add(step.first_order(x, denoised, to), to), to.sigma)


def seeds_2(
    run: SamplerRun,
    x: Tensor,
    sigmas: Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
    solver_type: str = "phi_1",
) -> Tensor:
    """SEEDS-2 (stochastic exponential derivative-free, data prediction), two stages a step."""
    if solver_type not in ("phi_1", "phi_2"):
        raise ValueError("solver_type must be 'phi_1' or 'phi_2'")

    def move(x: Tensor, denoised: Tensor, step: _SdeStep) -> Tensor:
        carry, denoised_1 = _seeds_stage_1(run, x, denoised, step, r)
        if solver_type == "phi_1":
            x = step.first_order(x, torch.lerp(denoised, denoised_1, 1 / (2 * r)), step.end)
        else:
            b_1 = h_phi_2(-step.h_eta) / r
            b_0 = h_phi_1(-step.h_eta) - b_1
            x = step.weighted(x, b_0 * denoised + b_1 * denoised_1, step.end)
        return carry.add(x, step.end)

    return _sde_walk(run, x, sigmas, move, eta, run.default_noise(x), s_noise)


def seeds_3(
    run: SamplerRun,
    x: Tensor,
    sigmas: Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r_1: float = 1.0 / 3,
    r_2: float = 2.0 / 3,
) -> Tensor:
    """SEEDS-3: three stages a step at lambda fractions r_1 and r_2."""

    def move(x: Tensor, denoised: Tensor, step: _SdeStep) -> Tensor:
        carry, denoised_1 = _seeds_stage_1(run, x, denoised, step, r_1)
        second = step.point(r_2)
        a_1 = r_2 / r_1 * h_phi_2(-r_2 * step.h_eta)
        a_0 = h_phi_1(-r_2 * step.h_eta) - a_1
        x_2 = carry.add(step.weighted(x, a_0 * denoised + a_1 * denoised_1, second), second)
        denoised_2 = run.denoise(x_2, second.sigma)
        b_2 = h_phi_2(-step.h_eta) / r_2
        b_0 = h_phi_1(-step.h_eta) - b_2
        return carry.add(step.weighted(x, b_0 * denoised + b_2 * denoised_2, step.end), step.end)

    return _sde_walk(run, x, sigmas, move, eta, run.default_noise(x), s_noise)


# -- DPM-Solver++(2M) / (3M) SDE ----------------------------------------------------------------


def _sde_noise_scale(h: Tensor, eta: float) -> Tensor:
    """sqrt(1 - e^(-2 h eta)): the fresh-noise share of an SDE step of length h."""
    return (-2 * h * eta).expm1().neg().sqrt()


def dpmpp_multistep_sde(
    run: SamplerRun,
    x: Tensor,
    sigmas: Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    cpu_tree: bool = True,
) -> Tensor:
    """Multistep DPM-Solver++ SDE: 2M ('midpoint' or 'heun' correction) or 3M ('3m')."""
    if solver_type not in ("midpoint", "heun", "3m"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    order = 3 if solver_type == "3m" else 2
    if len(sigmas) <= 1:
        return x
    noise = _noisy(run.brownian_noise(x, sigmas, cpu=cpu_tree), eta, s_noise)
    # the newest first: previous x0 estimates and the lambda steps that followed them
    past_x0: list[Tensor] = []
    past_h: list[Tensor] = []
    h = None
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = observe(run, i, x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            step = _SdeStep(sigma, sigma_next, eta, noise, s_noise)
            x = step.first_order(x, denoised, step.end)
            x = _history_terms(x, denoised, past_x0, past_h, step, solver_type)
            if noise is not None:
                scale = _sde_noise_scale(step.h, eta)
                x = x + noise(sigma, sigma_next) * sigma_next * scale * s_noise
            h = step.h
        past_x0 = [denoised, *past_x0][: order - 1]
        if h is not None:
            past_h = [h, *past_h][: order - 1]
    return x


def _history_terms(
    x: Tensor,
    denoised: Tensor,
    past_x0: list[Tensor],
    past_h: list[Tensor],
    step: _SdeStep,
    solver_type: str,
) -> Tensor:
    """Add the higher-order terms the x0 history allows (none on the first step)."""
    if not past_h:
        return x
    h, h_eta, alpha_next = step.h, step.h_eta, step.end.alpha
    if solver_type == "3m":
        phi_2 = h_eta.neg().expm1() / h_eta + 1
        r0 = past_h[0] / h
        diff_0 = (denoised - past_x0[0]) / r0
        if len(past_h) < 2:
            return x + (alpha_next * phi_2) * diff_0
        r1 = past_h[1] / h
        diff_1 = (past_x0[0] - past_x0[1]) / r1
        first = diff_0 + (diff_0 - diff_1) * r0 / (r0 + r1)
        second = (diff_0 - diff_1) / (r0 + r1)
        phi_3 = phi_2 / h_eta - 0.5
        return x + (alpha_next * phi_2) * first - (alpha_next * phi_3) * second
    change = denoised - past_x0[0]
    inverse_ratio = 1 / (past_h[0] / h)
    if solver_type == "heun":
        weight = (-h_eta).expm1().neg() / (-h_eta) + 1
        return x + alpha_next * weight * inverse_ratio * change
    return x + 0.5 * alpha_next * (-h_eta).expm1().neg() * inverse_ratio * change


# -- ER-SDE ----------------------------------------------------------------------------------------

ER_SDE_POINTS = 200
"""Riemann-sum points for ER-SDE's noise-scaler integrals."""


def _er_noise_scaler(value: Tensor) -> Tensor:
    """ER-SDE-Solver-3's default noise scaler: v * (e^(v^0.3) + 10)."""
    return value * ((value**0.3).exp() + 10.0)


def er_sde(
    run: SamplerRun, x: Tensor, sigmas: Tensor, s_noise: float = 1.0, max_stage: int = 3
) -> Tensor:
    """Extended reverse-time SDE solver (VP ER-SDE-Solver-3), up to three stages of history."""
    noise = run.default_noise(x)
    grid = torch.arange(0, float(ER_SDE_POINTS), dtype=torch.float32, device=x.device)
    lambdas = sigma_at(half_log_snr(sigmas))  # sigma / alpha, rounded as ComfyUI rounds it
    prev_x0: Tensor | None = None
    prev_slope: Tensor | None = None
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = observe(run, i, x, sigma)
        stages = min(max_stage, i + 1)
        if sigma_next == 0:
            x = denoised
            prev_x0 = denoised
            continue
        lam, lam_next = lambdas[i], lambdas[i + 1]
        alpha, alpha_next = sigma / lam, sigma_next / lam_next
        scaled_next = _er_noise_scaler(lam_next)
        ratio = scaled_next / _er_noise_scaler(lam)
        x = alpha_next / alpha * ratio * x + alpha_next * (1 - ratio) * denoised
        if stages >= 2:
            dt = lam_next - lam
            width = -dt / float(ER_SDE_POINTS)
            points = lam_next + grid * width
            scaled = _er_noise_scaler(points)
            slope = (denoised - prev_x0) / (lam - lambdas[i - 1])
            integral = torch.sum(1 / scaled) * width
            x = x + alpha_next * (dt + integral * scaled_next) * slope
            if stages >= 3:
                integral_u = torch.sum((points - lam) / scaled) * width
                curve = (slope - prev_slope) / ((lam - lambdas[i - 2]) / 2)
                x = x + alpha_next * ((dt**2) / 2 + integral_u * scaled_next) * curve
            prev_slope = slope
        if s_noise > 0:
            spread = (lam_next**2 - lam**2 * ratio**2).sqrt().nan_to_num(nan=0.0)
            x = x + alpha_next * noise(sigma, sigma_next) * s_noise * spread
        prev_x0 = denoised
    return x


SAMPLERS: dict[str, SamplerSpec] = {
    "dpmpp_2s_ancestral": SamplerSpec(dpmpp_2s_ancestral, evaluations_per_step=2),
    "dpmpp_2s_ancestral_cfg_pp": SamplerSpec(
        dpmpp_2s_ancestral, evaluations_per_step=2, options={"cfg_pp": True}
    ),
    "dpmpp_sde": SamplerSpec(dpmpp_sde, evaluations_per_step=2),
    "dpmpp_sde_gpu": SamplerSpec(dpmpp_sde, evaluations_per_step=2, options={"cpu_tree": False}),
    "dpmpp_2m_sde": SamplerSpec(dpmpp_multistep_sde),
    "dpmpp_2m_sde_gpu": SamplerSpec(dpmpp_multistep_sde, options={"cpu_tree": False}),
    "dpmpp_2m_sde_heun": SamplerSpec(dpmpp_multistep_sde, options={"solver_type": "heun"}),
    "dpmpp_2m_sde_heun_gpu": SamplerSpec(
        dpmpp_multistep_sde, options={"solver_type": "heun", "cpu_tree": False}
    ),
    "dpmpp_3m_sde": SamplerSpec(dpmpp_multistep_sde, options={"solver_type": "3m"}),
    "dpmpp_3m_sde_gpu": SamplerSpec(
        dpmpp_multistep_sde, options={"solver_type": "3m", "cpu_tree": False}
    ),
    "exp_heun_2_x0": SamplerSpec(
        seeds_2,
        evaluations_per_step=2,
        options={"eta": 0.0, "s_noise": 0.0, "r": 1.0, "solver_type": "phi_2"},
    ),
    "exp_heun_2_x0_sde": SamplerSpec(
        seeds_2, evaluations_per_step=2, options={"r": 1.0, "solver_type": "phi_2"}
    ),
    "seeds_2": SamplerSpec(seeds_2, evaluations_per_step=2),
    "seeds_3": SamplerSpec(seeds_3, evaluations_per_step=3),
    "er_sde": SamplerSpec(er_sde),
}
