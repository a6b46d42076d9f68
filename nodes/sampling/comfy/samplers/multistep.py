"""Multistep samplers: linear multistep, iPNDM, DPM-Solver++(2M), RES and gradient estimation."""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from scipy import integrate

from ..sampler_api import SamplerRun, SamplerSpec, to_d
from .steps import (
    ancestral_steps,
    cfg_pp_shifted,
    euler_to,
    half_log_snr,
    observe,
    observe_pair,
    schedule_steps,
    sigma_at,
)

Tensor = torch.Tensor


def _newest_first(history: deque[Tensor]) -> list[Tensor]:
    """A history deque (oldest at the left) as a list with the newest entry first."""
    return list(reversed(history))


# -- linear multistep ------------------------------------------------------------------------------


def lms_coefficient(order: int, ts: np.ndarray, i: int, j: int) -> float:
    """The weight of the slope j steps back: its Lagrange basis polynomial integrated over
    [ts[i], ts[i+1]] (scipy quad; the nodes stay float32, so the integrand is float32 math)."""
    if order - 1 > i:
        raise ValueError(f"order {order} needs {order - 1} earlier steps, step {i} has fewer")
    node = ts[i - j]
    others = [ts[i - k] for k in range(order) if k != j]

    def basis(tau: float) -> float:
        value = 1.0
        for other in others:
            value *= (tau - other) / (node - other)
        return value

    return integrate.quad(basis, ts[i], ts[i + 1], epsrel=1e-4)[0]


def lms(run: SamplerRun, x: Tensor, sigmas: Tensor, order: int = 4) -> Tensor:
    """Linear multistep over the last `order` slopes, with sigma as the time variable."""
    nodes = sigmas.detach().cpu().numpy()
    slopes: deque[Tensor] = deque(maxlen=order)
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = observe(run, i, x, sigma)
        slopes.append(to_d(x, sigma, denoised))
        if sigma_next == 0:
            x = denoised
            continue
        used = min(i + 1, order)
        total: Tensor | int = 0
        for j, slope in enumerate(_newest_first(slopes)):
            total = total + lms_coefficient(used, nodes, i, j) * slope
        x = x + total
    return x


# -- iPNDM ---------------------------------------------------------------------------------------

# Adams-Bashforth for equal steps: (weights, the current slope first; their common divisor)
_IPNDM_RULES = {2: ((3, -1), 2), 3: ((23, -16, 5), 12), 4: ((55, -59, 37, -9), 24)}


def _ipndm_step(x: Tensor, dt: Tensor, order: int, slopes: list[Tensor]) -> Tensor:
    """x + dt * (the fixed-weight blend of the newest-first slopes), divided last as ComfyUI
    does."""
    weights, divisor = _IPNDM_RULES[order]
    total = weights[0] * slopes[0]
    for weight, slope in zip(weights[1:], slopes[1:order], strict=True):
        # ComfyUI writes "- b" for the -1 weight: the same number as "- 1 * b"
        total = total + weight * slope if weight > 0 else total - (-weight) * slope
    return x + dt * total / divisor


def _ipndm_v_weights(order: int, h: list[Tensor]) -> list[Tensor]:
    """Variable-step Adams-Bashforth weights; h[0] is this step, h[k] the step k back.

    Order 4 is ComfyUI's formula as it stands: on unequal steps its weights sum to 1 only to about
    1e-3, and on equal steps they are (57, -65, 43, -11) / 24, not Adams-Bashforth's."""
    h0 = h[0]
    if order == 2:
        return [(2 + (h0 / h[1])) / 2, -(h0 / h[1]) / 2]
    h1, h2 = h[1], h[2]
    first = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        return [
            (2 + (h0 / h1)) / 2 + first,
            -(h0 / h1) / 2 - (1 + h1 / h2) * first,
            first * h1 / h2,
        ]
    h3 = h[3]
    second = (
        ((1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2)))
        * (h0 * (h0 + h1) * (h0 + h1 + h2))
        / (h1 * (h1 + h2) * (h1 + h2 + h3))
    )
    ratio = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return [
        (2 + (h0 / h1)) / 2 + first + second,
        -(h0 / h1) / 2 - (1 + h1 / h2) * first - (1 + (h1 / h2) + ratio) * second,
        first * h1 / h2 + ((h1 / h2) + ratio * (1 + h2 / h3)) * second,
        -second * ratio * h1 / h2,
    ]


def ipndm(
    run: SamplerRun, x: Tensor, sigmas: Tensor, max_order: int = 4, variable: bool = False
) -> Tensor:
    """Improved PNDM: Adams-Bashforth on the slopes, warming up from Euler; `variable` uses
    weights for the actual (unequal) step sizes (iPNDM-v)."""
    earlier: deque[Tensor] = deque(maxlen=max_order - 1)
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised = observe(run, i, x, sigma)
        slope = (x - denoised) / sigma
        order = min(max_order, i + 1)
        if sigma_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (sigma_next - sigma) * slope
        elif variable:
            back = [sigmas[i - k] - sigmas[i - k - 1] for k in range(order - 1)]
            weights = _ipndm_v_weights(order, [sigma_next - sigma, *back])
            slopes = [slope, *_newest_first(earlier)]
            total = weights[0] * slope
            for weight, past in zip(weights[1:], slopes[1:order], strict=True):
                total = total + weight * past
            x_next = x + (sigma_next - sigma) * total
        else:
            x_next = _ipndm_step(x, sigma_next - sigma, order, [slope, *_newest_first(earlier)])
        earlier.append(slope)
        x = x_next
    return x


