"""ComfyUI's KSampler and KSamplerAdvanced, with ComfyUI's own sigmas, noise and samplers
(nodes.sampling.comfy), so a workflow moved from ComfyUI gives the same picture."""

from __future__ import annotations

from typing import Literal

from nodegraph import InputField, Node, NodeContext

from ..values import CONDITIONING, LATENT, MODEL, Conditioning, Model
from .comfy.guidance import Guider
from .comfy.noise import Noise
from .comfy.run import Sampler, cut_sigmas, ksampler_sigmas
from .comfy.samplers import SAMPLERS
from .comfy.schedulers import SCHEDULERS
from .comfy_sampling import sample_latent
from .native import MAX_SEED

SamplerName = Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]
SchedulerName = Literal[tuple(SCHEDULERS)]  # type: ignore[valid-type]


def cfg_guider(model: Model, positive: Conditioning, negative: Conditioning, cfg: float) -> Guider:
    return Guider(model, {"positive": positive, "negative": negative}, "cfg", cfg)


class KSampler(Node):
    """Denoise a latent with a sampler and scheduler (ComfyUI's KSampler)."""

    category = "sampling"
    display_name = "KSampler"
    model: MODEL = InputField(description="The model used for denoising the input latent.")
    seed: int = InputField(
        0,
        description="The random seed used for creating the noise.",
        ge=0,
        le=MAX_SEED,
        control_after_generate=True,
    )
    steps: int = InputField(
        20, description="The number of steps used in the denoising process.", ge=1, le=10000
    )
    cfg: float = InputField(
        8.0, description="Classifier-free guidance scale.", ge=0.0, le=100.0, step=0.1
    )
    sampler_name: SamplerName = InputField("euler", description="The sampling algorithm.")
    scheduler: SchedulerName = InputField("simple", description="How noise is removed per step.")
    positive: CONDITIONING = InputField(description="What to include in the image.")
    negative: CONDITIONING = InputField(description="What to exclude from the image.")
    latent_image: LATENT = InputField(description="The latent image to denoise.")
    denoise: float = InputField(
        1.0,
        description="The amount of denoising applied (below 1: img2img).",
        ge=0.0,
        le=1.0,
        step=0.01,
    )

    def invoke(self, ctx: NodeContext) -> LATENT:
        guider = cfg_guider(self.model, self.positive, self.negative, self.cfg)
        sampler = Sampler(self.sampler_name, SAMPLERS[self.sampler_name])
        ms = guider.model_sampling()
        sigmas = ksampler_sigmas(ms, sampler, self.scheduler, self.steps, self.denoise)
        if len(sigmas) == 0:
            ctx.warn("denoise is 0: the latent passes through unchanged")
            return self.latent_image
        noise = Noise(self.seed).generate(self.latent_image)
        return sample_latent(ctx, guider, sampler, sigmas, noise, self.latent_image, self.seed)[0]


class KSamplerAdvanced(Node):
    """KSampler with control over where the walk starts and ends and whether noise is added."""

    category = "sampling"
    display_name = "KSampler (Advanced)"
    model: MODEL = InputField(description="The denoising model.")
    add_noise: Literal["enable", "disable"] = InputField(
        "enable", description="Add noise first (disable: the latent has leftover noise)."
    )
    noise_seed: int = InputField(
        0, description="Noise seed.", ge=0, le=MAX_SEED, control_after_generate=True
    )
    steps: int = InputField(20, description="Steps of the whole schedule.", ge=1, le=10000)
    cfg: float = InputField(8.0, description="Guidance scale.", ge=0.0, le=100.0, step=0.1)
    sampler_name: SamplerName = InputField("euler", description="The sampling algorithm.")
    scheduler: SchedulerName = InputField("simple", description="How noise is removed per step.")
    positive: CONDITIONING = InputField(description="What the image should show.")
    negative: CONDITIONING = InputField(description="What it should not.")
    latent_image: LATENT = InputField(description="The latent to start from.")
    start_at_step: int = InputField(0, description="The step to start at.", ge=0, le=10000)
    end_at_step: int = InputField(10000, description="The step to end before.", ge=0, le=10000)
    return_with_leftover_noise: Literal["disable", "enable"] = InputField(
        "disable", description="Stop with the noise left at end_at_step (for a hand-over)."
    )

    def invoke(self, ctx: NodeContext) -> LATENT:
        guider = cfg_guider(self.model, self.positive, self.negative, self.cfg)
        sampler = Sampler(self.sampler_name, SAMPLERS[self.sampler_name])
        sigmas = ksampler_sigmas(guider.model_sampling(), sampler, self.scheduler, self.steps)
        force_full_denoise = self.return_with_leftover_noise == "disable"
        sigmas = cut_sigmas(sigmas, self.start_at_step, self.end_at_step, force_full_denoise)
        if sigmas is None:
            ctx.warn("start_at_step is not before end_at_step: the latent passes through")
            return self.latent_image
        noise = Noise(self.noise_seed, self.add_noise == "enable").generate(self.latent_image)
        return sample_latent(
            ctx, guider, sampler, sigmas, noise, self.latent_image, self.noise_seed
        )[0]
