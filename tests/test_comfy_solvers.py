"""Property tests of the DPM-Solver, DEIS, SA-Solver and UniPC samplers on analytic denoisers.

Two kinds of data have an exact answer: a single point x0* (the ideal denoiser returns x0*, and
the probability-flow ODE is a straight line to it) and a Gaussian N(mu, s^2) per element (the
ideal denoiser is linear in x; the ODE scales x - mu by sqrt((s^2 + sigma^2) / (s^2 + sigma0^2))).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from nodes.sampling.comfy.model_sampling import ModelSampling
from nodes.sampling.comfy.sampler_api import Denoiser, SamplerRun
from nodes.sampling.comfy.samplers import SAMPLERS
from nodes.sampling.comfy.samplers.dpm_solver import _stage_orders

SHAPE = (2, 4, 8, 8)
MU, SPREAD = 0.5, 0.8
DETERMINISTIC = ["dpm_fast", "dpm_adaptive", "deis", "uni_pc", "uni_pc_bh2"]
NAMES = DETERMINISTIC + ["sa_solver", "sa_solver_pece"]


def karras(n: int, low: float = 0.0292, high: float = 14.6146, rho: float = 7.0) -> torch.Tensor:
    """n Karras sigmas from high to low, then 0."""
    ramp = torch.linspace(0, 1, n)
    line = (high ** (1 / rho) + ramp * (low ** (1 / rho) - high ** (1 / rho))) ** rho
    return torch.cat([line, line.new_zeros(1)])


def schedule(name: str, steps: int) -> torch.Tensor:
    """The sigmas a sampling call would give `name` for `steps` steps."""
    if SAMPLERS[name].discard_penultimate_sigma:
        full = karras(steps + 1)
        return torch.cat([full[:-2], full[-1:]])
    return karras(steps)


def point() -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, math.prod(SHAPE)).reshape(SHAPE)


def point_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    assert sigma.shape == (x.shape[0],)
    return point().to(x)


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    assert sigma.shape == (x.shape[0],)
    s2 = sigma.view(-1, 1, 1, 1) ** 2
    return MU + SPREAD**2 / (SPREAD**2 + s2) * (x - MU)


def gaussian_flow(start: torch.Tensor, sigma0: float, sigma: float) -> torch.Tensor:
    """Where the probability-flow ODE takes `start` (at sigma0) by sigma."""
    return MU + math.sqrt((SPREAD**2 + sigma**2) / (SPREAD**2 + sigma0**2)) * (start - MU)


def make_run(
    denoiser: Denoiser, seed: int | None = 7
) -> tuple[SamplerRun, list[tuple[int, float]]]:
    """A run around `denoiser` on SD's sigma table, recording (step, sigma) of each report."""
    reports: list[tuple[int, float]] = []
    sampling = ModelSampling.discrete({"beta_schedule": "scaled_linear"}, "eps")
    run = SamplerRun(denoiser, sampling, seed, lambda i, x, d, s: reports.append((i, float(s))))
    return run, reports


def start_for(sigmas: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g) * float(sigmas[0])


def sample(
    name: str, run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor, **options: Any
) -> torch.Tensor:
    spec = SAMPLERS[name]
    return spec.fn(run, x.clone(), sigmas.clone(), **{**spec.options, **options})


def last_nonzero(sigmas: torch.Tensor) -> float:
    return float(sigmas[-2] if sigmas[-1] == 0 else sigmas[-1])


@pytest.mark.parametrize("name", NAMES)
def test_single_point_lands_on_it(name: str) -> None:
    sigmas = schedule(name, 8)
    x = start_for(sigmas)
    run, _ = make_run(point_denoiser)
    out = sample(name, run, x, sigmas)
    # dpm_* stop at the last non-zero sigma and UniPC at 0.001: still on the straight line there
    end = {"dpm_fast": last_nonzero(sigmas), "dpm_adaptive": last_nonzero(sigmas)}.get(name, 0.0)
    if name.startswith("uni_pc"):
        end = 0.001
    expected = point() + end / float(sigmas[0]) * (x - point())
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(("name", "tolerance"), [
    ("dpm_fast", 5e-3), ("dpm_adaptive", 0.2), ("deis", 2e-2), ("uni_pc", 1e-2),
    ("uni_pc_bh2", 1e-2),
])
def test_gaussian_follows_the_flow(name: str, tolerance: float) -> None:
    """24 steps (dpm_adaptive: its own, at its default tolerances)."""
    sigmas = schedule(name, 24)
    x = start_for(sigmas, seed=1)
    run, _ = make_run(gaussian_denoiser)
    out = sample(name, run, x, sigmas)
    end = last_nonzero(sigmas) if name.startswith("dpm_") else 0.0
    if name.startswith("uni_pc"):
        end = 0.001
    expected = gaussian_flow(x, float(sigmas[0]), end)
    assert (out - expected).abs().max() < tolerance


