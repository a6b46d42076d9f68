"""ComfyUI's custom-sampling nodes: samplers, schedulers and sigmas, noise and guiders as values
(SAMPLER, SIGMAS, NOISE, GUIDER), put together by SamplerCustom / SamplerCustomAdvanced."""

from __future__ import annotations

from typing import Literal

import torch

from nodegraph import InputField, Node, NodeContext, Outputs

from ..values import CONDITIONING, LATENT, MODEL, Latent
from .comfy.guidance import Guider
from .comfy.model_sampling import ModelSampling
from .comfy.noise import Noise
from .comfy.run import Sampler
from .comfy.samplers import SAMPLERS
from .comfy.schedulers import beta as beta_schedule
from .comfy.schedulers import (
    exponential_sigmas,
    karras_sigmas,
    laplace_sigmas,
    polyexponential_sigmas,
    schedule,
    vp_sigmas,
)
from .comfy.sockets import GUIDER, NOISE, SAMPLER, SIGMAS
from .comfy_sampling import sample_latent
from .ksampler import SamplerName, SchedulerName, cfg_guider
from .native import MAX_SEED

SD_SIGMA_MAX, SD_SIGMA_MIN = 14.614642, 0.0291675
"""ComfyUI's defaults for the scheduler nodes' sigma range: SD's table."""


def _sigma_input(default: float, what: str) -> float:
    return InputField(default, description=what, ge=0.0, le=5000.0, step=0.01)


class KSamplerSelect(Node):
    """A sampler by name, for SamplerCustom."""

    category = "sampling/custom_sampling/samplers"
    sampler_name: SamplerName = InputField("euler", description="The sampling algorithm.")

    def invoke(self, ctx: NodeContext) -> SAMPLER:
        return Sampler(self.sampler_name, SAMPLERS[self.sampler_name])


class BasicScheduler(Node):
    """A scheduler's sigmas for the model; denoise below 1 keeps the last steps of a longer one."""

    category = "sampling/custom_sampling/schedulers"
    model: MODEL = InputField(description="The model whose sigma table is used.")
    scheduler: SchedulerName = InputField("simple", description="How noise is removed per step.")
    steps: int = InputField(20, description="Steps.", ge=1, le=10000)
    denoise: float = InputField(
        1.0, description="Share of the schedule.", ge=0.0, le=1.0, step=0.01
    )

    def invoke(self, ctx: NodeContext) -> SIGMAS:
        total = self.steps
        if self.denoise < 1.0:
            if self.denoise <= 0.0:
                return torch.zeros(0)
            total = int(self.steps / self.denoise)
        ms = ModelSampling.for_model(self.model)
        return schedule(ms, self.scheduler, total).cpu()[-(self.steps + 1) :]


class _SigmaRange(Node):
    """Steps and a sigma range: the inputs the range schedulers share, in ComfyUI's order."""

    category = "sampling/custom_sampling/schedulers"
    steps: int = InputField(20, description="Steps.", ge=1, le=10000)
    sigma_max: float = _sigma_input(SD_SIGMA_MAX, "The first sigma.")
    sigma_min: float = _sigma_input(SD_SIGMA_MIN, "The last sigma before 0.")


class KarrasScheduler(_SigmaRange):
    """Karras et al.'s schedule between two sigmas."""

    rho: float = InputField(7.0, description="Curvature.", ge=0.0, le=100.0, step=0.01)

    def invoke(self, ctx: NodeContext) -> SIGMAS:
        return karras_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)


class ExponentialScheduler(_SigmaRange):
    """Sigmas uniform in log sigma."""

    def invoke(self, ctx: NodeContext) -> SIGMAS:
        return exponential_sigmas(self.steps, self.sigma_min, self.sigma_max)


class PolyexponentialScheduler(_SigmaRange):
    """Sigmas uniform in log sigma along a ramp raised to rho."""

    rho: float = InputField(1.0, description="Curvature.", ge=0.0, le=100.0, step=0.01)

    def invoke(self, ctx: NodeContext) -> SIGMAS:
        return polyexponential_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)


class LaplaceScheduler(_SigmaRange):
    """The Laplace schedule between two sigmas."""

    mu: float = InputField(0.0, description="Location.", ge=-10.0, le=10.0, step=0.1)
    beta: float = InputField(0.5, description="Scale.", ge=0.0, le=10.0, step=0.1)

    def invoke(self, ctx: NodeContext) -> SIGMAS:
        return laplace_sigmas(self.steps, self.sigma_min, self.sigma_max, self.mu, self.beta)


