"""GUIDER: how the model's predictions for several prompts become the one estimate a sampler
follows (ComfyUI's CFGGuider, BasicGuider and DualCFGGuider), and the model call beneath.

The UNet sees `calculate_input(x)` in its own dtype at ComfyUI's timestep for sigma; its output
(made float32) becomes a clean-latent estimate by the model sampling's prediction type. Prompts
evaluated together are batched in ComfyUI's order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from ...conditioning.gligen import GLIGEN_KEY
from ...control.residuals import residuals
from ...values import Conditioning, Model
from ..unet_inputs import UnetInputs
from .conds import Area, Entry, prepare, weight
from .inpaint import Inpainting
from .model_sampling import ModelSampling
from .sampler_api import Denoiser, PairDenoiser

Rule = Literal["basic", "cfg", "dual_regular", "dual_nested"]
ROLE = {"negative": "negative", "middle": "negative", "positive": "positive"}
"""The prompt type each guider slot has (DualCFGGuider's middle prompt counts as negative)."""


@dataclass
class _Piece:
    """One Cond's share of a model call: its slot, part of the latent, weight and area."""

    slot: int
    entry: Entry
    x: torch.Tensor
    mult: torch.Tensor
    area: Area | None


def _joinable(a: _Piece, b: _Piece) -> bool:
    """Whether two pieces can share a UNet batch (ComfyUI's can_concat_cond)."""
    if a.x.shape != b.x.shape or len(a.entry.controls) != len(b.entry.controls):
        return False
    if any(c is not d for c, d in zip(a.entry.controls, b.entry.controls, strict=True)):
        return False
    if GLIGEN_KEY in a.entry.cond.extras or GLIGEN_KEY in b.entry.cond.extras:
        return a is b  # ComfyUI's GLIGEN patch is made anew for each piece: never shared
    ta, tb = a.entry.cond.embeds.shape[1], b.entry.cond.embeds.shape[1]
    return math.lcm(ta, tb) // min(ta, tb) <= 4


class ModelCall:
    """The UNet's clean-latent estimates for some prompt slots at once, in sigma space
    (ComfyUI's calc_cond_batch): each slot's Conds evaluated where and when they apply, in
    batches of like pieces, and blended by their weights."""

    def __init__(
        self,
        model: Model,
        sampling: ModelSampling,
        x: torch.Tensor,
        conds: dict[str, Conditioning],
        inpainting: Inpainting | None = None,
        seed: int | None = None,
    ) -> None:
        self.model, self.sampling, self.seed = model, sampling, seed
        self.like = x.to(model.dtype)
        self.entries = prepare(conds, x, sampling)
        self._masked = None if inpainting is None else (inpainting.mask, inpainting.latent)
        self._inputs: dict[tuple[int, str], UnetInputs] = {}

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, slots: tuple[str, ...]
    ) -> list[torch.Tensor]:
        """The estimates for `slots`, listed in ComfyUI's order for the guider."""
        s = float(sigma.flatten()[0])
        pieces = [
            _Piece(i, e, *weight(e, x))
            for i, slot in enumerate(slots)
            for e in self.entries[slot]
            if e.active(s)
        ]
        out = [torch.zeros_like(x) for _ in slots]
        counts = [torch.full_like(x, 1e-37) for _ in slots]
        while pieces:  # like pieces together, in ComfyUI's (reversed) order
            batch = [p for p in pieces if _joinable(p, pieces[0])][::-1]
            pieces = [p for p in pieces if all(p is not q for q in batch)]
            for piece, denoised in zip(batch, self._run(batch, sigma, slots), strict=True):
                h, w = piece.x.shape[-2:]
                y0, x0 = (0, 0) if piece.area is None else piece.area[2:]
                region = (slice(None), slice(None), slice(y0, y0 + h), slice(x0, x0 + w))
                out[piece.slot][region] += denoised * piece.mult
                counts[piece.slot][region] += piece.mult
        return [o / c for o, c in zip(out, counts, strict=True)]

    def _inputs_for(self, piece: _Piece, slot: str) -> UnetInputs:
        key = (id(piece.entry.cond), slot)
        if key not in self._inputs:
            cond = [(ROLE[slot], piece.entry.cond)]
            self._inputs[key] = UnetInputs.batched(
                self.model, self.like, cond, self._masked, self.seed
            )
        return self._inputs[key].crop(piece.area)

    def _run(
        self, batch: list[_Piece], sigma: torch.Tensor, slots: tuple[str, ...]
    ) -> list[torch.Tensor]:
        ms, model = self.sampling, self.model
        inputs = UnetInputs.joined([self._inputs_for(p, slots[p.slot]) for p in batch])
        x_in = torch.cat([ms.calculate_input(sigma, p.x).to(model.dtype) for p in batch])
        t = torch.cat([ms.timestep(sigma).float()] * len(batch))
        controls = batch[0].entry.controls
        added = None
        if controls:  # ComfyUI's get_control: the batch's ControlNets on the same input
            added = residuals(model, ms, sigma, x_in, t, inputs, controls)
        out = inputs.run(model, x_in, t, added).float()
        return [
            ms.calculate_denoised(sigma, o, p.x)
            for o, p in zip(out.chunk(len(batch)), batch, strict=True)
        ]


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

    def modules(self) -> list[torch.nn.Module]:
        """The networks a run computes with (ComfyUI's models to load): the UNet, then every
        ControlNet / T2I-Adapter of the prompts, once each."""
        nets = {id(self.model.unet): self.model.unet}
        for conditioning in self.conds.values():
            for cond in conditioning.conds:
                for control in cond.extras.get("control", ()):
                    nets.setdefault(id(control.control_net.net), control.control_net.net)
        return list(nets.values())

    def denoisers(
        self, x: torch.Tensor, inpainting: Inpainting | None = None, seed: int | None = None
    ) -> tuple[Denoiser, PairDenoiser | None]:
        """The guided estimate for a sampling run on latents like `x` (`seed`: the run's, for
        what the prompts draw), and (for cfg_pp samplers) the one that also returns the
        negative prompt's own estimate."""
        call = ModelCall(self.model, self.model_sampling(), x, self.conds, inpainting, seed)
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
            cond, uncond = call(x, sigma, ("positive", "negative"))
            return uncond + (cond - uncond) * cfg

        return guided

    def _cfg_pair(self, call: ModelCall) -> PairDenoiser:
        cfg = self.cfg

        def guided(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            cond, uncond = call(x, sigma, ("positive", "negative"))
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
