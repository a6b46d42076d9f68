"""The device a run computes on, and the precision it computes in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def resolve_device(options: Mapping[str, Any] | None = None) -> torch.device:
    """The device of a run: options["device"], "auto" meaning CUDA, else MPS, else CPU."""
    wanted = str((options or {}).get("device") or "auto")
    if wanted != "auto":
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def compute_dtype(device: torch.device, weights: torch.dtype = torch.float32) -> torch.dtype:
    """Half precision on CUDA (bf16 where the weights are bf16), full precision elsewhere."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if weights == torch.bfloat16 else torch.float16
