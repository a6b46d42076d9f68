"""ComfyUI's sampler nodes with options (SamplerEulerAncestral, SamplerDPMPP_2M_SDE, ...): a
SAMPLER for SamplerCustom with its eta, noise scale, order or solver set."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from nodegraph import InputField, Node, NodeContext

from ..values import MODEL
from .comfy.model_sampling import ModelSampling
from .comfy.run import Sampler
from .comfy.samplers import SAMPLERS
from .comfy.samplers.sa_solver import window_tau
from .comfy.sockets import SAMPLER

NoiseDevice = Literal["gpu", "cpu"]


def configured(name: str, **options: Any) -> Sampler:
    """Sampler `name` with `options` over its defaults."""
    spec = SAMPLERS[name]
    return Sampler(name, dataclasses.replace(spec, options={**spec.options, **options}))


def on_device(name: str, device: str) -> str:
    """The SDE sampler's name for where its Brownian tree lives ("gpu": the model's device)."""
    return name if device == "cpu" else f"{name}_gpu"


def _eta(default: float = 1.0, le: float = 100.0) -> float:
    return InputField(
        default, description="Stochastic strength (0: no noise).", ge=0.0, le=le, step=0.01
    )


def _s_noise(le: float = 100.0) -> float:
    return InputField(1.0, description="Scale of the added noise.", ge=0.0, le=le, step=0.01)


class SamplerEulerAncestral(Node):
    """Euler ancestral with its eta and noise scale."""

    category = "sampling/custom_sampling/samplers"
    eta: float = _eta()
    s_noise: float = _s_noise()

    def invoke(self, ctx: NodeContext) -> SAMPLER:
        return configured("euler_ancestral", eta=self.eta, s_noise=self.s_noise)


class SamplerEulerAncestralCFGPP(Node):
    """Euler ancestral CFG++ with its eta and noise scale."""

    category = "sampling/custom_sampling/samplers"
    display_name = "SamplerEulerAncestralCFG++"
    eta: float = _eta(le=1.0)
    s_noise: float = _s_noise(le=10.0)

    def invoke(self, ctx: NodeContext) -> SAMPLER:
        return configured("euler_ancestral_cfg_pp", eta=self.eta, s_noise=self.s_noise)


class SamplerLMS(Node):
    """Linear multistep of a chosen order."""

    category = "sampling/custom_sampling/samplers"
    order: int = InputField(4, description="How many past steps.", ge=1, le=100)

    def invoke(self, ctx: NodeContext) -> SAMPLER:
        return configured("lms", order=self.order)


class SamplerDPMPP_3M_SDE(Node):  # noqa: N801 - ComfyUI's name
    """DPM-Solver++(3M) SDE with its eta, noise scale and noise device."""

    category = "sampling/custom_sampling/samplers"
    eta: float = _eta()
    s_noise: float = _s_noise()
    noise_device: NoiseDevice = InputField("gpu", description="Where the Brownian tree lives.")

    def invoke(self, ctx: NodeContext) -> SAMPLER:
        name = on_device("dpmpp_3m_sde", self.noise_device)
        return configured(name, eta=self.eta, s_noise=self.s_noise)


class SamplerDPMPP_2M_SDE(Node):  # noqa: N801 - ComfyUI's name
    """DPM-Solver++(2M) SDE with its solver, eta, noise scale and noise device."""

    category = "sampling/custom_sampling/samplers"
    solver_type: Literal["midpoint", "heun"] = InputField("midpoint", description="The solver.")
    eta: float = _eta()
    s_noise: float = _s_noise()
    noise_device: NoiseDevice = InputField("gpu", description="Where the Brownian tree lives.")

    def invoke(self, ctx: NodeContext) -> SAMPLER:
        name = on_device("dpmpp_2m_sde", self.noise_device)
        return configured(name, eta=self.eta, s_noise=self.s_noise, solver_type=self.solver_type)


class SamplerDPMPP_SDE(Node):  # noqa: N801 - ComfyUI's name
    """DPM-Solver++ SDE with its eta, noise scale, midpoint ratio and noise device."""

    category = "sampling/custom_sampling/samplers"
    eta: float = _eta()
    s_noise: float = _s_noise()
    r: float = InputField(0.5, description="Where the midpoint lies.", ge=0.0, le=100.0, step=0.01)
    noise_device: NoiseDevice = InputField("gpu", description="Where the Brownian tree lives.")

    def invoke(self, ctx: NodeContext) -> SAMPLER:
        name = on_device("dpmpp_sde", self.noise_device)
        return configured(name, eta=self.eta, s_noise=self.s_noise, r=self.r)


class SamplerDPMPP_2S_Ancestral(Node):  # noqa: N801 - ComfyUI's name
    """DPM-Solver++(2S) ancestral with its eta and noise scale."""

    category = "sampling/custom_sampling/samplers"
    eta: float = _eta()
    s_noise: float = _s_noise()

    def invoke(self, ctx: NodeContext) -> SAMPLER:
        return configured("dpmpp_2s_ancestral", eta=self.eta, s_noise=self.s_noise)


def _float(default: float, what: str) -> float:
    return InputField(default, description=what, ge=0.0, le=100.0, step=0.01)


class SamplerDPMAdaptative(Node):
    """DPM-Solver adaptive with its order, tolerances and step-size controller."""

    category = "sampling/custom_sampling/samplers"
    order: int = InputField(3, description="Solver order.", ge=2, le=3)
    rtol: float = _float(0.05, "Relative tolerance.")
    atol: float = _float(0.0078, "Absolute tolerance.")
    h_init: float = _float(0.05, "The first step size.")
    pcoeff: float = _float(0.0, "Controller P coefficient.")
    icoeff: float = _float(1.0, "Controller I coefficient.")
    dcoeff: float = _float(0.0, "Controller D coefficient.")
    accept_safety: float = _float(0.81, "Safety factor for accepting a step.")
    eta: float = _eta(0.0)
    s_noise: float = _s_noise()

    def invoke(self, ctx: NodeContext) -> SAMPLER:
        options = self.model_dump(include=set(type(self).model_fields))
        return configured("dpm_adaptive", **options)


class SamplerSASolver(Node):
    """SA-Solver with its stochastic interval, orders and PECE mode."""

    category = "sampling/custom_sampling/samplers"
    model: MODEL = InputField(description="The model whose schedule places the interval.")
    eta: float = _eta(le=10.0)
    sde_start_percent: float = InputField(
        0.2, description="Where noise starts.", ge=0.0, le=1.0, step=0.001
    )
    sde_end_percent: float = InputField(
        0.8, description="Where noise ends.", ge=0.0, le=1.0, step=0.001
    )
    s_noise: float = _s_noise()
    predictor_order: int = InputField(3, description="Predictor order.", ge=1, le=6)
    corrector_order: int = InputField(4, description="Corrector order (0: none).", ge=0, le=6)
    use_pece: bool = InputField(False, description="Predict-evaluate-correct-evaluate.")
    simple_order_2: bool = InputField(False, description="The simpler second-order step.")

    def invoke(self, ctx: NodeContext) -> SAMPLER:
        ms = ModelSampling.for_model(self.model)
        start, end = (
            ms.percent_to_sigma(p) for p in (self.sde_start_percent, self.sde_end_percent)
        )
        return configured(
            "sa_solver",
            tau_func=window_tau(start, end, self.eta),
            s_noise=self.s_noise,
            predictor_order=self.predictor_order,
            corrector_order=self.corrector_order,
            use_pece=self.use_pece,
            simple_order_2=self.simple_order_2,
        )


class SamplerSEEDS2(Node):
    """SEEDS-2 with its solver, eta, noise scale and stage ratio (also exp_heun_2_x0)."""

    category = "sampling/custom_sampling/samplers"
    solver_type: Literal["phi_1", "phi_2"] = InputField("phi_1", description="The solver.")
    eta: float = _eta()
    s_noise: float = _s_noise()
    r: float = InputField(
        0.5, description="The intermediate stage's step.", ge=0.01, le=1.0, step=0.01
    )

    def invoke(self, ctx: NodeContext) -> SAMPLER:
        return configured(
            "seeds_2", solver_type=self.solver_type, eta=self.eta, s_noise=self.s_noise, r=self.r
        )
