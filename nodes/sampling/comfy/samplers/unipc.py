"""UniPC (arXiv:2302.04867), multistep predictor-corrector in data prediction, variants B(h) = h
("uni_pc", bh1) and B(h) = e^h - 1 ("uni_pc_bh2").

As in ComfyUI, UniPC runs in VP form on the sigmas themselves: alpha = 1 / sqrt(1 + sigma^2),
x_vp = alpha * x, a final sigma 0 replaced by 0.001, and the result divided by that last alpha.
The order is min(3, len(sigmas) - 2), lowered over the last steps. Every move but the last is
corrected with the model's estimate at its end, which the next move reuses: one evaluation per
step. (Two sigmas: the one evaluation moves nothing; the result is the rescaled start.)
"""

from __future__ import annotations

import torch

from ..sampler_api import SamplerRun, SamplerSpec

FINAL_SIGMA = 0.001
"""What a final sigma of 0 becomes (UniPC's VP time must stay positive)."""


def _log_alpha(sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _alpha(sigma: torch.Tensor) -> torch.Tensor:
    return torch.exp(_log_alpha(sigma))


def _std(sigma: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(sigma)))


def _half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    log_alpha = _log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _column(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v[(...,) + (None,) * (ndim - 1)]


def _data_estimate(run: SamplerRun, x_vp: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0 from the model's noise estimate at the VP point x_vp (sigma: one per sample)."""
    n = x_vp.ndim
    s = sigma.view(sigma.shape[:1] + (1,) * (n - 1))
    x = x_vp * ((s**2 + 1.0) ** 0.5)
    eps = (x - run.denoise(x, sigma)) / s
    return (x_vp - _column(_std(sigma), n) * eps) / _column(_alpha(sigma), n)


def _coefficients(
    rks: torch.Tensor, hh: torch.Tensor, order: int, variant: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h phi_1(hh), B(hh), the matrix R of powers of rks, the right-hand side b)."""
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    phi = h_phi_1 / hh - 1
    powers, rhs, factorial = [], [], 1
    for k in range(1, order + 1):
        powers.append(torch.pow(rks, k - 1))
        rhs.append(phi * factorial / b_h)
        factorial *= k + 1
        phi = phi / hh - 1 / factorial
    return h_phi_1, b_h, torch.stack(powers), torch.tensor(rhs, device=rks.device)


def _move(
    run: SamplerRun,
    x: torch.Tensor,
    estimates: list[torch.Tensor],
    times: list[torch.Tensor],
    t: torch.Tensor,
    order: int,
    variant: str,
    correct: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One UniPC move of `order` to time t: (x there, the model's estimate there if corrected)."""
    n = x.ndim
    t_last, last = times[-1], estimates[-1]
    lam_last = _half_log_snr(t_last)
    h = _half_log_snr(t) - lam_last
    scale_to = _column(_std(t) / _std(t_last), n)
    alpha_t = torch.exp(_log_alpha(t))

    ratios, slopes = [], []
    for k in range(1, order):
        rk = ((_half_log_snr(times[-(k + 1)]) - lam_last) / h)[0]
        ratios.append(float(rk))
        slopes.append((estimates[-(k + 1)] - last) / rk)
    rks = torch.tensor(ratios + [1.0], device=x.device)
    hh = -h[0]
    h_phi_1, b_h, r_mat, rhs = _coefficients(rks, hh, order, variant)
    stacked = torch.stack(slopes, dim=1) if slopes else None

    base = scale_to * x - _column(alpha_t * h_phi_1, n) * last
    step = _column(alpha_t * b_h, n)
    x_t = base
    if stacked is not None:
        rhos_p = (
            torch.tensor([0.5], device=x.device)
            if order == 2
            else torch.linalg.solve(r_mat[:-1, :-1], rhs[:-1])
        )
        x_t = base - step * torch.tensordot(stacked, rhos_p, dims=([1], [0]))
    if not correct:
        return x_t, None

    rhos_c = torch.tensor([0.5], device=x.device) if order == 1 else torch.linalg.solve(r_mat, rhs)
    estimate = _data_estimate(run, x_t, t)
    residual = rhos_c[-1] * (estimate - last)
    if stacked is not None:
        residual = torch.tensordot(stacked, rhos_c[:-1], dims=([1], [0])) + residual
    return base - step * residual, estimate


def sample_unipc(
    run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor, variant: str = "bh1"
) -> torch.Tensor:
    """UniPC over `sigmas` (bh1 or bh2), lower orders at the start and over the last steps."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"uni_pc: unknown variant '{variant}' (bh1 or bh2)")
    ts = sigmas.clone()
    if ts[-1] == 0:
        ts[-1] = FINAL_SIGMA
    x = x / torch.sqrt(1.0 + ts[0] ** 2.0)
    order = min(3, len(ts) - 2)
    steps = len(ts) - 1
    batch = x.shape[0]

    def at(k: int) -> torch.Tensor:
        return ts[k].expand(batch)

    estimates: list[torch.Tensor] = []
    times: list[torch.Tensor] = []
    where = 0  # the index of the sigma x is at
    for k in range(steps):
        if k == 0:
            estimates, times = [_data_estimate(run, x, at(0))], [at(0)]
        elif k < order:  # warm-up: orders 1 .. order - 1, each corrected
            x, estimate = _move(run, x, estimates, times, at(k), k, variant, True)
            estimates.append(estimate)
            times.append(at(k))
            where = k
        else:  # the last step index also makes the final, uncorrected move
            for target in range(k, steps + 1 if k == steps - 1 else k + 1):
                final = target == steps
                step_order = min(order, steps + 1 - target)
                x, estimate = _move(
                    run, x, estimates, times, at(target), step_order, variant, not final
                )
                times = times[1:] + [at(target)]
                estimates = estimates[1:] + [estimates[-1] if final else estimate]
                where = target
        run.step(k, x, estimates[-1], sigmas[where])  # x still in VP form, as ComfyUI reports
    return x / _alpha(ts[-1])


def sample_unipc_bh2(run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """UniPC with B(h) = e^h - 1."""
    return sample_unipc(run, x, sigmas, "bh2")


SAMPLERS: dict[str, SamplerSpec] = {
    "uni_pc": SamplerSpec(sample_unipc, discard_penultimate_sigma=True),
    "uni_pc_bh2": SamplerSpec(sample_unipc_bh2, discard_penultimate_sigma=True),
}
