"""DPM-Solver++ (single- and multistep, ancestral and SDE), SEEDS, exp-Heun and ER-SDE samplers.

They step in half-log-SNR time lambda = log(alpha / sigma), which for these (non-flow) models is
-log(sigma); ComfyUI keeps the alpha = sigma * exp(lambda) factors even though they are 1 up to
rounding, so they are kept here too.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..sampler_api import NoiseSampler, SamplerRun, SamplerSpec, ancestral_step, to_d

Tensor = torch.Tensor


# -- shared with euler and multistep: the step loop, exponential-integrator math -------------------


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


# -- DPM-Solver++(2S) ancestral ----------------------------------------------------------------


def dpmpp_2s_ancestral(
    run: SamplerRun, x: Tensor, sigmas: Tensor, eta: float = 1.0, s_noise: float = 1.0
) -> Tensor:
    """Two-stage DPM-Solver++ to sigma_down (midpoint in lambda), then ancestral noise."""
    noise = run.default_noise(x)
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = run.denoise(x, sigma)
        down, up = ancestral_step(sigma, sigma_next, eta)
        run.step(i, x, denoised, sigma)
        if down == 0:
            x = x + to_d(x, sigma, denoised) * (down - sigma)
        else:
            lam, lam_down = half_log_snr(sigma), half_log_snr(down)
            h = lam_down - lam
            lam_mid = lam + 0.5 * h
            x_mid = (sigma_at(lam_mid) / sigma_at(lam)) * x - (-h * 0.5).expm1() * denoised
            denoised_mid = run.denoise(x_mid, sigma_at(lam_mid))
            x = (sigma_at(lam_down) / sigma_at(lam)) * x - (-h).expm1() * denoised_mid
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * s_noise * up
    return x


def dpmpp_2s_ancestral_cfg_pp(
    run: SamplerRun, x: Tensor, sigmas: Tensor, eta: float = 1.0, s_noise: float = 1.0
) -> Tensor:
    """CFG++ DPM-Solver++(2S) ancestral.

    As in ComfyUI, the final update pairs the first evaluation's guided x0 with the second
    evaluation's negative x0 (its post-cfg hook keeps only the latest one).
    """
    noise = run.default_noise(x)
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised, uncond = run.denoise_pair(x, sigma)
        down, up = ancestral_step(sigma, sigma_next, eta)
        run.step(i, x, denoised, sigma)
        if down == 0:
            x = denoised + to_d(x, sigma, uncond) * down
        else:
            lam, lam_down = half_log_snr(sigma), half_log_snr(down)
            h = lam_down - lam
            lam_mid = lam + 0.5 * h
            shifted = x + (denoised - uncond)
            x_mid = (sigma_at(lam_mid) / sigma_at(lam)) * shifted - (-h * 0.5).expm1() * denoised
            denoised_mid, uncond = run.denoise_pair(x_mid, sigma_at(lam_mid))
            shifted = x + (denoised - uncond)
            x = (sigma_at(lam_down) / sigma_at(lam)) * shifted - (-h).expm1() * denoised_mid
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * s_noise * up
    return x


# -- DPM-Solver++ SDE (single step, Brownian noise) ---------------------------------------------


def _ancestral_lambda(lam: Tensor, lam_to: Tensor, eta: float) -> tuple[Tensor, Tensor | float]:
    """The ancestral split of a lambda step: (lambda landed on, noise sigma to add)."""
    down, up = ancestral_step(sigma_at(lam), sigma_at(lam_to), eta)
    return half_log_snr(down), up


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
    noise = run.brownian_noise(x, sigmas, cpu=cpu_tree)
    noisy = eta > 0 and s_noise > 0
    blend = 1 / (2 * r)
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = run.denoise(x, sigma)
        run.step(i, x, denoised, sigma)
        if sigma_next == 0:
            x = denoised
            continue
        lam, lam_next = half_log_snr(sigma), half_log_snr(sigma_next)
        h = lam_next - lam
        lam_mid = lam + r * h
        sigma_mid = sigma_at(lam_mid)
        alpha = sigma * lam.exp()
        alpha_mid = sigma_mid * lam_mid.exp()
        alpha_next = sigma_next * lam_next.exp()

        reached, up = _ancestral_lambda(lam, lam_mid, eta)
        h_eff = reached - lam
        x_mid = (alpha_mid / alpha) * (-h_eff).exp() * x - alpha_mid * (-h_eff).expm1() * denoised
        if noisy:
            x_mid = x_mid + alpha_mid * noise(sigma, sigma_mid) * s_noise * up
        denoised_mid = run.denoise(x_mid, sigma_mid)

        reached, up = _ancestral_lambda(lam, lam_next, eta)
        h_eff = reached - lam
        mixed = (1 - blend) * denoised + blend * denoised_mid
        x = (alpha_next / alpha) * (-h_eff).exp() * x - alpha_next * (-h_eff).expm1() * mixed
        if noisy:
            x = x + alpha_next * noise(sigma, sigma_next) * s_noise * up
    return x


# -- DPM-Solver++(2M) / (3M) SDE ----------------------------------------------------------------


def _sde_noise_scale(h: Tensor, eta: float) -> Tensor:
    """sqrt(1 - e^(-2 h eta)): the fresh-noise share of an SDE step of length h."""
    return (-2 * h * eta).expm1().neg().sqrt()


def dpmpp_2m_sde(
    run: SamplerRun,
    x: Tensor,
    sigmas: Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    cpu_tree: bool = True,
) -> Tensor:
    """Second-order multistep DPM-Solver++ SDE ('midpoint' or 'heun' correction)."""
    return _dpmpp_multistep_sde(run, x, sigmas, eta, s_noise, cpu_tree, 2, solver_type)


def dpmpp_3m_sde(
    run: SamplerRun,
    x: Tensor,
    sigmas: Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    cpu_tree: bool = True,
) -> Tensor:
    """Third-order multistep DPM-Solver++ SDE."""
    return _dpmpp_multistep_sde(run, x, sigmas, eta, s_noise, cpu_tree, 3, "3m")


def _dpmpp_multistep_sde(
    run: SamplerRun,
    x: Tensor,
    sigmas: Tensor,
    eta: float,
    s_noise: float,
    cpu_tree: bool,
    order: int,
    solver_type: str,
) -> Tensor:
    """The 2M / 3M SDE loop: a first-order exponential step plus history corrections."""
    if solver_type not in ("midpoint", "heun", "3m"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    if len(sigmas) <= 1:
        return x
    noise = run.brownian_noise(x, sigmas, cpu=cpu_tree)
    # the newest first: previous x0 estimates and the lambda steps that followed them
    past_x0: list[Tensor] = []
    past_h: list[Tensor] = []
    h = None
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = run.denoise(x, sigma)
        run.step(i, x, denoised, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            lam, lam_next = half_log_snr(sigma), half_log_snr(sigma_next)
            h = lam_next - lam
            h_eta = h * (eta + 1)
            alpha_next = sigma_next * lam_next.exp()
            x = sigma_next / sigma * (-h * eta).exp() * x
            x = x + alpha_next * (-h_eta).expm1().neg() * denoised
            x = _history_terms(x, denoised, past_x0, past_h, h, h_eta, alpha_next, solver_type)
            if eta > 0 and s_noise > 0:
                x = x + noise(sigma, sigma_next) * sigma_next * _sde_noise_scale(h, eta) * s_noise
        past_x0 = [denoised, *past_x0][: order - 1]
        if h is not None:
            past_h = [h, *past_h][: order - 1]
    return x


def _history_terms(
    x: Tensor,
    denoised: Tensor,
    past_x0: list[Tensor],
    past_h: list[Tensor],
    h: Tensor,
    h_eta: Tensor,
    alpha_next: Tensor,
    solver_type: str,
) -> Tensor:
    """Add the higher-order terms the x0 history allows (none on the first step)."""
    if not past_h:
        return x
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


# -- SEEDS-2 / exponential Heun / SEEDS-3 ---------------------------------------------------------


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
    noise = run.default_noise(x)
    noisy = eta > 0 and s_noise > 0
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = run.denoise(x, sigma)
        run.step(i, x, denoised, sigma)
        if sigma_next == 0:
            x = denoised
            continue
        lam, lam_next = half_log_snr(sigma), half_log_snr(sigma_next)
        h = lam_next - lam
        h_eta = h * (eta + 1)
        lam_1 = torch.lerp(lam, lam_next, r)
        sigma_1 = sigma_at(lam_1)
        alpha_1 = sigma_1 * lam_1.exp()
        alpha_next = sigma_next * lam_next.exp()

        x_1 = sigma_1 / sigma * (-r * h * eta).exp() * x
        x_1 = x_1 - alpha_1 * h_phi_1(-r * h_eta) * denoised
        if noisy:
            carried = (-2 * r * h * eta).expm1().neg().sqrt() * noise(sigma, sigma_1)
            x_1 = x_1 + carried * sigma_1 * s_noise
        denoised_1 = run.denoise(x_1, sigma_1)

        decay = sigma_next / sigma * (-h * eta).exp() * x
        if solver_type == "phi_1":
            x = decay - alpha_next * h_phi_1(-h_eta) * torch.lerp(denoised, denoised_1, 1 / (2 * r))
        else:
            b_1 = h_phi_2(-h_eta) / r
            b_0 = h_phi_1(-h_eta) - b_1
            x = decay - alpha_next * (b_0 * denoised + b_1 * denoised_1)
        if noisy:
            carried = _carry_noise(carried, (r - 1) * h * eta, noise, sigma_1, sigma_next)
            x = x + carried * sigma_next * s_noise
    return x


def _carry_noise(
    carried: Tensor, segment: Tensor, noise: NoiseSampler, sigma: Tensor, sigma_next: Tensor
) -> Tensor:
    """Decay the noise carried from the previous stage and top it up with fresh noise."""
    return carried * segment.exp() + segment.mul(2).expm1().neg().sqrt() * noise(sigma, sigma_next)


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
    noise = run.default_noise(x)
    noisy = eta > 0 and s_noise > 0
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = run.denoise(x, sigma)
        run.step(i, x, denoised, sigma)
        if sigma_next == 0:
            x = denoised
            continue
        lam, lam_next = half_log_snr(sigma), half_log_snr(sigma_next)
        h = lam_next - lam
        h_eta = h * (eta + 1)
        lam_1, lam_2 = torch.lerp(lam, lam_next, r_1), torch.lerp(lam, lam_next, r_2)
        sigma_1, sigma_2 = sigma_at(lam_1), sigma_at(lam_2)
        alpha_1, alpha_2 = sigma_1 * lam_1.exp(), sigma_2 * lam_2.exp()
        alpha_next = sigma_next * lam_next.exp()

        x_1 = sigma_1 / sigma * (-r_1 * h * eta).exp() * x
        x_1 = x_1 - alpha_1 * h_phi_1(-r_1 * h_eta) * denoised
        if noisy:
            carried = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise(sigma, sigma_1)
            x_1 = x_1 + carried * sigma_1 * s_noise
        denoised_1 = run.denoise(x_1, sigma_1)

        a_1 = r_2 / r_1 * h_phi_2(-r_2 * h_eta)
        a_0 = h_phi_1(-r_2 * h_eta) - a_1
        x_2 = sigma_2 / sigma * (-r_2 * h * eta).exp() * x
        x_2 = x_2 - alpha_2 * (a_0 * denoised + a_1 * denoised_1)
        if noisy:
            carried = _carry_noise(carried, (r_1 - r_2) * h * eta, noise, sigma_1, sigma_2)
            x_2 = x_2 + carried * sigma_2 * s_noise
        denoised_2 = run.denoise(x_2, sigma_2)

        b_2 = h_phi_2(-h_eta) / r_2
        b_0 = h_phi_1(-h_eta) - b_2
        x = sigma_next / sigma * (-h * eta).exp() * x
        x = x - alpha_next * (b_0 * denoised + b_2 * denoised_2)
        if noisy:
            carried = _carry_noise(carried, (r_2 - 1) * h * eta, noise, sigma_2, sigma_next)
            x = x + carried * sigma_next * s_noise
    return x


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
        denoised = run.denoise(x, sigma)
        run.step(i, x, denoised, sigma)
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
    "dpmpp_2s_ancestral_cfg_pp": SamplerSpec(dpmpp_2s_ancestral_cfg_pp, evaluations_per_step=2),
    "dpmpp_sde": SamplerSpec(dpmpp_sde, evaluations_per_step=2),
    "dpmpp_sde_gpu": SamplerSpec(dpmpp_sde, evaluations_per_step=2, options={"cpu_tree": False}),
    "dpmpp_2m_sde": SamplerSpec(dpmpp_2m_sde),
    "dpmpp_2m_sde_gpu": SamplerSpec(dpmpp_2m_sde, options={"cpu_tree": False}),
    "dpmpp_2m_sde_heun": SamplerSpec(dpmpp_2m_sde, options={"solver_type": "heun"}),
    "dpmpp_2m_sde_heun_gpu": SamplerSpec(
        dpmpp_2m_sde, options={"solver_type": "heun", "cpu_tree": False}
    ),
    "dpmpp_3m_sde": SamplerSpec(dpmpp_3m_sde),
    "dpmpp_3m_sde_gpu": SamplerSpec(dpmpp_3m_sde, options={"cpu_tree": False}),
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