@pytest.mark.parametrize("name", ["deis", "uni_pc", "uni_pc_bh2", "dpm_fast"])
def test_more_steps_get_closer(name: str) -> None:
    errors = []
    for steps in (6, 24):
        sigmas = schedule(name, steps)
        x = start_for(sigmas, seed=2)
        run, _ = make_run(gaussian_denoiser)
        out = sample(name, run, x, sigmas)
        end = last_nonzero(sigmas) if name == "dpm_fast" else (0.001 if "uni" in name else 0.0)
        errors.append(float((out - gaussian_flow(x, float(sigmas[0]), end)).abs().max()))
    assert errors[1] < errors[0] / 4


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 9, 10])
@pytest.mark.parametrize("name", ["dpm_fast", "deis", "sa_solver", "sa_solver_pece", "uni_pc"])
def test_evaluations_and_reports(name: str, steps: int) -> None:
    sigmas = schedule(name, steps)
    run, reports = make_run(gaussian_denoiser)
    sample(name, run, start_for(sigmas), sigmas)
    expected = {"sa_solver_pece": 2 * steps - 1}.get(name, steps)
    assert run.evaluations == expected
    count = len(_stage_orders(steps)) if name == "dpm_fast" else steps
    assert [i for i, _ in reports] == list(range(count))
    sigma_seen = [s for _, s in reports]
    assert sigma_seen == sorted(sigma_seen, reverse=True)


def test_dpm_fast_splits_its_budget() -> None:
    assert _stage_orders(1) == [1]
    assert _stage_orders(3) == [2, 1]
    assert _stage_orders(9) == [3, 3, 2, 1]
    assert _stage_orders(10) == [3, 3, 3, 1]
    assert all(sum(_stage_orders(n)) == n for n in range(1, 40))


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_counts_its_tries(order: int) -> None:
    sigmas = karras(10)
    run, reports = make_run(gaussian_denoiser)
    sample("dpm_adaptive", run, start_for(sigmas), sigmas, order=order)
    assert len(reports) > 1
    assert run.evaluations == order * len(reports)
    assert [i for i, _ in reports] == list(range(len(reports)))


def test_dpm_adaptive_tightens_with_rtol() -> None:
    sigmas = karras(10)
    x = start_for(sigmas)
    expected = gaussian_flow(x, float(sigmas[0]), last_nonzero(sigmas))
    loose, _ = make_run(gaussian_denoiser)
    tight, _ = make_run(gaussian_denoiser)
    loose_error = (sample("dpm_adaptive", loose, x, sigmas) - expected).abs().max()
    tight_out = sample("dpm_adaptive", tight, x, sigmas, rtol=0.0005, atol=0.0001)
    tight_error = (tight_out - expected).abs().max()
    assert tight.evaluations > loose.evaluations
    assert tight_error < loose_error / 4


@pytest.mark.parametrize(("name", "options"), [
    ("sa_solver", {}), ("sa_solver_pece", {}), ("sa_solver", {"simple_order_2": True}),
    ("dpm_adaptive", {"eta": 1.0}), ("dpm_fast", {"eta": 1.0}),
])
def test_stochastic_is_fixed_by_the_seed(name: str, options: dict) -> None:
    sigmas = karras(10)
    x = start_for(sigmas)
    outs = []
    for seed in (5, 5, 6):
        run, _ = make_run(gaussian_denoiser, seed)
        outs.append(sample(name, run, x, sigmas, **options))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


def test_sa_solver_without_noise_ignores_the_seed() -> None:
    sigmas = karras(24)
    x = start_for(sigmas)
    outs = []
    for seed in (1, 2):
        run, _ = make_run(gaussian_denoiser, seed)
        outs.append(sample("sa_solver", run, x, sigmas, eta=0.0))
    assert torch.equal(outs[0], outs[1])
    assert (outs[0] - gaussian_flow(x, float(sigmas[0]), 0.0)).abs().max() < 1e-2


def test_unipc_two_sigmas_only_rescales() -> None:
    sigmas = torch.tensor([3.0, 0.0])
    x = start_for(sigmas)
    run, reports = make_run(gaussian_denoiser)
    out = sample("uni_pc", run, x, sigmas)
    alpha_end = 1 / math.sqrt(1 + 0.001**2)
    torch.testing.assert_close(out, x / math.sqrt(10.0) / alpha_end)
    assert run.evaluations == 1 and len(reports) == 1


def test_partial_walk_ending_above_zero() -> None:
    sigmas = karras(24)[:13]  # stops at sigma ~1
    x = start_for(sigmas)
    end = float(sigmas[-1])
    for name, options in (("deis", {}), ("uni_pc", {}), ("sa_solver", {"eta": 0.0})):
        run, _ = make_run(gaussian_denoiser)
        out = sample(name, run, x, sigmas, **options)
        assert (out - gaussian_flow(x, float(sigmas[0]), end)).abs().max() < 0.05, name


def test_deis_under_inference_mode() -> None:
    sigmas = karras(6)
    x = start_for(sigmas)
    run, _ = make_run(gaussian_denoiser)
    plain = sample("deis", run, x, sigmas)
    with torch.inference_mode():
        run, _ = make_run(gaussian_denoiser)
        inside = sample("deis", run, x, sigmas)
    assert torch.equal(plain, inside)


def test_registry_flags() -> None:
    assert SAMPLERS["uni_pc"].discard_penultimate_sigma
    assert SAMPLERS["uni_pc_bh2"].discard_penultimate_sigma
    assert SAMPLERS["dpm_adaptive"].evaluations_per_step is None
    for name in ("dpm_fast", "deis", "sa_solver", "sa_solver_pece"):
        assert not SAMPLERS[name].discard_penultimate_sigma
