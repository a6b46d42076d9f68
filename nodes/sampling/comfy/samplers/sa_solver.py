"""SA-Solver: stochastic Adams predictor-corrector in half-log-SNR (arXiv:2309.05019).

The predictor extrapolates the last few x0 estimates (Lagrange in lambda = -log(sigma)) over the
next step and adds fresh noise while sigma is inside the stochastic window (by default the middle
of the schedule, 20% .. 80%); the corrector redoes the step just taken with the new estimate.
sa_solver_pece evaluates the model again on each corrected state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..sampler_api import SamplerRun, SamplerSpec

Tensor = torch.Tensor

Tau = Callable[[Tensor | float], float]
"""sigma -> the SDE's stochastic strength tau there (0: an ODE step)."""


def window_tau(start_sigma: float, end_sigma: float, eta: float = 1.0) -> Tau:
    """tau = eta for sigmas in [end_sigma, start_sigma], else 0."""

    def tau(sigma: Tensor | float) -> float:
        if eta <= 0:
            return 0.0
        value = sigma.item() if isinstance(sigma, Tensor) else sigma
        return eta if start_sigma >= value >= end_sigma else 0.0

    return tau


def _exp_moments(s: Tensor, t: Tensor, count: int, tau: float) -> Tensor:
    """(1 + tau^2) * int_s^t exp((1 + tau^2) x) x^p dx / exp((1 + tau^2) t) for p < count,
    by repeated integration by parts (a signed lower-triangular matrix of factorial ratios)."""
    rate = 1 + tau**2
    p = torch.arange(count, dtype=s.dtype, device=s.device)
    boundary = t**p - s**p * (-rate * (t - s)).exp()
    depth = p.unsqueeze(1) - p.unsqueeze(0)
    log_fact = (p + 1).lgamma()
    log_ratio = log_fact.unsqueeze(1) - log_fact.unsqueeze(0)
    if tau > 0:
        log_ratio = log_ratio - depth * math.log(rate)
    sign = torch.where(depth % 2 == 0, 1.0, -1.0)
    return (log_ratio.exp() * sign).tril() @ boundary


def _two_point(
    sigma_to: Tensor, lambdas: Tensor, lam_s: Tensor, lam_t: Tensor, tau: float, corrector: bool
) -> Tensor:
    """The paper's simplified order-2 weights (its appendix D), oldest estimate first."""
    rate = 1 + tau**2
    h = lam_t - lam_s
    alpha = sigma_to * lam_t.exp()
    whole = alpha * (-h * rate).expm1().neg()
    if corrector:
        newer = alpha * (0.5 * rate * h)
        return torch.stack([whole - newer, newer])
    older = alpha * (0.5 * rate * h**2) / (lambdas[-2] - lam_s)
    return torch.stack([older, whole - older])


def adams_weights(
    sigma_to: Tensor,
    lambdas: Tensor,
    lam_s: Tensor,
    lam_t: Tensor,
    tau: float,
    simple_order_2: bool = False,
    corrector: bool = False,
) -> Tensor:
    """The weight of each x0 estimate (at `lambdas`) in a step from lam_s to lam_t."""
    count = lambdas.shape[0]
    if simple_order_2 and count == 2:
        return _two_point(sigma_to, lambdas, lam_s, lam_t, tau, corrector)
    moments = _exp_moments(lam_s, lam_t, count, tau)
    lagrange = torch.linalg.solve(torch.vander(lambdas, count, increasing=True).T, moments)
    return sigma_to * lam_t.exp() * lagrange


def _weighted(estimates: list[Tensor], weights: Tensor) -> Tensor:
    """sum_k weights[k] * estimates[k] (as one tensordot over a stacked axis)."""
    return torch.tensordot(torch.stack(estimates, dim=1), weights, dims=([1], [0]))


def sample_sa_solver(
    run: SamplerRun,
    x: Tensor,
    sigmas: Tensor,
    tau_func: Tau | None = None,
    eta: float = 1.0,
    sde_start_percent: float = 0.2,
    sde_end_percent: float = 0.8,
    s_noise: float = 1.0,
    predictor_order: int = 3,
    corrector_order: int = 4,
    use_pece: bool = False,
    simple_order_2: bool = False,
) -> Tensor:
    """SA-Solver; `tau_func` overrides the window built from eta and the two percents."""
    if len(sigmas) <= 1:
        return x
    noise = run.default_noise(x)
    lambdas = sigmas.log().neg()
    if tau_func is None:
        sampling = run.model_sampling
        tau_func = window_tau(
            sampling.percent_to_sigma(sde_start_percent),
            sampling.percent_to_sigma(sde_end_percent),
            eta,
        )
    keep = max(predictor_order, corrector_order)
    last = len(sigmas) - 1
    taper = sigmas[-1].item() == 0  # lower the orders near a final 0
    x_pred = x
    h: Tensor | float = 0.0
    tau = 0.0
    fresh: Tensor | float = 0.0  # the noise the last predictor added
    estimates: list[Tensor] = []
    for i in range(last):
        denoised = run.denoise(x_pred, sigmas[i])
        run.step(i, x_pred, denoised, sigmas[i])
        estimates = (estimates + [denoised])[-keep:]
        p_order = min(predictor_order, len(estimates))
        corrects = i > 0 and not (sigmas[i + 1] == 0 and not use_pece)
        c_order = min(corrector_order, len(estimates)) if corrects else 0
        if taper:
            p_order = min(p_order, last - 1 - i)
            c_order = min(c_order, last - i)

        if c_order == 0:
            x = x_pred
        else:
            w = adams_weights(
                sigmas[i],
                lambdas[i - c_order + 1 : i + 1],
                lambdas[i - 1],
                lambdas[i],
                tau,
                simple_order_2,
                corrector=True,
            )
            x = sigmas[i] / sigmas[i - 1] * (-(tau**2) * h).exp() * x + _weighted(
                estimates[-c_order:], w
            )
            if tau > 0 and s_noise > 0:
                x = x + fresh
            if use_pece:
                denoised = run.denoise(x, sigmas[i])
                estimates[-1] = denoised

        if sigmas[i + 1] == 0:
            x_pred = denoised
            continue
        tau = tau_func(sigmas[i + 1])
        w = adams_weights(
            sigmas[i + 1],
            lambdas[i - p_order + 1 : i + 1],
            lambdas[i],
            lambdas[i + 1],
            tau,
            simple_order_2,
            corrector=False,
        )
        h = lambdas[i + 1] - lambdas[i]
        x_pred = sigmas[i + 1] / sigmas[i] * (-(tau**2) * h).exp() * x + _weighted(
            estimates[-p_order:], w
        )
        if tau > 0 and s_noise > 0:
            spread = (-2 * tau**2 * h).expm1().neg().sqrt()
            fresh = noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * spread * s_noise
            x_pred = x_pred + fresh
    return x_pred


def sample_sa_solver_pece(run: SamplerRun, x: Tensor, sigmas: Tensor, **options: Any) -> Tensor:
    """SA-Solver in predict-evaluate-correct-evaluate mode."""
    return sample_sa_solver(run, x, sigmas, **{**options, "use_pece": True})


SAMPLERS: dict[str, SamplerSpec] = {
    "sa_solver": SamplerSpec(sample_sa_solver),
    # PECE evaluates twice on every step but the first: 2 - 1 / steps per step on average.
    "sa_solver_pece": SamplerSpec(sample_sa_solver_pece, evaluations_per_step=2),
}
