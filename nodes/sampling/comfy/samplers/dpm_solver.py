"""DPM-Solver with a fixed step split (dpm_fast) and with error-controlled steps (dpm_adaptive).

Both work in DPM-Solver's time t = -log(sigma) on the noise prediction eps = (x - x0) / sigma and
use only the two ends of the given schedule: from sigmas[0] down to its last non-zero sigma (a
final 0 is never reached, so the result keeps that last sigma's noise, as in ComfyUI).
"""

from __future__ import annotations

import math

import torch

from ..sampler_api import SamplerRun, SamplerSpec, ancestral_step

Tensor = torch.Tensor


def _sigma_of(t: Tensor) -> Tensor:
    return t.neg().exp()


def _time_of(sigma: Tensor) -> Tensor:
    return -sigma.log()


def _noise_eps(run: SamplerRun, x: Tensor, t: Tensor) -> Tensor:
    """The model's noise estimate at time t (one evaluation)."""
    return (x - run.denoise(x, _sigma_of(t))) / _sigma_of(t)


def _order1(x: Tensor, t: Tensor, t_to: Tensor, e0: Tensor) -> Tensor:
    """DPM-Solver-1 (DDIM) from t to t_to given the noise estimate at t."""
    h = t_to - t
    return x - _sigma_of(t_to) * h.expm1() * e0


def _order2(
    run: SamplerRun, x: Tensor, t: Tensor, t_to: Tensor, e0: Tensor, r1: float
) -> tuple[Tensor, Tensor]:
    """DPM-Solver-2 with its midpoint at fraction r1: (the new x, the midpoint's estimate)."""
    h = t_to - t
    s1 = t + r1 * h
    u1 = x - _sigma_of(s1) * (r1 * h).expm1() * e0
    e1 = _noise_eps(run, u1, s1)
    sigma_to = _sigma_of(t_to)
    out = x - sigma_to * h.expm1() * e0 - sigma_to / (2 * r1) * h.expm1() * (e1 - e0)
    return out, e1


def _order3(
    run: SamplerRun, x: Tensor, t: Tensor, t_to: Tensor, e0: Tensor, e1: Tensor | None = None
) -> Tensor:
    """DPM-Solver-3 (stages at 1/3 and 2/3); `e1` reuses a known estimate at the 1/3 stage."""
    r1, r2 = 1 / 3, 2 / 3
    h = t_to - t
    s1, s2 = t + r1 * h, t + r2 * h
    if e1 is None:
        u1 = x - _sigma_of(s1) * (r1 * h).expm1() * e0
        e1 = _noise_eps(run, u1, s1)
    phi = (r2 * h).expm1()
    u2 = x - _sigma_of(s2) * phi * e0 - _sigma_of(s2) * (r2 / r1) * (phi / (r2 * h) - 1) * (e1 - e0)
    e2 = _noise_eps(run, u2, s2)
    sigma_to = _sigma_of(t_to)
    return x - sigma_to * h.expm1() * e0 - sigma_to / r2 * (h.expm1() / h - 1) * (e2 - e0)


