"""Combining two masks: ComfyUI's MaskComposite."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from nodegraph import InputField, Node, NodeContext

from ..images.fields import offset
from ..values import MASK
from .solid import as_batch

Operation = Literal["multiply", "add", "subtract", "and", "or", "xor"]


def on(a: torch.Tensor) -> torch.Tensor:
    """Where a mask counts as set for the logical operations: its value rounds to 1."""
    return a.round() != 0


OPERATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "multiply": torch.mul,
    "add": torch.add,
    "subtract": torch.sub,
    "and": lambda a, b: torch.logical_and(on(a), on(b)).float(),
    "or": lambda a, b: torch.logical_or(on(a), on(b)).float(),
    "xor": lambda a, b: torch.logical_xor(on(a), on(b)).float(),
}


class MaskComposite(Node):
    """Combine `source` into `destination` at (x, y) by an operation (clipped at the edges); the
    result is clamped to 0..1 and keeps the destination's size."""

    category = "mask"
    destination: MASK = InputField(description="The mask combined into.")
    source: MASK = InputField(description="The mask placed at (x, y).")
    x: int = offset("Left edge of the source.")
    y: int = offset("Top edge of the source.")
    operation: Operation = InputField("multiply", description="How the two combine.")

    def invoke(self, ctx: NodeContext) -> MASK:
        out = as_batch(self.destination).clone()
        source = as_batch(self.source).to(out.device)
        if len(source) not in (1, len(out)):
            raise ValueError(
                f"source is a batch of {len(source)} masks and destination of {len(out)}: the "
                "source must be one mask or as many as the destination."
            )
        for name, start, size, limit in (
            ("x", self.x, source.shape[-1], out.shape[-1]),
            ("y", self.y, source.shape[-2], out.shape[-2]),
        ):
            if start > limit and size - (start - limit) > 1:  # where ComfyUI's slicing fails
                side = "width" if name == "x" else "height"
                raise ValueError(
                    f"{name} = {start} starts the source past the destination's {side} {limit}: "
                    f"ComfyUI cannot place it there; use {name} <= {limit}."
                )
        bottom = min(self.y + source.shape[-2], out.shape[-2])
        right = min(self.x + source.shape[-1], out.shape[-1])
        if bottom > self.y and right > self.x:  # else the source lies wholly outside
            region = out[:, self.y : bottom, self.x : right]
            part = source[:, : bottom - self.y, : right - self.x]
            out[:, self.y : bottom, self.x : right] = OPERATIONS[self.operation](region, part)
        return torch.clamp(out, 0.0, 1.0)
