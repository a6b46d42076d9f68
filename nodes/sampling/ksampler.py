"""ComfyUI's KSampler: noise and denoise in one node, with ComfyUI's denoise semantics."""

from __future__ import annotations

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
