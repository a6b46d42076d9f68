"""Oracle-free checks of the ComfyUI-named samplers (euler, multistep, dpmpp, stepwise modules):
denoisers whose exact answer is known, evaluation counts, step reports and seeding.

Exact parity with ComfyUI is checked by hand with tools/comfy_reference/toy.py; these tests need
no ComfyUI.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from nodes.sampling.comfy.model_sampling import ModelSampling
from nodes.sampling.comfy.sampler_api import SamplerRun, SamplerSpec
from nodes.sampling.comfy.samplers import dpmpp, euler, multistep, stepwise
from nodes.sampling.comfy.samplers import steps as sampler_steps

SAMPLERS: dict[str, SamplerSpec] = {
    **euler.SAMPLERS, **multistep.SAMPLERS, **dpmpp.SAMPLERS, **stepwise.SAMPLERS
}  # fmt: skip
NAMES = sorted(SAMPLERS)
STOCHASTIC = {
    "euler_ancestral", "euler_ancestral_cfg_pp", "dpm_2_ancestral", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu", "exp_heun_2_x0_sde", "seeds_2", "seeds_3", "er_sde",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "ddpm", "lcm",
}  # fmt: skip
DETERMINISTIC = sorted(set(NAMES) - STOCHASTIC)
CFG_PP_TWINS = {
    "euler_cfg_pp": "euler",
    "euler_ancestral_cfg_pp": "euler_ancestral",
    "dpmpp_2m_cfg_pp": "dpmpp_2m",
    "res_multistep_cfg_pp": "res_multistep",
    "res_multistep_ancestral_cfg_pp": "res_multistep_ancestral",
    "gradient_estimation_cfg_pp": "gradient_estimation",
}
"""CFG++ samplers that are their twin exactly (in exact arithmetic) when uncond == guided.
dpmpp_2s_ancestral_cfg_pp is not: like ComfyUI it mixes the two evaluations' predictions."""

