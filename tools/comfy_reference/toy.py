"""A toy guided denoiser run through ComfyUI's k-diffusion sampler functions and through ours.

A developer's check, run by hand in an environment where ComfyUI is importable (see README.md in
this folder); never imported by the project or its tests. The toy model is deterministic and
cheap (a fixed random 1x1 convolution of the scaled input, modulated by the timestep), so any
difference is the samplers'. Usage from Python:

    from tools.comfy_reference.toy import compare
    print(compare("euler_ancestral", steps=12, scheduler="karras", cfg=5.0, seed=3))
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from nodes.sampling.comfy.model_sampling import ModelSampling
from nodes.sampling.comfy.sampler_api import SamplerRun

SD_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
SHAPE = (2, 4, 8, 8)


def comfy_modules() -> Any:
    """Import ComfyUI's sampling modules (ComfyUI's folder must be on sys.path)."""
    if "--cpu" not in sys.argv:
        sys.argv.append("--cpu")
    stubs = os.environ.get("COMFY_STUBS")  # e.g. a torchvision stand-in, after our imports
    if stubs and stubs not in sys.path:
        sys.path.append(stubs)
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.k_diffusion.sampling as kd
    import comfy.model_sampling as ms
    import comfy.samplers as samplers

    return kd, ms, samplers


def toy_eps(seed: int = 0):
    """(x_in, t, prompt) -> eps: fixed 1x1 convolutions, one per prompt (0 positive, 1 negative)."""
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(4, 4, generator=g) * 0.5 for _ in range(2)]
    biases = [torch.randn(4, generator=g) * 0.3 for _ in range(2)]

    def eps(x_in: torch.Tensor, t: torch.Tensor, prompt: int) -> torch.Tensor:
        mixed = torch.einsum("oc,bchw->bohw", weights[prompt], x_in)
        phase = (t.float() / 1000.0).view(-1, 1, 1, 1)
        return torch.tanh(mixed + biases[prompt].view(1, -1, 1, 1) * (1 + phase)) + 0.1 * x_in

    return eps


def comfy_sampling(prediction: str = "eps") -> Any:
    """ComfyUI's ModelSamplingDiscrete for SD's betas with the given prediction type."""
    _, ms, _ = comfy_modules()
    kind = {"eps": ms.EPS, "v_prediction": ms.V_PREDICTION}[prediction]

    class Sampling(ms.ModelSamplingDiscrete, kind):
        pass

    return Sampling(None)


class ComfyToyModel:
    """Looks to ComfyUI's sampler functions like its CFG-guided model wrapper."""

    def __init__(self, sampling: Any, cfg: float, seed: int = 0) -> None:
        self.sampling, self.cfg, self.eps = sampling, cfg, toy_eps(seed)
        self.evaluations = 0
        patcher = type("Patcher", (), {"get_model_object": lambda _s, _n: sampling})()
        inner = type("Inner", (), {"model_sampling": sampling})()
        self.inner_model = type("Wrap", (), {"inner_model": inner, "model_patcher": patcher})()

    def _x0(self, x: torch.Tensor, sigma: torch.Tensor, prompt: int) -> torch.Tensor:
        x_in = self.sampling.calculate_input(sigma, x)
        out = self.eps(x_in, self.sampling.timestep(sigma), prompt)
        return self.sampling.calculate_denoised(sigma, out, x)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        self.evaluations += 1
        options = extra.get("model_options", {})
        cond = self._x0(x, sigma, 0)
        skip = self.cfg == 1.0 and not options.get("disable_cfg1_optimization", False)
        uncond = cond if skip else self._x0(x, sigma, 1)
        out = uncond + (cond - uncond) * self.cfg
        for fn in options.get("sampler_post_cfg_function", []):
            out = fn(
                {
                    "denoised": out,
                    "uncond_denoised": uncond,
                    "cond_denoised": cond,
                    "sigma": sigma,
                    "input": x,
                    "model_options": options,
                    "cond_scale": self.cfg,
                }
            )
        return out


def our_run(prediction: str, cfg: float, seed: int | None, toy_seed: int = 0) -> SamplerRun:
    """Our SamplerRun around the same toy model."""
    sampling = ModelSampling.discrete(SD_CONFIG, prediction)  # type: ignore[arg-type]
    eps = toy_eps(toy_seed)

    def x0(x: torch.Tensor, sigma: torch.Tensor, prompt: int) -> torch.Tensor:
        out = eps(sampling.calculate_input(sigma, x), sampling.timestep(sigma), prompt)
        return sampling.calculate_denoised(sigma, out, x)

    def pair(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond, uncond = x0(x, sigma, 0), x0(x, sigma, 1)
        return uncond + (cond - uncond) * cfg, uncond

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if cfg == 1.0:
            return x0(x, sigma, 0)
        return pair(x, sigma)[0]

    return SamplerRun(guided, sampling, seed, pair_denoiser=pair)


def compare(
    name: str,
    steps: int = 10,
    scheduler: str = "normal",
    cfg: float = 4.0,
    seed: int = 0,
    prediction: str = "eps",
    denoise_from: float | None = None,
) -> dict[str, Any]:
    """Run sampler `name` both ways from the same start; the largest difference and counts.

    `denoise_from`: start from a partly noised latent at that sigma index instead of pure noise.
    """
    from nodes.sampling.comfy.samplers import SAMPLERS

    kd, _, samplers = comfy_modules()
    sampling = comfy_sampling(prediction)
    spec = SAMPLERS[name]
    n = steps + 1 if spec.discard_penultimate_sigma else steps
    sigmas = samplers.calculate_sigmas(sampling, scheduler, n).float()
    if spec.discard_penultimate_sigma:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    if denoise_from is not None:
        sigmas = sigmas[int(denoise_from) :]
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(SHAPE, generator=g) * float(sigmas[0])

    comfy_model = ComfyToyModel(sampling, cfg)
    sampler = samplers.sampler_object(name)
    theirs = sampler.sampler_function(
        comfy_model,
        start.clone(),
        sigmas.clone(),
        extra_args={"seed": seed, "model_options": {}},
        callback=None,
        disable=True,
        **sampler.extra_options,
    )
    run = our_run(prediction, cfg, seed)
    ours = spec.fn(run, start.clone(), sigmas.clone(), **spec.options)
    return {
        "name": name,
        "max_abs_diff": float((ours - theirs).abs().max()),
        "scale": float(theirs.abs().max()),
        "comfy_evaluations": comfy_model.evaluations,
        "our_evaluations": run.evaluations,
    }


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        if arg != "--cpu":
            print(compare(arg))
