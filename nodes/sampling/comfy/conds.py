"""ComfyUI's preparation of the conditionings before a sampling run (process_conds) and each
Cond's weight at a step (get_area_and_mult): areas in latent units, masks at the latent's size,
schedule windows as sigmas, an opposite Cond for every area, ControlNets and GLIGEN boxes
shared with the negative prompt."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from ...conditioning.gligen import GLIGEN_KEY
from ...latents.scaling import common_upscale
from ...values import Cond, Conditioning
from .model_sampling import ModelSampling

Area = tuple[int, int, int, int]
"""(height, width, y, x) in latent pixels, as ComfyUI's conditioning "area"."""
FEATHER = 8
"""Latent pixels over which an area's weight ramps up from an inner edge (ComfyUI's fuzz)."""


@dataclass(frozen=True, eq=False)
class Entry:
    """One Cond ready for sampling: `cond` gives the UNet its inputs (ComfyUI's model_conds);
    the rest say where, when and how much it counts, and which ControlNets guide it."""

    cond: Cond
    area: Area | None
    strength: float
    mask: torch.Tensor | None
    """(batch, height, width) at the latent's size, times mask_strength."""
    sigma_start: float | None
    sigma_end: float | None
    controls: tuple

    def active(self, sigma: float) -> bool:
        """Whether sigma lies in the Cond's part of the schedule."""
        if self.sigma_start is not None and sigma > self.sigma_start:
            return False
        return not (self.sigma_end is not None and sigma < self.sigma_end)


def _area(cond: Cond, dims: tuple[int, int], mask: torch.Tensor | None) -> Area | None:
    area = cond.extras.get("area")
    if area is not None and area[0] == "percentage":
        h, w, y, x = area[1:]
        area = (max(1, round(h * dims[0])), max(1, round(w * dims[1])))
        area += (round(y * dims[0]), round(x * dims[1]))
    if mask is not None and cond.extras.get("set_area_to_bounds", False):
        bounds = mask.abs().amax(dim=0)
        ys, xs = torch.where(bounds != 0)
        if ys.numel() == 0:
            return (8, 8, 0, 0)  # all zero: the smallest area (ComfyUI's choice)
        y, x = int(ys.min()), int(xs.min())
        return (max(8, int(ys.max()) - y + 1), max(8, int(xs.max()) - x + 1), y, x)
    return None if area is None else tuple(int(v) for v in area)  # type: ignore[return-value]


def _mask(cond: Cond, dims: tuple[int, int], like: torch.Tensor) -> torch.Tensor | None:
    mask = cond.extras.get("mask")
    if mask is None:
        return None
    mask = mask.to(device=like.device, dtype=torch.float32)
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape[1:]) != dims:
        mask = common_upscale(mask.unsqueeze(1), dims[1], dims[0], "bilinear", "disabled")
        mask = mask.squeeze(1)
    return mask


def entry(cond: Cond, like: torch.Tensor, sampling: ModelSampling) -> Entry:
    """A Cond resolved for latents like `like` (ComfyUI's resolve_areas_and_cond_masks and
    calculate_start_end_timesteps)."""
    dims = (like.shape[-2], like.shape[-1])
    mask = _mask(cond, dims, like)
    start, end = cond.extras.get("start_percent"), cond.extras.get("end_percent")
    return Entry(
        cond=cond,
        area=_area(cond, dims, mask),
        strength=float(cond.extras.get("strength", 1.0)),
        mask=None if mask is None else mask * float(cond.extras.get("mask_strength", 1.0)),
        sigma_start=None if start is None else sampling.percent_to_sigma(start),
        sigma_end=None if end is None else sampling.percent_to_sigma(end),
        controls=tuple(cond.extras.get("control", ())),
    )


def _inside(area: Area, outer: Area) -> bool:
    return (
        area[2] >= outer[2]
        and area[3] >= outer[3]
        and area[0] + area[2] <= outer[0] + outer[2]
        and area[1] + area[3] <= outer[1] + outer[3]
    )


def _opposite(entries: list[Entry], c: Entry) -> None:
    """Give `entries` (another prompt's) a Cond over c's area when none has exactly that area:
    c's options with the text of the smallest of them that covers it (ComfyUI's
    create_cond_with_same_area_if_none)."""
    if c.area is None:
        return
    smallest: Entry | None = None
    for e in entries:
        if e.area is None:
            smallest = smallest or e
        elif _inside(c.area, e.area) and (
            smallest is None
            or smallest.area is None
            or math.prod(smallest.area[:2]) > math.prod(e.area[:2])
        ):
            smallest = e
    if smallest is None or smallest.area == c.area:
        return
    entries.append(replace(c, cond=smallest.cond))