class VPScheduler(Node):
    """The continuous variance-preserving schedule."""

    category = "sampling/custom_sampling/schedulers"
    steps: int = InputField(20, description="Steps.", ge=1, le=10000)
    beta_d: float = InputField(19.9, description="beta_d.", ge=0.0, le=5000.0, step=0.01)
    beta_min: float = InputField(0.1, description="beta_min.", ge=0.0, le=5000.0, step=0.01)
    eps_s: float = InputField(0.001, description="The end time.", ge=0.0, le=1.0, step=0.0001)

    def invoke(self, ctx: NodeContext) -> SIGMAS:
        return vp_sigmas(self.steps, self.beta_d, self.beta_min, self.eps_s)


class BetaSamplingScheduler(Node):
    """Timesteps at the quantiles of a Beta distribution."""

    category = "sampling/custom_sampling/schedulers"
    model: MODEL = InputField(description="The model whose sigma table is used.")
    steps: int = InputField(20, description="Steps.", ge=1, le=10000)
    alpha: float = InputField(0.6, description="Beta's alpha.", ge=0.0, le=50.0, step=0.01)
    beta: float = InputField(0.6, description="Beta's beta.", ge=0.0, le=50.0, step=0.01)

    def invoke(self, ctx: NodeContext) -> SIGMAS:
        ms = ModelSampling.for_model(self.model)
        return beta_schedule(ms, self.steps, self.alpha, self.beta)


class SDTurboScheduler(Node):
    """SD / SDXL Turbo's sigmas: every 100th timestep from the top, from where denoise starts."""

    category = "sampling/custom_sampling/schedulers"
    model: MODEL = InputField(description="The model whose sigma table is used.")
    steps: int = InputField(1, description="Steps.", ge=1, le=10)
    denoise: float = InputField(
        1.0, description="Share of the schedule.", ge=0.0, le=1.0, step=0.01
    )

    def invoke(self, ctx: NodeContext) -> SIGMAS:
        start = 10 - int(10 * self.denoise)
        timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start : start + self.steps]
        sigmas = ModelSampling.for_model(self.model).sigma(timesteps)
        return torch.cat([sigmas, sigmas.new_zeros([1])])


class SigmaHalves(Outputs):
    shown_names = True  # ComfyUI's RETURN_NAMES
    high_sigmas: SIGMAS
    low_sigmas: SIGMAS


class SplitSigmas(Node):
    """Split sigmas at a step: the walk to it, and the walk from it."""

    category = "sampling/custom_sampling/sigmas"
    sigmas: SIGMAS = InputField(description="The sigmas to split.")
    step: int = InputField(0, description="The step to split at.", ge=0, le=10000)

    def invoke(self, ctx: NodeContext) -> SigmaHalves:
        return SigmaHalves(
            high_sigmas=self.sigmas[: self.step + 1], low_sigmas=self.sigmas[self.step :]
        )


class SplitSigmasDenoise(Node):
    """Split sigmas so the low half walks the given share of the steps."""

    category = "sampling/custom_sampling/sigmas"
    sigmas: SIGMAS = InputField(description="The sigmas to split.")
    denoise: float = InputField(1.0, description="The low half's share.", ge=0.0, le=1.0, step=0.01)

    def invoke(self, ctx: NodeContext) -> SigmaHalves:
        steps = max(self.sigmas.shape[-1] - 1, 0)
        keep = round(steps * self.denoise)
        return SigmaHalves(high_sigmas=self.sigmas[:-keep], low_sigmas=self.sigmas[-(keep + 1) :])


class FlipSigmas(Node):
    """Reverse the sigmas (to walk a picture back to noise); a leading 0 becomes 0.0001."""

    category = "sampling/custom_sampling/sigmas"
    sigmas: SIGMAS = InputField(description="The sigmas to flip.")

    def invoke(self, ctx: NodeContext) -> SIGMAS:
        if len(self.sigmas) == 0:
            return self.sigmas
        sigmas = self.sigmas.flip(0)
        if sigmas[0] == 0:
            sigmas[0] = 0.0001
        return sigmas


class SetFirstSigma(Node):
    """Replace the first sigma."""

    category = "sampling/custom_sampling/sigmas"
    sigmas: SIGMAS = InputField(description="The sigmas.")
    sigma: float = InputField(
        136.0, description="The new first sigma.", ge=0.0, le=20000.0, step=0.001
    )

    def invoke(self, ctx: NodeContext) -> SIGMAS:
        sigmas = self.sigmas.clone()
        sigmas[0] = self.sigma
        return sigmas


class RandomNoise(Node):
    """Initial noise from a seed, as ComfyUI draws it."""

    category = "sampling/custom_sampling/noise"
    noise_seed: int = InputField(
        0, description="Noise seed.", ge=0, le=MAX_SEED, control_after_generate=True
    )

    def invoke(self, ctx: NodeContext) -> NOISE:
        return Noise(self.noise_seed)


