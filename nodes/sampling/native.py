"""Samplers: where on the schedule denoising starts (AddNoise) and the walk down it (Denoise).

The schedulers are diffusers' own, under ComfyUI's names. The semantics follow diffusers'
StableDiffusionImg2ImgPipeline to the timestep: for strength s and n steps, the schedule for n
steps is set, the last min(int(n*s), n) steps are kept, and noise is added with the scheduler's
`add_noise` at the first kept timestep. Strength 1 is text-to-image: the input is ignored and
the start is pure noise times `init_noise_sigma`. Noise is the first draw of a CPU generator
seeded with the seed, so a seed gives the same image on every device; ancestral samplers go on
drawing from that generator, as the diffusers pipelines do.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from nodegraph import InputField, Node, NodeContext

from ..loading.patching import patched
from ..loading.residency import RESIDENCY
from ..values import (
    CONDITIONING,
    LATENT,
    MODEL,
    NOISY_LATENT,
    Conditioning,
    Latent,
    Model,
    Noisy,
)
from .preview import latent_preview
from .unet_inputs import UnetInputs

SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    # ComfyUI's name -> diffusers' scheduler class and the config that makes it that algorithm
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    "dpmpp_2m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    ),
    "ddpm": ("DDPMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
}
# uni_pc (bh1) is left out: diffusers 0.42's UniPCMultistepScheduler(solver_type="bh1") gives
# NaN on our models in every setting tried; its bh2 variant works (ComfyUI's KSampler has both).
SCHEDULE_FLAGS = {
    "normal": None,
    "karras": "use_karras_sigmas",
    "exponential": "use_exponential_sigmas",
    "beta": "use_beta_sigmas",
}
"""The schedule names diffusers has, as the scheduler flag that turns each on (normal: none)."""
SCHEDULES = tuple(SCHEDULE_FLAGS)
SamplerName = Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]
ScheduleName = Literal[SCHEDULES]  # type: ignore[valid-type]
MAX_SEED = 2**64 - 1


def make_scheduler(model: Model, sampler: str, schedule: str) -> tuple[Any, list[str]]:
    """A fresh diffusers scheduler for `sampler` on the model's training schedule.

    "normal" keeps the model's own timestep spacing; "karras", "exponential" and "beta" use
    those sigma spacings where the scheduler has them (a warning is returned where it does
    not). Returns (scheduler, warnings).
    """
    import diffusers

    if model.edm:
        raise ValueError(
            f"{model.name} samples on EDM's continuous sigmas (CosXL): the native nodes follow "
            "diffusers' discrete schedulers; sample it with KSampler or SamplerCustom"
        )
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}'; one of {', '.join(SAMPLERS)}")
    if schedule not in SCHEDULE_FLAGS:
        raise ValueError(f"unknown scheduler '{schedule}'; one of {', '.join(SCHEDULES)}")
    class_name, algorithm = SAMPLERS[sampler]
    cls = getattr(diffusers, class_name)
    config = {k: v for k, v in model.scheduler_config.items() if k != "_use_default_values"}
    config.update(algorithm)
    warnings = []
    params = inspect.signature(cls.__init__).parameters
    for name, flag in SCHEDULE_FLAGS.items():
        if flag is not None and flag in params:
            config[flag] = schedule == name
    wanted = SCHEDULE_FLAGS[schedule]
    if wanted is not None and wanted not in params:
        warnings.append(
            f"{sampler} has no {schedule} schedule in diffusers; used its normal spacing"
        )
    scheduler = cls.from_config(config)
    # The corrections the Stable Diffusion pipelines apply to outdated scheduler configs.
    fixes = {}
    if getattr(scheduler.config, "steps_offset", 1) != 1:
        fixes["steps_offset"] = 1
    if getattr(scheduler.config, "clip_sample", False) is True:
        fixes["clip_sample"] = False
    if fixes:
        config = {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}
        scheduler = cls.from_config({**config, **fixes})
    return scheduler, warnings


@dataclass
class Start:
    """Where denoising starts: the scheduler set up, the index of the first kept timestep."""

    scheduler: Any
    steps: int
    start: int
    timesteps: torch.Tensor
    warnings: list[str]


def plan_start(
    model: Model, sampler: str, schedule: str, steps: int, keep: int, start: int | None = None
) -> Start:
    """Set the schedule for `steps` and keep its last `keep` steps (0 <= keep <= steps).

    `start`, when given, is the index into the scheduler's timesteps to begin at instead (a
    diffusers `denoising_start` hand-over, which counts scheduler timesteps, not steps).
    """
    scheduler, warnings = make_scheduler(model, sampler, schedule)
    scheduler.set_timesteps(steps, device=model.device)
    if start is None:
        start = (steps - keep) * scheduler.order
    if start > 0 and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return Start(scheduler, steps, start, scheduler.timesteps[start:], warnings)


def timestep_cutoff(model: Model, fraction: float) -> float:
    """The training timestep where a `denoising_end` / `denoising_start` fraction falls."""
    train = int(model.scheduler_config.get("num_train_timesteps", 1000))
    return int(round(train - fraction * train))


def handover_start(model: Model, sampler: str, schedule: str, steps: int, fraction: float) -> int:
    """Where StableDiffusionXLImg2ImgPipeline(denoising_start=fraction) begins its timesteps."""
    scheduler, _ = make_scheduler(model, sampler, schedule)
    scheduler.set_timesteps(steps, device=model.device)
    timesteps = scheduler.timesteps
    remaining = int((timesteps < timestep_cutoff(model, fraction)).sum())
    if scheduler.order == 2 and remaining % 2 == 0:
        remaining += 1  # a second-order step is never cut in half (as diffusers)
    return len(timesteps) - remaining


def initial_noise(shape: torch.Size, seed: int, model: Model) -> torch.Tensor:
    """The first draw of a CPU generator seeded with `seed`, moved to the model's device."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=model.dtype).to(model.device)