def _share(
    given: list[Any],
    other: list[Entry],
    has: Callable[[Entry], bool],
    give: Callable[[Entry, Any], Entry],
) -> None:
    """The positive prompt's values (ControlNets, GLIGEN boxes) also go to the other prompt when
    none of its arealess Conds has one (ComfyUI's apply_empty_x_to_equal_area): its arealess
    Conds in turn, each given value replacing the one given before at that place."""
    if any(e.area is None and has(e) for e in other):
        return
    free = [i for i, e in enumerate(other) if e.area is None]
    if not free:
        return
    originals = {i: other[i] for i in free}
    for n, value in enumerate(given):
        i = free[n % len(free)]
        other[i] = give(originals[i], value)


def _share_controls(positive: list[Entry], other: list[Entry]) -> None:
    """ControlNetApply's controls (those applied to the negative prompt too)."""
    given = [
        e.controls
        for e in positive
        if e.area is None and e.controls and e.cond.extras.get("control_apply_to_uncond")
    ]
    _share(given, other, lambda e: bool(e.controls), lambda e, v: replace(e, controls=v))


def _gligen_boxes(e: Entry) -> Any:
    return e.cond.extras.get(GLIGEN_KEY)


def _share_gligen(positive: list[Entry], other: list[Entry]) -> None:
    """GLIGEN boxes: a negative prompt without its own samples with the positive one's."""
    given = [b for e in positive if e.area is None and (b := _gligen_boxes(e)) is not None]

    def give(e: Entry, boxes: Any) -> Entry:
        return replace(e, cond=e.cond.with_options(**{GLIGEN_KEY: boxes}))

    _share(given, other, lambda e: _gligen_boxes(e) is not None, give)


def prepare(
    prompts: dict[str, Conditioning], like: torch.Tensor, sampling: ModelSampling
) -> dict[str, list[Entry]]:
    """Every prompt slot's Conds ready for a run on latents like `like` (ComfyUI's
    process_conds, slots in the guider's order)."""
    slots = {k: [entry(c, like, sampling) for c in v.conds] for k, v in prompts.items()}
    for k, entries in slots.items():
        for c in entries:
            for kk, others in slots.items():
                if kk != k:
                    _opposite(others, c)
    if "positive" in slots:
        for k, others in slots.items():
            if k != "positive":
                _share_controls(slots["positive"], others)
                _share_gligen(slots["positive"], others)
    return slots


def weight(e: Entry, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Area | None]:
    """The part of x the Cond sees, its weight there and that part's area (ComfyUI's
    get_area_and_mult): the area, times the mask, times the strength; an area without a mask
    fades in over FEATHER latent pixels from each edge that is not the latent's."""
    part, area = x, e.area
    if area is not None:
        h = min(x.shape[2] - area[2], area[0])
        w = min(x.shape[3] - area[3], area[1])
        if h <= 0 or w <= 0:
            raise ValueError(
                f"a conditioning's area (ConditioningSetArea x {area[3] * 8}, y {area[2] * 8}) "
                f"lies outside the {x.shape[3] * 8}x{x.shape[2] * 8} picture"
            )
        area = (h, w, area[2], area[3])
        part = x[:, :, area[2] : area[2] + h, area[3] : area[3] + w]
    if e.mask is not None:
        mask = e.mask[: part.shape[0]]
        if area is not None:
            mask = mask[:, area[2] : area[2] + area[0], area[3] : area[3] + area[1]]
        mult = mask.unsqueeze(1).repeat(part.shape[0] // mask.shape[0], part.shape[1], 1, 1)
    else:
        mult = torch.ones_like(part)
    mult = mult * e.strength
    if e.mask is None and area is not None:
        for dim, (size, offset) in enumerate(((area[0], area[2]), (area[1], area[3]))):
            ramp = min(FEATHER, mult.shape[2 + dim] // 4)
            for t in range(ramp):
                if offset != 0:
                    mult.narrow(2 + dim, t, 1).mul_((1.0 / ramp) * (t + 1))
            if size + offset < x.shape[2 + dim]:
                for t in range(ramp):
                    mult.narrow(2 + dim, size - 1 - t, 1).mul_((1.0 / ramp) * (t + 1))
    return part, mult.to(x.dtype), area
