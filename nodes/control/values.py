"""CONTROL_NET and the control a ControlNetApply node attaches to a conditioning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from nodegraph.types import socket


@dataclass(eq=False)
class ControlNet:
    """CONTROL_NET: a diffusers ControlNetModel, or a T2IAdapter (ControlNetLoader loads both,
    as ComfyUI's), and where it lives."""

    net: Any
    device: torch.device
    dtype: torch.dtype
    name: str

    @property
    def is_adapter(self) -> bool:
        return type(self.net).__name__ == "T2IAdapter"

    @property
    def context_width(self) -> int | None:
        """The text width a ControlNet takes (None: an adapter reads no text)."""
        return None if self.is_adapter else int(self.net.config.cross_attention_dim)

    def cache_nbytes(self) -> int:
        return 0  # the weights belong to the model store


@dataclass(eq=False)
class AppliedControl:
    """One ControlNet applied to a prompt: its hint (B, 3, H, W), strength and the part of the
    schedule (as fractions, ComfyUI's start_percent / end_percent) where it acts."""

    control_net: ControlNet
    hint: torch.Tensor
    strength: float
    start: float = 0.0
    end: float = 1.0
    node: str = "ControlNetApplyAdvanced"
    features: dict[tuple[int, ...], list[torch.Tensor]] = field(default_factory=dict, repr=False)
    """An adapter's features by the input's shape: its hint is fixed, so they are made once."""


CONTROL_NET = socket("CONTROL_NET", ControlNet)