# -- DPM-Solver++(2M) ----------------------------------------------------------------------------


def dpmpp_2m(run: SamplerRun, x: Tensor, sigmas: Tensor, cfg_pp: bool = False) -> Tensor:
    """DPM-Solver++(2M): exponential steps on a linear x0 extrapolation (CFG++ with cfg_pp)."""
    previous: Tensor | None = None
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised, uncond = observe_pair(run, i, x, sigma, cfg_pp)
        lam, lam_next = half_log_snr(sigma), half_log_snr(sigma_next)
        h = lam_next - lam
        half_inverse = None  # 1 / (2 * the last step's lambda length over this one's)
        if previous is not None and sigma_next != 0:
            half_inverse = 1 / (2 * ((lam - half_log_snr(sigmas[i - 1])) / h))
        if cfg_pp:
            mix = -torch.exp(-h) * uncond
            if half_inverse is not None:
                mix = mix - torch.expm1(-h) * half_inverse * (denoised - previous)
            x = denoised + mix + torch.exp(-h) * x
        else:
            target = denoised
            if half_inverse is not None:
                target = (1 + half_inverse) * denoised - half_inverse * previous
            x = (sigma_at(lam_next) / sigma_at(lam)) * x - (-h).expm1() * target
        previous = uncond
    return x


# -- RES multistep -------------------------------------------------------------------------------


def res_multistep(
    run: SamplerRun,
    x: Tensor,
    sigmas: Tensor,
    eta: float = 0.0,
    s_noise: float = 1.0,
    cfg_pp: bool = False,
) -> Tensor:
    """Second-order refined exponential solver (arXiv 2308.02157), optionally ancestral
    (`eta` > 0) and / or CFG++."""
    noise = run.default_noise(x)
    previous: Tensor | None = None
    previous_down: Tensor | None = None
    for i, sigma, sigma_next, down, up in ancestral_steps(sigmas, eta):
        denoised, uncond = observe_pair(run, i, x, sigma, cfg_pp)
        if down == 0 or previous is None:
            x = euler_to(x, sigma, down, denoised, uncond, cfg_pp)
        else:
            lam, lam_down = half_log_snr(sigma), half_log_snr(down)
            h = lam_down - lam
            c2 = (half_log_snr(sigmas[i - 1]) - half_log_snr(previous_down)) / h
            phi_1 = torch.expm1(-h) / -h
            phi_2 = (phi_1 - 1.0) / -h
            b_1 = torch.nan_to_num(phi_1 - phi_2 / c2, nan=0.0)
            b_2 = torch.nan_to_num(phi_2 / c2, nan=0.0)
            x = cfg_pp_shifted(x, denoised, uncond, cfg_pp)
            x = sigma_at(h) * x + h * (b_1 * uncond + b_2 * previous)
        if sigma_next > 0 and eta:
            x = x + noise(sigma, sigma_next) * s_noise * up
        previous = uncond
        previous_down = down
    return x


# -- gradient estimation -------------------------------------------------------------------------


def gradient_estimation(
    run: SamplerRun, x: Tensor, sigmas: Tensor, ge_gamma: float = 2.0, cfg_pp: bool = False
) -> Tensor:
    """Euler plus a correction from the change in slope (arXiv: gradient-estimation sampler)."""
    previous: Tensor | None = None
    for i, sigma, sigma_next in schedule_steps(sigmas):
        denoised, uncond = observe_pair(run, i, x, sigma, cfg_pp)
        slope = to_d(x, sigma, uncond)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = denoised
        else:
            x = euler_to(x, sigma, sigma_next, denoised, uncond, cfg_pp)
            if previous is not None:
                x = x + (ge_gamma - 1) * (slope - previous) * dt
        previous = slope
    return x


SAMPLERS: dict[str, SamplerSpec] = {
    "lms": SamplerSpec(lms),
    "ipndm": SamplerSpec(ipndm),
    "ipndm_v": SamplerSpec(ipndm, options={"variable": True}),
    "dpmpp_2m": SamplerSpec(dpmpp_2m),
    "dpmpp_2m_cfg_pp": SamplerSpec(dpmpp_2m, options={"cfg_pp": True}),
    "res_multistep": SamplerSpec(res_multistep),
    "res_multistep_cfg_pp": SamplerSpec(res_multistep, options={"cfg_pp": True}),
    "res_multistep_ancestral": SamplerSpec(res_multistep, options={"eta": 1.0}),
    "res_multistep_ancestral_cfg_pp": SamplerSpec(
        res_multistep, options={"eta": 1.0, "cfg_pp": True}
    ),
    "gradient_estimation": SamplerSpec(gradient_estimation),
    "gradient_estimation_cfg_pp": SamplerSpec(gradient_estimation, options={"cfg_pp": True}),
}