def add_noise(
    model: Model,
    latent: torch.Tensor,
    *,
    seed: int,
    sampler: str,
    schedule: str,
    steps: int,
    keep: int,
    strength: float,
    denoising_start: float | None = None,
    add: bool = True,
) -> tuple[Noisy, list[str]]:
    """Noise `latent` for denoising its last `keep` of `steps` steps; keep == steps is txt2img.

    With `add` false the latent is taken as already noisy for where the walk starts (ComfyUI's
    KSamplerAdvanced with add_noise disabled: a hand-over with leftover noise).
    With `denoising_start` the latent is a hand-over, still noisy, from a sampler stopped at that
    fraction of the schedule (diffusers' denoising_end): no noise is added and the walk resumes
    at the same fraction, as StableDiffusionXLImg2ImgPipeline(denoising_start=...) does.
    """
    if not 0 <= keep <= steps:
        raise ValueError(f"cannot keep {keep} of {steps} steps")
    channels = int(model.unet.config.out_channels)
    if latent.ndim != 4 or latent.shape[1] != channels:
        raise ValueError(
            f"the model {model.name} denoises latents of {channels} channels, not of shape "
            f"{tuple(latent.shape)}: the latent comes from another model family's VAE"
        )
    start = None
    if denoising_start is not None:
        start = handover_start(model, sampler, schedule, steps, denoising_start)
    plan = plan_start(model, sampler, schedule, steps, keep, start)
    common = {"sampler": sampler, "scheduler": schedule, "steps": steps, "keep": keep, "seed": seed}
    if keep == 0 or len(plan.timesteps) == 0:  # nothing to walk: the input passes as it is
        empty = plan.timesteps[:0]
        noisy = Noisy(latent, start=plan.start, timesteps=empty, strength=strength, **common)
        return noisy, plan.warnings
    latent = model.latent_in(latent.to(device=model.device, dtype=model.dtype))
    if start is not None or not add:
        noisy = Noisy(
            latent, start=plan.start, timesteps=plan.timesteps, strength=strength, **common
        )
        return noisy, plan.warnings
    noise = initial_noise(latent.shape, seed, model)
    if keep == steps:
        noised = noise * plan.scheduler.init_noise_sigma
    else:
        noised = plan.scheduler.add_noise(latent, noise, plan.timesteps[:1])
    noisy = Noisy(noised, start=plan.start, timesteps=plan.timesteps, strength=strength, **common)
    return noisy, plan.warnings


