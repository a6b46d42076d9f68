"""ComfyUI's model sampling: the sigma table a model was trained on and how its output becomes a
clean-latent estimate (comfy/model_sampling.py's behaviour, written anew).

A `ModelSampling` pairs a time axis (the discrete training table, its LCM-distilled subset, or
EDM's continuous log-sigma line) with a prediction type (eps, v, EDM, x0, LCM). Samplers work in
k-diffusion's sigma space; the UNet sees `calculate_input(x)` at `timestep(sigma)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

Prediction = Literal["eps", "v_prediction", "edm", "x0", "lcm", "img_to_img"]
TimeAxis = Literal["discrete", "distilled", "continuous_edm"]

LCM_ORIGINAL_STEPS = 50
"""An LCM model was distilled to 50 of the 1000 training timesteps."""
ZSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08
"""The terminal alpha_bar ComfyUI sets for zero-terminal-SNR tables (so its sigma is finite)."""

BETA_SCHEDULES = {
    # diffusers' name -> how the betas are spaced (ComfyUI's "linear" is diffusers' scaled_linear)
    "scaled_linear": lambda start, end, n: (
        torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    ),
    "linear": lambda start, end, n: torch.linspace(start, end, n, dtype=torch.float64),
}


def betas_for(config: dict[str, Any]) -> torch.Tensor:
    """The training betas of a diffusers scheduler config, in float64."""
    name = config.get("beta_schedule", "scaled_linear")
    if name not in BETA_SCHEDULES:
        raise ValueError(f"beta schedule '{name}' is not one ComfyUI's discrete sampling has")
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    return BETA_SCHEDULES[name](start, end, int(config.get("num_train_timesteps", 1000)))


def sigmas_from_betas(betas: torch.Tensor, zsnr: bool = False) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), index 0 the least noise (float64)."""
    alpha_bar = torch.cumprod(1.0 - betas, dim=0)
    sigmas = ((1 - alpha_bar) / alpha_bar) ** 0.5
    return rescale_zero_terminal_snr(sigmas) if zsnr else sigmas


def rescale_zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last timestep has (almost) zero signal."""
    root = (1 / (sigmas * sigmas + 1)).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alpha_bar[-1] = ZSNR_LAST_ALPHA_BAR
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


def _column(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-sample sigma shaped to broadcast over a latent (a single value stays a scalar)."""
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


