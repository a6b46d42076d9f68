"""GUIDER: how the model's predictions for several prompts become the one estimate a sampler
follows (ComfyUI's CFGGuider, BasicGuider and DualCFGGuider), and the model call beneath.

The UNet sees `calculate_input(x)` in its own dtype at ComfyUI's timestep for sigma; its output
(made float32) becomes a clean-latent estimate by the model sampling's prediction type. Prompts
evaluated together are batched in ComfyUI's order (negative first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from ...control.residuals import prompt_controls, residuals
from ...values import Conditioning, Model
from ..unet_inputs import UnetInputs
from .inpaint import Inpainting
from .model_sampling import ModelSampling
from .sampler_api import Denoiser, PairDenoiser

Rule = Literal["basic", "cfg", "dual_regular", "dual_nested"]
ROLE = {"negative": "negative", "middle": "negative", "positive": "positive"}
"""The prompt type each guider slot has (DualCFGGuider's middle prompt counts as negative)."""


class ModelCall:
    """The UNet's clean-latent estimates for some prompts at once, in sigma space."""

    def __init__(
        self,
        model: Model,
        sampling: ModelSampling,
        x: torch.Tensor,
        inpainting: Inpainting | None = None,
    ) -> None:
        self.model, self.sampling, self.inpainting = model, sampling, inpainting
        self.like = x.to(model.dtype)
        self._inputs: dict[tuple[str, ...], UnetInputs] = {}
        self.conds: dict[str, Conditioning] = {}

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, roles: tuple[str, ...]
    ) -> list[torch.Tensor]:
        inputs = self._inputs.get(roles)
        if inputs is None:
            pairs = [(ROLE[r], self.conds[r]) for r in roles]
            inputs = UnetInputs.batched(self.model, self.like, pairs, self._masked())
            self._inputs[roles] = inputs
        ms, k = self.sampling, len(roles)
        x_in = torch.cat([ms.calculate_input(sigma, x).to(self.model.dtype)] * k)
        t = torch.cat([ms.timestep(sigma).float()] * k)
        controls = prompt_controls(
            [(ROLE[r], self.conds[r]) for r in roles], self.conds.get("positive")
        )
        added = None
        if any(controls):  # ComfyUI's get_control: each prompt's ControlNets on the same input
            added = residuals(self.model, ms, sigma, x_in, t, inputs, controls)
        out = inputs.run(self.model, x_in, t, added).float()
        return [ms.calculate_denoised(sigma, o, x) for o in out.chunk(k)]

    def _masked(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mask, latent) an inpainting UNet sees where the latent has a noise mask."""
        if self.inpainting is None:
            return None
        return self.inpainting.mask, self.inpainting.latent


@dataclass(eq=False)
class Guider:
    """GUIDER: a model, its prompts by slot (positive, negative, middle) and the rule."""

    model: Model
    conds: dict[str, Conditioning]
    rule: Rule = "cfg"
    cfg: float = 1.0
    cfg2: float = 1.0
    """DualCFGGuider: cfg is cfg_conds (positive vs middle), cfg2 cfg_cond2_negative."""
    sampling: ModelSampling | None = field(default=None)

    def model_sampling(self) -> ModelSampling:
        return self.sampling or ModelSampling.for_model(self.model)

    def denoisers(
        self, x: torch.Tensor, inpainting: Inpainting | None = None
    ) -> tuple[Denoiser, PairDenoiser | None]:
        """The guided estimate for a sampling run on latents like `x`, and (for cfg_pp
        samplers) the one that also returns the negative prompt's own estimate."""
        call = ModelCall(self.model, self.model_sampling(), x, inpainting)
        call.conds = self.conds
        if self.rule == "basic":
            return (lambda x, s: call(x, s, ("positive",))[0]), None
        if self.rule == "cfg":
            return self._cfg(call), self._cfg_pair(call)
        return self._dual(call), None

    def _cfg(self, call: ModelCall) -> Denoiser:
        cfg = self.cfg

        def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            if math.isclose(cfg, 1.0):  # ComfyUI skips the negative prompt at cfg 1
                return call(x, sigma, ("positive",))[0]
            uncond, cond = call(x, sigma, ("negative", "positive"))
            return uncond + (cond - uncond) * cfg

        return guided

    def _cfg_pair(self, call: ModelCall) -> PairDenoiser:
        cfg = self.cfg

        def guided(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            uncond, cond = call(x, sigma, ("negative", "positive"))
            return uncond + (cond - uncond) * cfg, uncond

        return guided

    def _dual(self, call: ModelCall) -> Denoiser:
        cfg1, cfg2, nested = self.cfg, self.cfg2, self.rule == "dual_nested"

        def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            if nested:
                negative, middle, positive = call(x, sigma, ("negative", "middle", "positive"))
                text = middle + (positive - middle) * cfg1
                return negative + cfg2 * (text - negative)
            # near 1, ComfyUI leaves the negative (and then the middle) prompt out: zeros
            if math.isclose(cfg2, 1.0) and math.isclose(cfg1, 1.0):
                (positive,) = call(x, sigma, ("positive",))
                return positive * cfg1
            if math.isclose(cfg2, 1.0):
                middle, positive = call(x, sigma, ("middle", "positive"))
                return middle * cfg2 + (positive - middle) * cfg1
            negative, middle, positive = call(x, sigma, ("negative", "middle", "positive"))
            return negative + (middle - negative) * cfg2 + (positive - middle) * cfg1

        return guided