def strength_steps(steps: int, strength: float) -> int:
    """How many of `steps` an img2img strength keeps (diffusers' rule)."""
    return min(int(steps * strength), steps)


@torch.no_grad()
def denoise(
    model: Model,
    noisy: Noisy,
    positive: Conditioning,
    negative: Conditioning | None,
    cfg: float,
    on_step: Any = None,
    denoising_end: float | None = None,
    end_step: int | None = None,
    finish: bool = False,
) -> torch.Tensor:
    """Walk the remaining schedule with classifier-free guidance; returns the clean LATENT.

    With `denoising_end` the walk stops where that fraction of the schedule ends, as
    StableDiffusionXLPipeline(denoising_end=...) does, and returns the still noisy latent; with
    `end_step` it stops before that step of the schedule (KSamplerAdvanced's end_at_step), and
    with `finish` it returns the last step's estimate of the clean latent instead (the step to
    sigma 0 that ComfyUI forces when no leftover noise is wanted).

    One batched model evaluation per scheduler step (negative and positive together, as the
    diffusers pipelines do); `on_step(i, total, estimate)` is called after each step with the
    scheduler's estimate of the clean latent where it gives one (else the current latent), in
    the UNet's space.
    """
    if noisy.remaining == 0:
        return noisy.latent
    plan = plan_start(model, noisy.sampler, noisy.scheduler, noisy.steps, noisy.keep, noisy.start)
    scheduler, timesteps = plan.scheduler, plan.timesteps
    if len(timesteps) != noisy.remaining or not torch.equal(timesteps, noisy.timesteps):
        raise ValueError("the noisy latent's schedule does not match this model's scheduler")
    if denoising_end is not None:
        cutoff = timestep_cutoff(model, denoising_end)
        timesteps = timesteps[: int((timesteps >= cutoff).sum())]
    stopped = end_step is not None and end_step * scheduler.order - noisy.start < len(timesteps)
    if end_step is not None:
        timesteps = timesteps[: max(0, end_step * scheduler.order - noisy.start)]
    if len(timesteps) == 0:
        return model.latent_out(noisy.latent)
    latents = noisy.latent.to(device=model.device, dtype=model.dtype)
    guided = negative is not None and cfg != 1.0
    cond = positive.only("Denoise", "positive")
    uncond = negative.only("Denoise", "negative") if guided and negative is not None else None
    inputs = UnetInputs.build(model, latents, cond, uncond, noisy.seed)
    kwargs: dict[str, Any] = {}
    params = inspect.signature(scheduler.step).parameters
    if "eta" in params:
        kwargs["eta"] = 0.0
    if "generator" in params:
        generator = torch.Generator("cpu").manual_seed(noisy.seed)
        torch.randn(latents.shape, generator=generator, dtype=model.dtype)  # the initial noise
        kwargs["generator"] = generator
    total = len(timesteps)
    with RESIDENCY.use([model.unet], model.device), patched(model.unet, model.patches):
        for i, t in enumerate(timesteps):
            model_in = torch.cat([latents] * 2) if guided else latents
            model_in = scheduler.scale_model_input(model_in, t)
            pred = inputs.run(model, model_in, t)
            if guided:
                uncond, text = pred.chunk(2)
                pred = uncond + cfg * (text - uncond)
            out = scheduler.step(pred, t, latents, **kwargs)
            latents = out.prev_sample
            estimate = getattr(out, "pred_original_sample", None)
            if on_step is not None:
                on_step(i + 1, total, latents if estimate is None else estimate)
    if finish and stopped and estimate is not None:
        latents = estimate
    return model.latent_out(latents)


