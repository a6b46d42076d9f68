"""Matching two pictures' channel counts the way ComfyUI's image nodes do before combining them."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def with_alpha(images: torch.Tensor) -> torch.Tensor:
    """Images (..., C) with one more channel, set to 1 (an opaque alpha)."""
    return F.pad(images, (0, 1), value=1.0)


def alpha_fix(
    first: torch.Tensor, second: torch.Tensor, names: tuple[str, str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's image_alpha_fix: `second` loses the channels `first` lacks; when `first` has
    more, `first` gets an opaque alpha channel. Pairs ComfyUI then cannot combine (anything but
    equal counts or a single-channel `second`) are refused, naming both inputs."""
    if first.shape[-1] < second.shape[-1]:
        second = second[..., : first.shape[-1]]
    elif first.shape[-1] > second.shape[-1]:
        first = with_alpha(first)
    if second.shape[-1] not in (1, first.shape[-1]):
        raise ValueError(
            f"{names[0]} has {first.shape[-1] - 1} channels and {names[1]} {second.shape[-1]}: "
            f"ComfyUI cannot combine these (it adds a channel to {names[0]}); give both "
            "pictures the same channels."
        )
    return first, second