@dataclass(eq=False)
class ModelSampling:
    """A model's sigma table and prediction type."""

    sigmas: torch.Tensor
    """float32, ascending: sigmas[0] is sigma_min, sigmas[-1] sigma_max."""
    prediction: Prediction = "eps"
    axis: TimeAxis = "discrete"
    sigma_data: float = 1.0
    skip_steps: int = 1
    """For the distilled (LCM) axis: training timesteps per table entry."""

    def __post_init__(self) -> None:
        self.log_sigmas = self.sigmas.log().float()  # from the float64 table, as ComfyUI
        self.sigmas = self.sigmas.float()

    # -- construction --------------------------------------------------------------------

    @classmethod
    def discrete(
        cls, config: dict[str, Any], prediction: Prediction = "eps", zsnr: bool | None = None
    ) -> ModelSampling:
        """ComfyUI's ModelSamplingDiscrete for a diffusers scheduler config."""
        if zsnr is None:
            zsnr = bool(config.get("rescale_betas_zero_snr", False))
        sigmas = sigmas_from_betas(betas_for(config), zsnr)
        if prediction != "lcm":
            return cls(sigmas, prediction)
        skip = len(sigmas) // LCM_ORIGINAL_STEPS
        kept = sigmas.float()[len(sigmas) - 1 - skip * torch.arange(LCM_ORIGINAL_STEPS)].flip(0)
        return cls(kept, "lcm", "distilled", skip_steps=skip)

    @classmethod
    def continuous_edm(
        cls, prediction: Prediction, sigma_min: float, sigma_max: float, sigma_data: float = 1.0
    ) -> ModelSampling:
        """ComfyUI's ModelSamplingContinuousEDM: 1000 log-spaced sigmas, t = log(sigma) / 4."""
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        line = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        return cls(line, prediction, "continuous_edm", sigma_data)

    @classmethod
    def for_model(cls, model: Any) -> ModelSampling:
        """The model's own sampling (a ModelSampling node's override, else its scheduler's)."""
        override = getattr(model, "sampling", None)
        if override is not None:
            return override
        config = model.scheduler_config
        kind = config.get("prediction_type", "epsilon")
        prediction = {"epsilon": "eps", "v_prediction": "v_prediction", "sample": "x0"}.get(kind)
        if prediction is None:
            raise ValueError(f"model {model.name}: prediction type '{kind}' is not supported")
        return cls.discrete(config, prediction)

    # -- the time axis -------------------------------------------------------------------

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The timestep the UNet gets for `sigma` (discrete: the nearest table index)."""
        if self.axis == "continuous_edm":
            return 0.25 * sigma.log()
        distance = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        index = distance.abs().argmin(dim=0).view(sigma.shape)
        if self.axis == "distilled":
            index = index * self.skip_steps + (self.skip_steps - 1)
        return index.to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """The sigma of a (fractional) timestep: log-sigma interpolated in the table."""
        if self.axis == "continuous_edm":
            return (timestep / 0.25).exp()
        t = timestep.float().to(self.log_sigmas.device)
        if self.axis == "distilled":
            t = (t - (self.skip_steps - 1)) / self.skip_steps
        t = t.clamp(0, len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        """The sigma at a fraction of the schedule (0: above any sigma, 1: zero)."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        percent = 1.0 - percent
        if self.axis == "continuous_edm":
            low = math.log(self.sigma_min)
            return math.exp((math.log(self.sigma_max) - low) * percent + low)
        return self.sigma(torch.tensor(percent * 999.0)).item()

    # -- the prediction type -------------------------------------------------------------

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """What the UNet sees for the sampler's x at sigma."""
        if self.prediction == "img_to_img":
            return x
        s = _column(sigma, x.ndim)
        return x / (s**2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(
        self, sigma: torch.Tensor, output: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """The clean-latent estimate from the UNet's output at sigma."""
        s, d = _column(sigma, output.ndim), self.sigma_data
        if self.prediction in ("x0", "img_to_img"):
            return output
        if self.prediction == "v_prediction":
            return x * d**2 / (s**2 + d**2) - output * s * d / (s**2 + d**2) ** 0.5
        if self.prediction == "edm":
            return x * d**2 / (s**2 + d**2) + output * s * d / (s**2 + d**2) ** 0.5
        x0 = x - output * s
        if self.prediction == "eps":
            return x0
        scaled_t = _column(self.timestep(sigma), output.ndim) * 10.0  # LCM's boundary condition
        c_skip = 0.25 / (scaled_t**2 + 0.25)
        c_out = scaled_t / (scaled_t**2 + 0.25) ** 0.5
        return c_out * x0 + c_skip * x

    def noise_scaling(
        self,
        sigma: torch.Tensor,
        noise: torch.Tensor,
        latent: torch.Tensor,
        max_denoise: bool = False,
    ) -> torch.Tensor:
        """The sampler's start: the latent plus noise at sigma (sqrt(1 + sigma^2) from the top)."""
        s = _column(torch.as_tensor(sigma), noise.ndim)
        scale = torch.sqrt(1.0 + s**2.0) if max_denoise else s
        return noise * scale + latent

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def is_max_denoise(self, sigma: torch.Tensor) -> bool:
        """Whether a walk from `sigma` starts from pure noise (ComfyUI's max_denoise)."""
        top, first = float(self.sigma_max), float(sigma)
        return math.isclose(top, first, rel_tol=1e-05) or first > top
