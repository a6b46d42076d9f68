"""DEIS: an exponential-integrator multistep method on the Karras derivative (ComfyUI's "deis").

Each step combines the current derivative d = (x - x0) / sigma with up to max_order - 1 earlier
ones. The weights are integrals of Lagrange polynomials over the step, taken numerically ('tab'
mode, ComfyUI's default and the only one its nodes reach) in the VP time of EDM's default
schedule (sigma 0.002 .. 80, eps_s 1e-3, whatever the model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..sampler_api import SamplerRun, SamplerSpec

QUADRATURE_POINTS = 10000
"""'tab' mode's rectangle-rule resolution per step."""


def _np_log(value: torch.Tensor) -> torch.Tensor:
    """log through numpy (in the tensor's own precision), as DEIS's reference computes it."""
    return torch.as_tensor(np.asarray(np.log(value.numpy())))


def vp_time(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(VP time of each sigma, beta at t=0, beta at t=1) of EDM's default VP line."""
    eps_s = 1e-3
    log_low = _np_log(torch.tensor(0.002) ** 2 + 1)  # float32
    log_high = _np_log(torch.tensor(80) ** 2 + 1)  # an integer tensor: float64
    beta_d = 2 * (log_low / eps_s - log_high) / (eps_s - 1)
    beta_min = log_high - 0.5 * beta_d
    sigmas = sigmas.detach().cpu()
    t = ((beta_min**2 + 2 * beta_d * (sigmas**2 + 1).log()).sqrt() - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def _integrand(beta_0: torch.Tensor, beta_1: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
    """-1/2 dlog(alpha)/dtau / sqrt(alpha (1 - alpha)) at each tau (the derivative by autograd)."""
    with torch.inference_mode(False), torch.enable_grad():
        taus, beta_0, beta_1 = taus.clone().requires_grad_(True), beta_0.clone(), beta_1.clone()
        alpha = torch.exp(-0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0)
        (slope,) = torch.autograd.grad(alpha.log().sum(), taus)
        return (-0.5 * slope / torch.sqrt(alpha * (1 - alpha))).detach()


def _lagrange(nodes: torch.Tensor, j: int, taus: torch.Tensor) -> torch.Tensor | int:
    """The Lagrange basis polynomial of node j over `nodes`, at taus."""
    out: torch.Tensor | int = 1
    for k in range(nodes.shape[0]):
        if k != j:
            out = out * ((taus - nodes[k]) / (nodes[j] - nodes[k]))
    return out


def tab_weights(sigmas: torch.Tensor, max_order: int) -> list[list[torch.Tensor]]:
    """Per step, the weights of the current and earlier derivatives ('tab' mode)."""
    ts, beta_0, beta_1 = vp_time(sigmas)
    weights: list[list[torch.Tensor]] = []
    for i in range(len(ts) - 1):
        order = min(i + 1, max_order)
        if order == 1 or sigmas[i + 1] <= 0:  # a first-order step uses no weights
            weights.append([])
            continue
        t_cur, t_next = ts[i], ts[i + 1]
        taus = torch.linspace(t_cur, t_next, QUADRATURE_POINTS)
        dtau = (t_next - t_cur) / QUADRATURE_POINTS
        nodes = ts[[i - k for k in range(order)]]
        integrand = _integrand(beta_0, beta_1, taus)
        weights.append(
            [torch.sum(integrand * _lagrange(nodes, j, taus)) * dtau for j in range(order)]
        )
    return weights


def sample_deis(
    run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor, max_order: int = 3
) -> torch.Tensor:
    """DEIS ('tab' mode) of up to `max_order` (1..4), one evaluation per step."""
    if not 1 <= max_order <= 4:
        raise ValueError("deis: max_order must be 1 to 4")
    weights = tab_weights(sigmas, max_order)
    start = x
    history: list[torch.Tensor] = []  # earlier derivatives, oldest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        run.step(i, start, denoised, sigma)  # ComfyUI reports its starting x here
        d = (x - denoised) / sigma
        if sigma_next <= 0 or min(max_order, i + 1) == 1:  # Euler
            x = x + (sigma_next - sigma) * d
        else:
            x = _combine(x, d, weights[i], history)
        history = (history + [d])[-(max_order - 1) :] if max_order > 1 else []
    return x


def _combine(
    x: torch.Tensor, d: torch.Tensor, weights: Sequence[torch.Tensor], history: list[torch.Tensor]
) -> torch.Tensor:
    """x + w0 d + w1 d_prev + w2 d_prev2 ..., summed left to right."""
    x = x + weights[0] * d
    for w, earlier in zip(weights[1:], reversed(history), strict=False):
        x = x + w * earlier
    return x


SAMPLERS: dict[str, SamplerSpec] = {"deis": SamplerSpec(sample_deis)}