def _ends(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """(t at sigmas[0], t at the last non-zero sigma), as ComfyUI's ksampler picks them."""
    low = sigmas[-2] if sigmas[-1] == 0 else sigmas[-1]
    if low <= 0 or sigmas[0] <= 0:
        raise ValueError("dpm_fast / dpm_adaptive need non-zero sigmas at both ends")
    return _time_of(sigmas[0].clone()), _time_of(low.clone())


def _noisy_target(
    t: Tensor, t_next: Tensor, t_end: Tensor, eta: float
) -> tuple[Tensor, Tensor | float]:
    """(where an ancestral step's deterministic part lands, the noise it adds back)."""
    if not eta:
        return t_next, 0.0
    down, _ = ancestral_step(_sigma_of(t), _sigma_of(t_next), eta)
    landing = torch.minimum(t_end, _time_of(torch.as_tensor(down)))
    return landing, (_sigma_of(t_next) ** 2 - _sigma_of(landing) ** 2) ** 0.5


def _stage_orders(evaluations: int) -> list[int]:
    """dpm_fast's split of its evaluation budget into third-order steps and a short tail."""
    steps = evaluations // 3 + 1
    if evaluations % 3 == 0:
        return [3] * (steps - 2) + [2, 1]
    return [3] * (steps - 1) + [evaluations % 3]


def sample_dpm_fast(
    run: SamplerRun, x: Tensor, sigmas: Tensor, eta: float = 0.0, s_noise: float = 1.0
) -> Tensor:
    """DPM-Solver-fast: len(sigmas) - 1 evaluations spent on equal steps in t."""
    if len(sigmas) <= 1:
        return x
    t_start, t_end = _ends(sigmas)
    if eta and not t_end > t_start:
        raise ValueError("dpm_fast: eta must be 0 when sampling towards more noise")
    orders = _stage_orders(len(sigmas) - 1)
    ts = torch.linspace(t_start, t_end, len(orders) + 1, device=x.device)
    noise = run.default_noise(x) if eta else None
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        target, sigma_up = _noisy_target(t, t_next, t_end, eta)
        e0 = _noise_eps(run, x, t)
        run.step(i, x, x - _sigma_of(t) * e0, _sigma_of(t))
        if order == 1:
            x = _order1(x, t, target, e0)
        elif order == 2:
            x, _ = _order2(run, x, t, target, e0, 1 / 2)
        else:
            x = _order3(run, x, t, target, e0)
        if noise is not None:
            x = x + sigma_up * s_noise * noise(_sigma_of(t), _sigma_of(t_next))
    return x


class _StepControl:
    """The PID step-size controller: grows or shrinks h from the scaled error, accepts or not."""

    def __init__(
        self,
        h: float,
        pcoeff: float,
        icoeff: float,
        dcoeff: float,
        order: float,
        accept_safety: float,
    ) -> None:
        self.h = h
        self.weights = (
            (pcoeff + icoeff + dcoeff) / order,
            -(pcoeff + 2 * dcoeff) / order,
            dcoeff / order,
        )
        self.accept_safety = accept_safety
        self.history: list[float] = []

    def judge(self, error: Tensor) -> bool:
        """Rescale h for the step just tried; whether that step is kept."""
        inverse = 1 / (float(error) + 1e-8)
        if not self.history:
            self.history = [inverse] * 3
        self.history[0] = inverse
        w0, w1, w2 = self.weights
        factor = self.history[0] ** w0 * self.history[1] ** w1 * self.history[2] ** w2
        factor = 1 + math.atan(factor - 1)
        keep = factor >= self.accept_safety
        if keep:
            self.history[2], self.history[1] = self.history[1], self.history[0]
        self.h *= factor
        return keep


def sample_dpm_adaptive(
    run: SamplerRun,
    x: Tensor,
    sigmas: Tensor,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver-12 / 23: an embedded pair of orders picks each step's size; `order` per try."""
    if len(sigmas) <= 1:
        return x
    if order not in (2, 3):
        raise ValueError("dpm_adaptive: order must be 2 or 3")
    t_start, t_end = _ends(sigmas)
    forward = bool(t_end > t_start)
    if eta and not forward:
        raise ValueError("dpm_adaptive: eta must be 0 when sampling towards more noise")
    control = _StepControl(
        abs(h_init) * (1 if forward else -1),
        pcoeff,
        icoeff,
        dcoeff,
        1.5 if eta else order,
        accept_safety,
    )
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    noise = run.default_noise(x) if eta else None
    s, x_prev, tries = t_start, x, 0
    while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
        reach = s + control.h
        t = torch.minimum(t_end, reach) if forward else torch.maximum(t_end, reach)
        target, sigma_up = _noisy_target(s, t, t_end, eta)
        e0 = _noise_eps(run, x, s)
        denoised = x - _sigma_of(s) * e0
        if order == 2:
            low = _order1(x, s, target, e0)
            high, _ = _order2(run, x, s, target, e0, 1 / 2)
        else:
            low, e1 = _order2(run, x, s, target, e0, 1 / 3)
            high = _order3(run, x, s, target, e0, e1)
        scale = torch.maximum(atol_t, rtol_t * torch.maximum(low.abs(), x_prev.abs()))
        error = torch.linalg.norm((low - high) / scale) / x.numel() ** 0.5
        if control.judge(error):
            x_prev = low
            x = high
            if noise is not None:
                x = x + sigma_up * s_noise * noise(_sigma_of(s), _sigma_of(t))
            s = t
        run.step(tries, x, denoised, _sigma_of(s))
        tries += 1
    return x


SAMPLERS: dict[str, SamplerSpec] = {
    # dpm_fast spends exactly len(sigmas) - 1 evaluations (one per step on average), but not on
    # the schedule's sigmas: it takes steps // 3 + 1 equal steps in -log(sigma), third-order ones
    # (3 evaluations each) and a tail of order steps % 3 (or 2 then 1 when steps % 3 == 0), and
    # reports once per such step.
    "dpm_fast": SamplerSpec(sample_dpm_fast, evaluations_per_step=1),
    # dpm_adaptive: `order` evaluations per try, accepted or rejected; as many tries as it needs.
    "dpm_adaptive": SamplerSpec(sample_dpm_adaptive, evaluations_per_step=None),
}
