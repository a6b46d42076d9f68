"""Pixel inputs shared by the image and mask nodes (ComfyUI's ranges for offsets and sizes)."""

from __future__ import annotations

from typing import Any

from nodegraph import InputField

from .resize import MAX_RESOLUTION


def offset(description: str, step: int = 1) -> Any:
    """A pixel offset or amount input: 0 to MAX_RESOLUTION, default 0."""
    return InputField(0, ge=0, le=MAX_RESOLUTION, step=step, description=description)


def extent(description: str) -> Any:
    """A width or height input: 1 to MAX_RESOLUTION, default 512."""
    return InputField(512, ge=1, le=MAX_RESOLUTION, step=1, description=description)
