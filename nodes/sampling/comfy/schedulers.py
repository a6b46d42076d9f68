"""ComfyUI's schedulers: (model sampling, steps) -> the sigmas a sampler walks, ending in 0.

Each follows comfy/samplers.py's handler of the same name to the float; `SCHEDULERS` is the
table the nodes offer (in ComfyUI's order). `karras_sigmas` / `exponential_sigmas` also serve
the KarrasScheduler and ExponentialScheduler nodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .model_sampling import ModelSampling


def _with_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al.'s schedule: uniform in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _with_zero((high + ramp * (low - high)) ** rho)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in log sigma."""
    return _with_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential_sigmas(
    n: int, sigma_min: float, sigma_max: float, rho: float = 1.0
) -> torch.Tensor:
    """Uniform in log sigma along a ramp raised to rho."""
    ramp = torch.linspace(1, 0, n) ** rho
    return _with_zero(
        torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    )


def vp_sigmas(
    n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3
) -> torch.Tensor:
    """The continuous VP schedule."""
    t = torch.linspace(1, eps_s, n)
    return _with_zero(torch.sqrt(torch.exp(beta_d * t**2 / 2 + beta_min * t) - 1))


def laplace_sigmas(
    n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5
) -> torch.Tensor:
    """Tiankai et al.'s Laplace schedule, clamped to [sigma_min, sigma_max]."""
    eps = 1e-5
    x = torch.linspace(0, 1, n)
    clamp = lambda v: torch.clamp(v, min=sigma_min, max=sigma_max)  # noqa: E731
    lmb = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + eps)
    return _with_zero(clamp(torch.exp(lmb)))


def _table(sigmas: list[float]) -> torch.Tensor:
    return torch.tensor(sigmas, dtype=torch.float32)


def normal(ms: ModelSampling, steps: int, sgm: bool = False) -> torch.Tensor:
    """Timesteps evenly spaced from the top of the table to its bottom (both ends included)."""
    start, end = ms.timestep(ms.sigma_max), ms.timestep(ms.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=0.00001):
            steps, append_zero = steps + 1, False
        timesteps = torch.linspace(start, end, steps)
    sigmas = [float(ms.sigma(t)) for t in timesteps]
    return _table(sigmas + [0.0] if append_zero else sigmas)


def sgm_uniform(ms: ModelSampling, steps: int) -> torch.Tensor:
    """As normal but with the bottom end excluded (Stability's sgm sampling)."""
    return normal(ms, steps, sgm=True)


def simple(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Every (1000 / steps)-th sigma of the table from the top."""
    stride = len(ms.sigmas) / steps
    return _table([float(ms.sigmas[-(1 + int(x * stride))]) for x in range(steps)] + [0.0])


def ddim_uniform(ms: ModelSampling, steps: int) -> torch.Tensor:
    """DDIM's uniform spacing: every (1000 // steps)-th sigma from index 1, ascending, reversed."""
    sigmas: list[float] = []
    if math.isclose(float(ms.sigmas[1]), 0, abs_tol=0.00001):
        steps += 1
    else:
        sigmas = [0.0]
    stride = max(len(ms.sigmas) // steps, 1)
    sigmas += [float(ms.sigmas[x]) for x in range(1, len(ms.sigmas), stride)]
    return _table(sigmas[::-1])


def beta(ms: ModelSampling, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Timesteps at the quantiles of a Beta(0.6, 0.6) distribution (repeats dropped)."""
    import scipy.stats

    last = len(ms.sigmas) - 1
    ts = np.rint(
        scipy.stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta_) * last
    )
    sigmas, previous = [], None
    for t in ts:
        if t != previous:
            sigmas.append(float(ms.sigmas[int(t)]))
        previous = t
    return _table(sigmas + [0.0])


def linear_quadratic(
    ms: ModelSampling, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> torch.Tensor:
    """Mochi's schedule: linear for the first half, then quadratic, scaled by sigma_max."""
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        linear_steps = steps // 2 if linear_steps is None else linear_steps
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        gap = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        a = gap / (linear_steps * quadratic_steps**2)
        b = threshold_noise / linear_steps - 2 * gap / (quadratic_steps**2)
        c = a * (linear_steps**2)
        quadratic = [a * (i**2) + b * i + c for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in linear + quadratic + [1.0]]
    return _table(schedule) * ms.sigma_max.cpu()


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The KL-optimal schedule: uniform in arctan(sigma)."""
    ramp = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = ramp.new_zeros(n + 1)
    sigmas[:-1] = (ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max)).tan_()
    return sigmas


def _by_range(
    fn: Callable[[int, float, float], torch.Tensor],
) -> Callable[[ModelSampling, int], torch.Tensor]:
    """A (n, sigma_min, sigma_max) schedule over the model's sigma range."""
    return lambda ms, steps: fn(steps, float(ms.sigma_min), float(ms.sigma_max))


SCHEDULERS: dict[str, Callable[[ModelSampling, int], torch.Tensor]] = {
    "simple": simple,
    "sgm_uniform": sgm_uniform,
    "karras": _by_range(karras_sigmas),
    "exponential": _by_range(exponential_sigmas),
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "normal": normal,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": _by_range(kl_optimal),
}
"""ComfyUI's scheduler names, in its order (KSampler's choice list)."""


def schedule(ms: ModelSampling, name: str, steps: int) -> torch.Tensor:
    """The sigmas of scheduler `name` for `steps` steps."""
    return SCHEDULERS[name](ms, steps)
