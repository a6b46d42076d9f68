"""CONTROL_NET and the control a ControlNetApply node attaches to a conditioning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nodegraph.types import socket


@dataclass(eq=False)
class ControlNet:
    """CONTROL_NET: a diffusers ControlNetModel and where it lives."""

    net: Any
    device: torch.device
    dtype: torch.dtype
    name: str

    @property
    def context_width(self) -> int:
        return int(self.net.config.cross_attention_dim)

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


CONTROL_NET = socket("CONTROL_NET", ControlNet)