class AddNoise(Node):
    """Decide where denoising starts and add that much noise (strength 1: text-to-image)."""

    category = "sampling"
    display_name = "Add Noise"
    model: MODEL = InputField(description="The model whose schedule is used.")
    latent: LATENT = InputField(description="The latent to start from (ignored at strength 1).")
    strength: float = InputField(
        1.0, description="How much to change: 1 ignores the input.", ge=0.0, le=1.0, step=0.01
    )
    seed: int = InputField(
        0, description="Noise seed.", ge=0, le=MAX_SEED, control_after_generate=True
    )
    steps: int = InputField(20, description="Steps of the whole schedule.", ge=1, le=1000)
    sampler: SamplerName = InputField("euler", description="The sampler.")
    scheduler: ScheduleName = InputField("normal", description="The timestep spacing.")
    denoising_start: float = InputField(
        0.0,
        description="A hand-over: the latent is a Denoise stopped at this share of the schedule "
        "(its denoising_end); no noise is added and strength is ignored. 0: not a hand-over.",
        ge=0.0,
        le=1.0,
        step=0.01,
    )

    def invoke(self, ctx: NodeContext) -> NOISY_LATENT:
        keep = self.steps if self.strength >= 1.0 else strength_steps(self.steps, self.strength)
        noisy, warnings = add_noise(
            self.model,
            self.latent.samples,
            seed=self.seed,
            sampler=self.sampler,
            schedule=self.scheduler,
            steps=self.steps,
            keep=keep,
            strength=self.strength,
            denoising_start=self.denoising_start or None,
        )
        for w in warnings:
            ctx.warn(w)
        if noisy.remaining == 0 and self.denoising_start:
            ctx.warn(f"denoising_start {self.denoising_start} leaves no step of {self.steps}")
        elif keep == 0:
            ctx.warn(
                f"strength {self.strength} is too low for {self.steps} steps: no step remains "
                f"(it needs at least {1 / self.steps:.3g}), so the latent passes through unchanged"
            )
        return noisy


class Denoise(Node):
    """Walk the remaining schedule with classifier-free guidance."""

    category = "sampling"
    display_name = "Denoise"
    model: MODEL = InputField(description="The denoising model.")
    noisy: NOISY_LATENT = InputField(description="From AddNoise: the start and the schedule.")
    positive: CONDITIONING = InputField(description="What the image should show.")
    negative: CONDITIONING = InputField(description="What it should not (often an empty text).")
    cfg: float = InputField(7.5, description="Guidance scale.", ge=0.0, le=100.0, step=0.1)
    denoising_end: float = InputField(
        1.0,
        description="Stop at this share of the schedule and return the still noisy latent (for "
        "a refiner's AddNoise denoising_start). 1: denoise to the end.",
        ge=0.0,
        le=1.0,
        step=0.01,
    )

    def invoke(self, ctx: NodeContext) -> LATENT:
        on_step = progress_with_preview(ctx, self.model)
        end = None if self.denoising_end >= 1.0 else self.denoising_end
        out = denoise(self.model, self.noisy, self.positive, self.negative, self.cfg, on_step, end)
        return Latent(out)


def progress_with_preview(ctx: NodeContext, model: Model) -> Callable[[int, int, Any], None]:
    """Per-step progress carrying a cheap preview of the image so far (when the model has one)."""

    def report(step: int, total: int, estimate: torch.Tensor) -> None:
        factors = model.preview_factors
        preview = None if factors is None else latent_preview(estimate, factors)
        ctx.progress(step, total, preview=preview)

    return report
