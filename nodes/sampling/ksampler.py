"""ComfyUI's KSampler and KSamplerAdvanced: noise and denoise in one node, with ComfyUI's
denoise and start / end step semantics (the SDXL base-to-refiner hand-over).

The samplers themselves are still diffusers' schedulers under ComfyUI's names (see
nodes.sampling.native); ComfyUI's own sigma tables and samplers are issue 18.
"""

from __future__ import annotations

from typing import Literal

from nodegraph import InputField, Node, NodeContext

from ..values import CONDITIONING, LATENT, MODEL
from .native import (
    MAX_SEED,
    SamplerName,
    ScheduleName,
    add_noise,
    denoise,
    progress_with_preview,
)


def ksampler_schedule(steps: int, denoise: float) -> tuple[int, int]:
    """ComfyUI's denoise: (steps of the whole schedule, steps walked).

    Always `steps` steps, the last ones of a schedule stretched to int(steps / denoise);
    denoise 1 (or more) is the plain schedule from pure noise; denoise 0 walks nothing.
    """
    if denoise > 0.9999:
        return steps, steps
    if denoise <= 0.0:
        return steps, 0
    return int(steps / denoise), steps


class KSampler(Node):
    """Add noise and denoise in one node, with ComfyUI's denoise semantics."""

    category = "sampling"
    display_name = "KSampler"
    model: MODEL = InputField(description="The denoising model.")
    seed: int = InputField(
        0, description="Noise seed.", ge=0, le=MAX_SEED, control_after_generate=True
    )
    steps: int = InputField(20, description="Model evaluations (sampler steps).", ge=1, le=1000)
    cfg: float = InputField(8.0, description="Guidance scale.", ge=0.0, le=100.0, step=0.1)
    sampler_name: SamplerName = InputField("euler", description="The sampler.")
    scheduler: ScheduleName = InputField("normal", description="The timestep spacing.")
    positive: CONDITIONING = InputField(description="What the image should show.")
    negative: CONDITIONING = InputField(description="What it should not.")
    latent_image: LATENT = InputField(description="The latent to start from.")
    denoise: float = InputField(
        1.0, description="Share of the schedule to walk.", ge=0.0, le=1.0, step=0.01
    )

    def invoke(self, ctx: NodeContext) -> LATENT:
        total, keep = ksampler_schedule(self.steps, self.denoise)
        limit = int(self.model.scheduler_config.get("num_train_timesteps", 1000))
        if total > limit:
            raise ValueError(
                f"denoise {self.denoise} with {self.steps} steps needs a schedule of {total} "
                f"steps, more than the model's {limit} training timesteps; raise denoise"
            )
        noisy, warnings = add_noise(
            self.model,
            self.latent_image,
            seed=self.seed,
            sampler=self.sampler_name,
            schedule=self.scheduler,
            steps=total,
            keep=keep,
            strength=self.denoise,
        )
        for w in warnings:
            ctx.warn(w)
        if keep == 0:
            ctx.warn("denoise is 0: the latent passes through unchanged")
        on_step = progress_with_preview(ctx, self.model)
        return denoise(self.model, noisy, self.positive, self.negative, self.cfg, on_step)


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
    sampler_name: SamplerName = InputField("euler", description="The sampler.")
    scheduler: ScheduleName = InputField("normal", description="The timestep spacing.")
    positive: CONDITIONING = InputField(description="What the image should show.")
    negative: CONDITIONING = InputField(description="What it should not.")
    latent_image: LATENT = InputField(description="The latent to start from.")
    start_at_step: int = InputField(0, description="The step to start at.", ge=0, le=10000)
    end_at_step: int = InputField(10000, description="The step to end before.", ge=0, le=10000)
    return_with_leftover_noise: Literal["disable", "enable"] = InputField(
        "disable", description="Stop with the noise left at end_at_step (for a hand-over)."
    )

    def invoke(self, ctx: NodeContext) -> LATENT:
        start = min(self.start_at_step, self.steps)
        if start >= min(self.end_at_step, self.steps):
            ctx.warn("start_at_step is not before end_at_step: the latent passes through")
            return self.latent_image
        noisy, warnings = add_noise(
            self.model,
            self.latent_image,
            seed=self.noise_seed,
            sampler=self.sampler_name,
            schedule=self.scheduler,
            steps=self.steps,
            keep=self.steps - start,
            strength=1.0 - start / self.steps,
            add=self.add_noise == "enable",
        )
        for w in warnings:
            ctx.warn(w)
        on_step = progress_with_preview(ctx, self.model)
        return denoise(
            self.model,
            noisy,
            self.positive,
            self.negative,
            self.cfg,
            on_step,
            end_step=self.end_at_step,
            finish=self.return_with_leftover_noise == "disable",
        )
