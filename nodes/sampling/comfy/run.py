"""One ComfyUI sampling call: the sigmas KSampler picks, the noise meeting the latent, the
sampler walking them, and the latent coming back (comfy/samplers.py's KSampler.sample ->
CFGGuider.sample -> KSAMPLER.sample path)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...loading.patching import patched
from ...loading.residency import RESIDENCY
from .guidance import Guider
from .inpaint import Inpainting, latent_mask
from .model_sampling import ModelSampling
from .sampler_api import SamplerRun, SamplerSpec, StepReport
from .schedulers import schedule


@dataclass(frozen=True)
class Sampler:
    """SAMPLER: a sampler name and its function (KSamplerSelect's output)."""

    name: str
    spec: SamplerSpec


def ksampler_sigmas(
    ms: ModelSampling, sampler: Sampler, scheduler: str, steps: int, denoise: float = 1.0
) -> torch.Tensor:
    """KSampler's sigmas: the schedule for `steps` (one more, less the penultimate sigma, for
    the samplers that want it); with denoise < 1 the last steps + 1 sigmas of a schedule for
    int(steps / denoise) steps; denoise 0 walks nothing."""
    if denoise <= 0.0:
        return torch.zeros(0)
    total = steps if denoise > 0.9999 else int(steps / denoise)
    if sampler.spec.discard_penultimate_sigma:
        sigmas = schedule(ms, scheduler, total + 1)
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    else:
        sigmas = schedule(ms, scheduler, total)
    return sigmas if denoise > 0.9999 else sigmas[-(steps + 1) :]


def cut_sigmas(
    sigmas: torch.Tensor, start_step: int, last_step: int, force_full_denoise: bool
) -> torch.Tensor | None:
    """KSamplerAdvanced's window on the sigmas; None when nothing is left to walk."""
    if last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step >= len(sigmas) - 1:
        return None
    return sigmas[start_step:]


@dataclass
class Sampled:
    """A sampling call's result: the latent, and the last step's clean estimate (both LATENTs)."""

    latent: torch.Tensor
    denoised: torch.Tensor


@torch.no_grad()
def sample(
    guider: Guider,
    sampler: Sampler,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    latent: torch.Tensor,
    seed: int | None,
    report: StepReport | None = None,
    noise_mask: torch.Tensor | None = None,
) -> Sampled:
    """Walk `sigmas` from `latent` plus `noise` (VAE-space tensors, any device); with a
    `noise_mask` only where it is 1 changes (ComfyUI's KSamplerX0Inpaint)."""
    model = guider.model
    channels = int(model.unet.config.out_channels)
    if latent.ndim != 4 or latent.shape[1] != channels:
        raise ValueError(
            f"the model {model.name} denoises latents of {channels} channels, not of shape "
            f"{tuple(latent.shape)}: the latent comes from another model family's VAE"
        )
    if sigmas.shape[-1] == 0:
        return Sampled(latent, latent)
    device = model.device
    ms = guider.model_sampling()
    sigmas = sigmas.to(device)
    image = latent.to(device=device, dtype=torch.float32)
    if torch.count_nonzero(image) > 0:  # ComfyUI does not shift an empty latent
        image = model.latent_in(image)
    noise = noise.to(device=device, dtype=torch.float32)
    x = ms.noise_scaling(sigmas[0], noise, image, ms.is_max_denoise(sigmas[0]))
    last: dict[str, torch.Tensor] = {}

    def on_step(i: int, x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> None:
        last["denoised"] = denoised
        if report is not None:
            report(i, x, denoised, sigma)

    inpainting = None
    if noise_mask is not None:
        mask = latent_mask(noise_mask.to(device), x.shape)
        kept_noise = noise
        if sampler.spec.random_inpaint_noise:  # ComfyUI's ddim re-noises with seed + 1
            generator = torch.manual_seed((seed if seed is not None else 41) + 1)
            kept_noise = torch.randn(noise.shape, generator=generator).to(device)
        inpainting = Inpainting(mask, image, kept_noise, ms)
    with RESIDENCY.use(guider.modules(), device), patched(model.unet, model.patches):
        denoiser, pair = guider.denoisers(x, inpainting, seed)
        if inpainting is not None:
            denoiser, pair = inpainting.wrap(denoiser), inpainting.wrap_pair(pair)
        run = SamplerRun(denoiser, ms, seed, on_step, pair)
        out = sampler.spec.fn(run, x, sigmas, **sampler.spec.options)
    out = ms.inverse_noise_scaling(sigmas[-1], out)
    estimate = last.get("denoised", out)
    return Sampled(model.latent_out(out.float()), model.latent_out(estimate.float()))
