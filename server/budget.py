"""Compute limits on a validated workflow: image sizes and width x height x batch x steps.

The engine knows no diffusion, so the budget reads ComfyUI's input naming conventions: a node
with `width` and `height` makes images of that size (times `batch_size`), a node with `steps`
runs that many model evaluations over them. A linked value is followed to a primitive node's
literal `value`. The total is the largest image batch times the sum of all steps: an upper bound.
"""

from __future__ import annotations

from typing import Any

from nodegraph.errors import NodeError
from nodegraph.plan import Plan

from .config import Limits


def _value(plan: Plan, node_id: str, name: str) -> Any:
    """A literal input's value, or a primitive's value one link away; None when unknown."""
    step = plan.steps[node_id]
    if name in step.literals and name not in step.linked_literals:
        return step.literals[name]
    link = step.links.get(name)
    if link is None or link.source not in plan.steps:
        return step.literals.get(name)
    source = plan.steps[link.source]
    if "value" in source.literals and not source.links:
        return source.literals["value"]
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check(plan: Plan, limits: Limits) -> list[NodeError]:
    """Errors for every node past a limit (empty when the workflow fits)."""
    errors: list[NodeError] = []
    largest, largest_node, total_steps = 0, None, 0
    for node_id in plan.order:
        step = plan.steps[node_id]
        class_type = step.cls.spec.type_name
        width, height = _int(_value(plan, node_id, "width")), _int(_value(plan, node_id, "height"))
        if width is not None and height is not None:
            pixels = width * height
            if pixels > limits.max_image_pixels:
                errors.append(
                    NodeError(
                        "value_bigger_than_max",
                        f"{width} x {height} is {pixels} pixels; the server's limit is "
                        f"{limits.max_image_pixels} (--max-image-pixels).",
                        node_id,
                        class_type,
                        "width",
                        width,
                    )
                )
            batch = _int(_value(plan, node_id, "batch_size"))
            pixels *= max(batch or 1, 1)
            if pixels > largest:
                largest, largest_node = pixels, node_id
        steps = _int(_value(plan, node_id, "steps"))
        if steps is not None and steps > 0:
            total_steps += steps
    compute = largest * max(total_steps, 1)
    if compute > limits.max_compute and largest_node is not None:
        errors.append(
            NodeError(
                "value_bigger_than_max",
                f"width x height x batch x steps is {compute}; the server's compute budget is "
                f"{limits.max_compute} (--max-compute).",
                largest_node,
                plan.steps[largest_node].cls.spec.type_name,
                "width",
            )
        )
    return errors