SAMPLING = ModelSampling.discrete(
    {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
)
SHAPE = (1, 4, 32, 32)


@pytest.fixture(autouse=True)
def _quiet_brownian_tree():
    # torchsde warns when a query lands a float32 ulp outside the tree's interval
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def karras(steps: int, low: float = 0.03, high: float = 14.6, rho: float = 7.0) -> torch.Tensor:
    """Karras et al.'s schedule, ending in 0."""
    ramp = torch.linspace(0, 1, steps)
    top, bottom = high ** (1 / rho), low ** (1 / rho)
    return torch.cat([(top + ramp * (bottom - top)) ** rho, torch.zeros(1)])


def gaussian_data(seed: int = 0) -> tuple[torch.Tensor, float]:
    """Per-element data means and one data std: x0 ~ N(mu, std^2)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g) * 0.3, 0.5


def gaussian_start(mu: torch.Tensor, std: float, sigma: torch.Tensor, seed: int) -> torch.Tensor:
    """A draw of the data noised to sigma: N(mu, std^2 + sigma^2)."""
    g = torch.Generator().manual_seed(seed)
    return mu + torch.randn(SHAPE, generator=g) * (std**2 + sigma**2) ** 0.5


def ideal_gaussian_denoiser(mu: torch.Tensor, std: float):
    """E[x0 | x] for Gaussian data, sigma per sample."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma.view(-1, 1, 1, 1) ** 2
        return (std**2 * x + s2 * mu) / (std**2 + s2)

    return denoise


def make_run(denoise, seed: int | None = 1, pair=None, report=None) -> SamplerRun:
    """A SamplerRun whose negative prediction (for CFG++) is the guided one unless given."""
    pair = pair or (lambda x, sigma: (denoise(x, sigma), denoise(x, sigma)))
    return SamplerRun(denoise, SAMPLING, seed, report=report, pair_denoiser=pair)


def sample(name: str, run: SamplerRun, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    spec = SAMPLERS[name]
    return spec.fn(run, x.clone(), sigmas.clone(), **spec.options)


def start(sigmas: torch.Tensor, seed: int = 5, mean: torch.Tensor | float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return mean + torch.randn(SHAPE, generator=g) * float(sigmas[0])


# -- a single-point data distribution --------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_point_mass_lands_on_the_point(name: str):
    target = torch.linspace(-1, 1, int(np.prod(SHAPE))).view(SHAPE)
    sigmas = karras(8)
    x_t = start(sigmas, mean=target)
    seen: list[torch.Tensor] = []
    run = make_run(lambda x, sigma: target.expand_as(x), report=lambda i, x, d, s: seen.append(x))
    out = sample(name, run, x_t, sigmas)
    assert torch.allclose(out, target, atol=1e-4), (out - target).abs().max()
    if name in DETERMINISTIC:  # the exact flow of a point mass is a straight line in sigma
        # ComfyUI's fourth-order iPNDM-v weights sum to 1 only to about 1e-3 (see below)
        atol = 2e-2 if name == "ipndm_v" else 1e-3
        for x, sigma in zip(seen, sigmas, strict=False):
            expected = target + (x_t - target) * (sigma / sigmas[0])
            assert torch.allclose(x, expected, atol=atol, rtol=1e-4)


# -- Gaussian data: the ODE's exact end, and the SDE samplers' distribution ------------------------


FIRST_ORDER = {"euler", "euler_cfg_pp", "heunpp2", "gradient_estimation",
               "gradient_estimation_cfg_pp"}  # fmt: skip


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_follow_the_exact_ode(name: str):
    mu, std = gaussian_data()
    denoise = ideal_gaussian_denoiser(mu, std)
    errors = []
    for steps in (10, 40):
        sigmas = karras(steps)
        x_t = gaussian_start(mu, std, sigmas[0], seed=2)
        exact = mu + (x_t - mu) * std / (std**2 + sigmas[0] ** 2) ** 0.5
        errors.append(float((sample(name, make_run(denoise), x_t, sigmas) - exact).abs().max()))
    if name in FIRST_ORDER:
        assert errors[1] < 0.1 and errors[1] < errors[0] / 1.5, errors
    else:
        assert errors[1] < 1e-2, errors


@pytest.mark.parametrize(
    "name", sorted(STOCHASTIC - {"lcm", "dpmpp_2s_ancestral_cfg_pp"})
)  # lcm is not a sampler of the data distribution; the cfg_pp 2S mixes two evaluations
def test_stochastic_samplers_reach_the_data_distribution(name: str):
    mu, std = gaussian_data()
    sigmas = karras(50)
    x_t = gaussian_start(mu, std, sigmas[0], seed=3)
    residual = sample(name, make_run(ideal_gaussian_denoiser(mu, std)), x_t, sigmas) - mu
    assert abs(float(residual.mean())) < 0.03
    assert abs(float(residual.std()) - std) < 0.06, float(residual.std())


# -- bookkeeping: evaluations, step reports, seeds -------------------------------------------------


def toy_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A cheap non-linear x0 estimate."""
    return torch.tanh(x / (1 + sigma.view(-1, 1, 1, 1) ** 2) ** 0.5) * 0.8


@pytest.mark.parametrize("name", NAMES)
def test_evaluations_and_step_reports(name: str):
    spec = SAMPLERS[name]
    steps = 6
    sigmas = karras(steps + 1)[:-1]  # ends above 0: no final denoising shortcut
    reports: list[tuple[int, float]] = []
    run = make_run(toy_denoiser, report=lambda i, x, d, s: reports.append((i, float(s))))
    sample(name, run, start(sigmas), sigmas)
    assert [i for i, _ in reports] == list(range(steps))
    assert [s for _, s in reports] == [float(s) for s in sigmas[:-1]]
    per_step = spec.evaluations_per_step
    # heun++ always ends with a Heun and an Euler step (it compares with the schedule's end)
    expected = per_step * steps - (3 if name == "heunpp2" else 0)
    assert run.evaluations == expected

    to_zero = karras(steps)
    run = make_run(toy_denoiser)
    sample(name, run, start(to_zero), to_zero)
    assert per_step * (steps - 1) <= run.evaluations <= per_step * steps


@pytest.mark.parametrize("name", NAMES)
def test_seeding(name: str):
    sigmas = karras(5)
    x_t = start(sigmas)
    first, again, other = (
        sample(name, make_run(toy_denoiser, seed), x_t, sigmas) for seed in (1, 1, 2)
    )
    assert torch.equal(first, again)
    if name in STOCHASTIC:
        assert not torch.allclose(first, other)
    else:
        assert torch.equal(first, other)


def test_empty_schedule_returns_the_input():
    x = torch.randn(SHAPE)
    for name in NAMES:
        assert torch.equal(sample(name, make_run(toy_denoiser), x, torch.tensor([3.0])), x)


# -- CFG++ -----------------------------------------------------------------------------------------


def _refuse(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    raise AssertionError("a CFG++ sampler must ask for the negative prediction too")


@pytest.mark.parametrize("name", sorted(CFG_PP_TWINS))
def test_cfg_pp_with_uncond_equal_to_guided_is_its_twin(name: str):
    sigmas = karras(8)
    x_t = start(sigmas)
    run = SamplerRun(
        _refuse, SAMPLING, 4, pair_denoiser=lambda x, s: (toy_denoiser(x, s), toy_denoiser(x, s))
    )
    ours = sample(name, run, x_t, sigmas)
    twin = sample(CFG_PP_TWINS[name], make_run(toy_denoiser, seed=4), x_t, sigmas)
    assert torch.allclose(ours, twin, atol=1e-4, rtol=1e-4)

    shifted = SamplerRun(
        _refuse,
        SAMPLING,
        4,
        pair_denoiser=lambda x, s: (toy_denoiser(x, s), toy_denoiser(x, s) * 0.5),
    )
    assert not torch.allclose(sample(name, shifted, x_t, sigmas), ours, atol=1e-3)


def test_cfg_pp_2s_ancestral_asks_for_both_predictions():
    sigmas = karras(4)
    run = SamplerRun(
        _refuse, SAMPLING, 4, pair_denoiser=lambda x, s: (toy_denoiser(x, s), toy_denoiser(x, s))
    )
    sample("dpmpp_2s_ancestral_cfg_pp", run, start(sigmas), sigmas)
    assert run.evaluations == 7


# -- coefficients ----------------------------------------------------------------------------------


def test_lms_coefficients_are_integrated_lagrange_weights():
    ts = np.array([10.0, 8.0, 6.0, 4.0, 2.0], dtype=np.float32)
    for order in (1, 2, 3, 4):
        i = order - 1
        weights = [multistep.lms_coefficient(order, ts, i, j) for j in range(order)]
        assert sum(weights) == pytest.approx(float(ts[i + 1] - ts[i]), rel=1e-5)
    # equal steps of -2: Adams-Bashforth 2 is dt * (3/2, -1/2)
    assert [multistep.lms_coefficient(2, ts, 1, j) for j in (0, 1)] == pytest.approx([-3.0, 1.0])
    with pytest.raises(ValueError):
        multistep.lms_coefficient(3, ts, 1, 0)


def test_ipndm_v_on_equal_steps_is_ipndm_to_order_3():
    # (not at order 4: ComfyUI's variable-step order-4 weights are not Adams-Bashforth's there)
    sigmas = torch.cat([torch.linspace(8.0, 0.5, 9), torch.zeros(1)])
    x_t = start(sigmas)
    fixed = multistep.ipndm(make_run(toy_denoiser), x_t.clone(), sigmas, max_order=3)
    variable = multistep.ipndm(
        make_run(toy_denoiser), x_t.clone(), sigmas, max_order=3, variable=True
    )
    assert torch.allclose(fixed, variable, atol=1e-5, rtol=1e-5)


def test_ipndm_v_weights_sum_to_one_up_to_order_3():
    sigmas = karras(8).double()
    for i in range(1, 7):
        steps = [sigmas[i + 1] - sigmas[i]] + [sigmas[i - k] - sigmas[i - k - 1] for k in range(3)]
        for order in range(2, min(4, i + 1) + 1):
            total = float(sum(multistep._ipndm_v_weights(order, steps[:order])))
            # order 4 is ComfyUI's formula as it stands: consistent only to ~1e-3
            assert total == pytest.approx(1.0, abs=1e-12 if order < 4 else 2e-3)


def test_phi_functions():
    h = torch.tensor([-2.0, -0.5, 0.3])
    assert torch.allclose(sampler_steps.h_phi_1(h), h.exp() - 1)
    assert torch.allclose(sampler_steps.h_phi_2(h), (h.exp() - 1 - h) / h)
    sigma = torch.tensor([0.1, 1.0, 14.6])
    assert torch.allclose(sampler_steps.sigma_at(sampler_steps.half_log_snr(sigma)), sigma)