class DisableNoise(Node):
    """No initial noise (the latent already carries its noise)."""

    category = "sampling/custom_sampling/noise"

    def invoke(self, ctx: NodeContext) -> NOISE:
        return Noise(0, enabled=False)


class BasicGuider(Node):
    """Follow one conditioning, without classifier-free guidance."""

    category = "sampling/custom_sampling/guiders"
    model: MODEL = InputField(description="The denoising model.")
    conditioning: CONDITIONING = InputField(description="What the image should show.")

    def invoke(self, ctx: NodeContext) -> GUIDER:
        return Guider(self.model, {"positive": self.conditioning}, "basic")


class CFGGuider(Node):
    """Classifier-free guidance between a positive and a negative conditioning."""

    category = "sampling/custom_sampling/guiders"
    model: MODEL = InputField(description="The denoising model.")
    positive: CONDITIONING = InputField(description="What the image should show.")
    negative: CONDITIONING = InputField(description="What it should not.")
    cfg: float = InputField(8.0, description="Guidance scale.", ge=0.0, le=100.0, step=0.1)

    def invoke(self, ctx: NodeContext) -> GUIDER:
        return cfg_guider(self.model, self.positive, self.negative, self.cfg)


class DualCFGGuider(Node):
    """Guidance by two conditionings and a negative, each with its own scale."""

    category = "sampling/custom_sampling/guiders"
    model: MODEL = InputField(description="The denoising model.")
    cond1: CONDITIONING = InputField(description="The main conditioning.")
    cond2: CONDITIONING = InputField(description="The middle conditioning.")
    negative: CONDITIONING = InputField(description="What the image should not show.")
    cfg_conds: float = InputField(
        8.0, description="cond1 against cond2.", ge=0.0, le=100.0, step=0.1
    )
    cfg_cond2_negative: float = InputField(
        8.0, description="cond2 against the negative.", ge=0.0, le=100.0, step=0.1
    )
    style: Literal["regular", "nested"] = InputField("regular", description="How they combine.")

    def invoke(self, ctx: NodeContext) -> GUIDER:
        conds = {"positive": self.cond1, "middle": self.cond2, "negative": self.negative}
        rule = "dual_nested" if self.style == "nested" else "dual_regular"
        return Guider(self.model, conds, rule, self.cfg_conds, self.cfg_cond2_negative)


class SampledLatents(Outputs):
    shown_names = True  # ComfyUI's RETURN_NAMES
    output: LATENT
    denoised_output: LATENT


def _sample(
    ctx: NodeContext,
    guider: Guider,
    noise: Noise,
    sampler: Sampler,
    sigmas: torch.Tensor,
    latent: Latent,
) -> SampledLatents:
    if len(sigmas) == 0:
        return SampledLatents(output=latent, denoised_output=latent)
    output, denoised = sample_latent(
        ctx, guider, sampler, sigmas, noise.generate(latent), latent, noise.seed
    )
    return SampledLatents(output=output, denoised_output=denoised)


class SamplerCustom(Node):
    """Sample with a chosen sampler and sigmas, with classifier-free guidance."""

    category = "sampling/custom_sampling"
    model: MODEL = InputField(description="The denoising model.")
    add_noise: bool = InputField(True, description="Add the seed's noise first.")
    noise_seed: int = InputField(
        0, description="Noise seed.", ge=0, le=MAX_SEED, control_after_generate=True
    )
    cfg: float = InputField(8.0, description="Guidance scale.", ge=0.0, le=100.0, step=0.1)
    positive: CONDITIONING = InputField(description="What the image should show.")
    negative: CONDITIONING = InputField(description="What it should not.")
    sampler: SAMPLER = InputField(description="The sampling algorithm.")
    sigmas: SIGMAS = InputField(description="The sigmas to walk.")
    latent_image: LATENT = InputField(description="The latent to start from.")

    def invoke(self, ctx: NodeContext) -> SampledLatents:
        guider = cfg_guider(self.model, self.positive, self.negative, self.cfg)
        noise = Noise(self.noise_seed, self.add_noise)
        return _sample(ctx, guider, noise, self.sampler, self.sigmas, self.latent_image)


class SamplerCustomAdvanced(Node):
    """Sample with a chosen noise, guider, sampler and sigmas."""

    category = "sampling/custom_sampling"
    noise: NOISE = InputField(description="The initial noise.")
    guider: GUIDER = InputField(description="How the model is guided.")
    sampler: SAMPLER = InputField(description="The sampling algorithm.")
    sigmas: SIGMAS = InputField(description="The sigmas to walk.")
    latent_image: LATENT = InputField(description="The latent to start from.")

    def invoke(self, ctx: NodeContext) -> SampledLatents:
        return _sample(ctx, self.guider, self.noise, self.sampler, self.sigmas, self.latent_image)
